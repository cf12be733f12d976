"""Peer for the trainer benchmark: Ultralytics trains yolov8n.yaml from scratch on the same data."""
import json
import sys
import time

from ultralytics import YOLO

data, epochs, imgsz, batch, project = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
model = YOLO("yolov8n.yaml")
t0 = time.perf_counter()
model.train(data=data, epochs=epochs, imgsz=imgsz, batch=batch, device="cpu", workers=2, plots=False, amp=False,
            project=project, name="run", exist_ok=True, verbose=False, seed=0, deterministic=True)
elapsed = time.perf_counter() - t0
res = model.val(data=data, imgsz=imgsz, batch=batch, device="cpu", plots=False, verbose=False, project=project, name="val", exist_ok=True)
print(json.dumps({"seconds": elapsed, "map50": float(res.box.map50), "map50_95": float(res.box.map)}))
