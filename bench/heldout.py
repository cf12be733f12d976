"""A held-out validation set for the evaluation comparison in docs/benchmarks.md: every image of
a YOLO-layout dataset (all splits) stretched to WIDTH x HEIGHT (OpenCV INTER_AREA) into the `val`
split of a new dataset. Labels are normalised, so they stay as they are; non-square images make
letterboxing pad and resize, which the square synthetic images never do.

    python bench/heldout.py SRC_DIR DST_DIR WIDTH HEIGHT
"""
import shutil
import sys
from pathlib import Path

import cv2

src, dst, w, h = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for sub in ("images/val", "labels/val"):
    (dst / sub).mkdir(parents=True, exist_ok=True)
names = (src / "data.yaml").read_text().split("names:", 1)[1]
(dst / "data.yaml").write_text(f"train: images/val\nval: images/val\nnames:{names}")
for im in sorted(src.glob("images/*/*.jpg")):
    cv2.imwrite(str(dst / "images/val" / im.name), cv2.resize(cv2.imread(str(im)), (w, h), interpolation=cv2.INTER_AREA))
    shutil.copy(src / "labels" / im.parent.name / f"{im.stem}.txt", dst / "labels/val" / f"{im.stem}.txt")
print(f"wrote {len(list((dst / 'images/val').iterdir()))} images to {dst}")
