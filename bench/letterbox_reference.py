"""Reference letterboxes from Ultralytics itself, for vision/tests/letterbox_reference.rs.

Ultralytics resizes with OpenCV (`cv2.resize(..., INTER_LINEAR)`, no antialiasing) in two ways:
its predictor's `LetterBox` rounds the scaled sides; its datasets' `load_image` (training and
validation) resizes the long side to imgsz and rounds the short side up, then `LetterBox` only pads.
This script runs both, unchanged, on crops of the two photos Ultralytics ships (decoded by OpenCV
and stored losslessly, so that JPEG decoding plays no part), and writes:

  vision/tests/data/letterbox/<image>.png   the source crops
  vision/tests/data/letterbox/<case>.png    each case's expected letterboxed image
  vision/tests/data/letterbox/cases.json    the cases (source, crop, size, path, geometry) and the
                                            geometry of many more sizes (no pixels)

    python bench/letterbox_reference.py      # in the bench venv (eval "$(bench/setup-peer.sh)")
"""
import json
import math
import random
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import ultralytics
from ultralytics.data.augment import LetterBox
from ultralytics.data.base import BaseDataset
from ultralytics.utils import ASSETS

OUT = Path(__file__).resolve().parent.parent / "vision" / "tests" / "data" / "letterbox"

# Source crops (x, y, w, h) of the shipped photos: small, but large enough to downscale to 160.
SOURCES = {"bus": ("bus.jpg", (300, 400, 211, 281)), "zidane": ("zidane.jpg", (600, 180, 320, 180))}

# name: (source, crop of the source or None, size, path)
CASES = {
    "bus_160": ("bus", None, 160, "predict"),  # downscale x0.57, portrait: pad left and right
    "bus_160_dataset": ("bus", None, 160, "dataset"),  # same, short side rounded up (121, not 120)
    "zidane_160": ("zidane", None, 160, "predict"),  # exactly 2x: OpenCV's INTER_AREA fast path
    "bus_up_160": ("bus", (100, 50, 47, 61), 160, "predict"),  # upscale x2.6, odd sides
    "zidane_strip_160": ("zidane", (10, 70, 300, 37), 160, "predict"),  # 8:1 strip, odd margin
    "zidane_up_160_dataset": ("zidane", (40, 20, 97, 55), 160, "dataset"),  # upscale, rounded up
    "bus_96": ("bus", (0, 0, 211, 170), 96, "predict"),  # landscape downscale x0.45
}


def predict_letterbox(img, size):
    """Ultralytics' predictor pre-transform for a fixed-shape model: LetterBox(auto=False)."""
    lb = LetterBox((size, size), auto=False, stride=32)
    p = lb.get_params({"img": img})
    return lb(image=img), p


def dataset_letterbox(img, size):
    """`BaseDataset.load_image` (run on a file, as in training) then the `LetterBox` of
    `build_transforms` (validation; training's `v8_transforms` pads the same way)."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "im.png"
        cv2.imwrite(str(f), img)
        ds = SimpleNamespace(ims=[None], im_files=[str(f)], npy_files=[Path(d) / "im.npy"], imgsz=size,
                             augment=False, cache=None, cv2_flag=cv2.IMREAD_COLOR)
        im, _, _ = BaseDataset.load_image(ds, 0)
    lb = LetterBox((size, size), scaleup=False)
    p = lb.get_params({"img": im})
    return lb(image=im), {**p, "new_unpad": im.shape[1::-1]}


def geometry(p):
    return {"new_w": int(p["new_unpad"][0]), "new_h": int(p["new_unpad"][1]), "pad_left": int(p["left"]),
            "pad_top": int(p["top"])}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sources = {}
    for name, (file, (x, y, w, h)) in SOURCES.items():
        img = cv2.imread(str(ASSETS / file))[y:y + h, x:x + w]
        cv2.imwrite(str(OUT / f"{name}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        sources[name] = img
    cases = []
    for name, (src, crop, size, path) in CASES.items():
        img = sources[src]
        if crop:
            x, y, w, h = crop
            img = np.ascontiguousarray(img[y:y + h, x:x + w])
        out, p = (predict_letterbox if path == "predict" else dataset_letterbox)(img, size)
        assert out.shape == (size, size, 3), out.shape
        cv2.imwrite(str(OUT / f"{name}.png"), out, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        cases.append({"name": name, "source": src, "crop": crop, "size": size, "path": path, **geometry(p)})
    # Geometry only, for many sizes, as [w, h, size, predict, dataset] with each of the last two
    # [new_w, new_h, pad_left, pad_top]: Python's round-half-to-even and float64 ratios decide a pixel
    # here and there (e.g. 1012 * 0.125 = 126.5 rounds to 126, where Rust's round gives 127).
    rng = random.Random(0)
    shapes = [(1280, 1012, 160), (1012, 1280, 160), (1280, 1020, 160), (810, 1080, 640), (1280, 720, 640),
              (1, 1000, 64), (3, 7, 640), (640, 640, 640), (641, 480, 640)]
    shapes += [(rng.randint(1, 4000), rng.randint(1, 4000), rng.choice([32, 64, 96, 160, 320, 416, 640, 1280]))
               for _ in range(200)]
    geo = []
    for w, h, size in shapes:
        img = np.zeros((h, w, 3), np.uint8)
        predict = geometry(LetterBox((size, size), auto=False).get_params({"img": img}))
        r = size / max(h, w)  # load_image's sizes, without resizing pixels
        nw, nh = (w, h) if r == 1 else (min(math.ceil(w * r), size), min(math.ceil(h * r), size))
        p = LetterBox((size, size), scaleup=False).get_params({"img": np.zeros((nh, nw, 3), np.uint8)})
        dataset = geometry({**p, "new_unpad": (nw, nh)})
        geo.append([w, h, size, list(predict.values()), list(dataset.values())])
    meta = {"ultralytics": ultralytics.__version__, "opencv": cv2.__version__, "cases": cases, "geometry": geo}
    text = json.dumps({k: v for k, v in meta.items() if k not in ("cases", "geometry")})[:-1]
    text += ',\n"cases": [\n' + ",\n".join(json.dumps(c) for c in cases)
    text += '\n],\n"geometry": [\n' + ",\n".join(json.dumps(g) for g in geo) + "\n]}\n"
    (OUT / "cases.json").write_text(text)
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {len(cases)} cases and {len(geo)} geometries to {OUT} ({total // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
