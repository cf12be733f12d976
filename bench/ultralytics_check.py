"""Peer for the ingest benchmark: Ultralytics' own dataset check and label cache step
(check_det_dataset + YOLODataset label verification) over the same files."""
import json
import sys
import time

from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import check_det_dataset

t0 = time.perf_counter()
data = check_det_dataset(sys.argv[1])
images = 0
for split in ("train", "val"):
    # Building the dataset verifies every image and label file and writes the .cache.
    ds = YOLODataset(img_path=data[split], data=data, task="detect", augment=False, cache=False, imgsz=64)
    images += len(ds.labels)
print(json.dumps({"images": images, "seconds": time.perf_counter() - t0}))
