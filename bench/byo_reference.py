"""Bring-your-own-model reference: a small Ultralytics model and its exports, made by the pinned
Ultralytics, with Ultralytics' own answers on them, for the bring-your-own-model tests
(ocellus-tests' `ultralytics` module reads it). hack/setup.sh ultralytics runs it once per hash of
this script and the pins, in a venv it deletes afterwards:

    python bench/byo_reference.py --out <dir> [--epochs N] [--imgsz S]

writes into --out:
  data/              a synthetic shapes set in YOLO layout (seeded; circle, square, triangle on plain
                     backgrounds, images of three aspect ratios so that letterboxing is exercised)
  best.pt            the checkpoint of `YOLO("yolov8n.yaml").train(...)` on the dataset (CPU, seeded)
  best.onnx          its ONNX export (defaults: fixed batch 1, simplified), raw (1, 4 + nc, anchors)
  best-nms.onnx      its ONNX export with nms=True: the end-to-end layout (1, max_det, 6)
  best.torchscript   its TorchScript export
  predictions.json   {format: {image file: [{class, name, confidence, box: [x1, y1, x2, y2]}]}}: Ultralytics'
                     `predict` with each of pt, onnx, onnx-nms and torchscript on the val images (conf 0.25, IoU 0.7)
  forward.json       the raw eval-mode output of the unfused float32 model on one letterboxed val image
                     (`input`: [3, S, S] floats in 0..1; `output`: [4 + nc, anchors], row-major), to check an import
  val.json           Ultralytics' `val` of best.pt on the val split (mAP50, mAP50-95) and the versions used
"""
import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import ultralytics
from ultralytics import YOLO
from ultralytics.data.augment import LetterBox

CONF, IOU = 0.25, 0.7


def predictions(model_path, images, imgsz):
    model = YOLO(str(model_path), task="detect")
    out = {}
    for img in images:
        r = model.predict(str(img), imgsz=imgsz, conf=CONF, iou=IOU, device="cpu", verbose=False)[0]
        out[img.name] = [
            {"class": int(c), "name": r.names[int(c)], "confidence": float(s), "box": [float(v) for v in b]}
            for b, s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())
        ]
    return out


NAMES = ["circle", "square", "triangle"]
COLORS = [(230, 60, 60), (60, 200, 80), (70, 110, 240)]


def make_data(root, n=240, seed=0):
    """Shapes on plain backgrounds: 80% train, 20% val; boxes exact (YOLO labels)."""
    import cv2

    rng = np.random.default_rng(seed)
    for i in range(n):
        split = "val" if i % 5 == 4 else "train"
        w, h = [(160, 160), (224, 160), (160, 208)][i % 3]
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = rng.integers(0, 60, 3)
        boxes = []
        for _ in range(40):
            if len(boxes) == 1 + i % 3:
                break
            s = int(rng.integers(min(w, h) // 8, min(w, h) // 3))
            x0, y0, c = int(rng.integers(0, w - s)), int(rng.integers(0, h - s)), int(rng.integers(0, 3))
            if any(x0 < b[3] + 2 and b[1] < x0 + s + 2 and y0 < b[4] + 2 and b[2] < y0 + s + 2 for b in boxes):
                continue
            yy, xx = np.mgrid[y0:y0 + s, x0:x0 + s] + 0.5
            cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
            inside = [(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, np.ones_like(xx, bool), np.abs(xx - cx) <= (yy - y0) / 2][c]
            img[y0:y0 + s, x0:x0 + s][inside] = COLORS[c]
            boxes.append((c, x0, y0, x0 + s, y0 + s))
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / split / f"img{i:04d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        (root / "labels" / split / f"img{i:04d}.txt").write_text("".join(
            f"{c} {(a + b) / 2 / w:.6f} {(d + e) / 2 / h:.6f} {(b - a) / w:.6f} {(e - d) / h:.6f}\n"
            for c, a, d, b, e in boxes))
    (root / "data.yaml").write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--imgsz", type=int, default=160)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    make_data(data)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    model = YOLO("yolov8n.yaml")
    # Ultralytics' defaults but for a few minutes on 2 cores: a nominal batch of 16 (one optimiser
    # step per batch; at 64 a 200-image epoch would be 3 steps) and a one-epoch warm-up.
    model.train(
        data=str(data / "data.yaml"), epochs=a.epochs, imgsz=a.imgsz, batch=16, nbs=16, warmup_epochs=1,
        close_mosaic=a.epochs // 2, workers=0, device="cpu", plots=False, val=False, seed=0, deterministic=True,
        amp=False, project=str(out / "runs"), name="train", exist_ok=True, verbose=False,
    )
    best = out / "best.pt"
    shutil.copy(out / "runs" / "train" / "weights" / "best.pt", best)

    # Each export writes next to best.pt: the nms=True one is moved aside before the plain one.
    for fmt, kwargs, name in [
        ("onnx", {"nms": True, "conf": CONF, "iou": IOU}, "best-nms.onnx"),
        ("onnx", {}, "best.onnx"),
        ("torchscript", {}, "best.torchscript"),
    ]:
        f = YOLO(str(best)).export(format=fmt, imgsz=a.imgsz, device="cpu", **kwargs)
        if Path(f).resolve() != (out / name).resolve():
            shutil.move(f, out / name)

    images = sorted((data / "images" / "val").glob("*.jpg"))
    preds = {
        "pt": predictions(best, images, a.imgsz),
        "onnx": predictions(out / "best.onnx", images, a.imgsz),
        "onnx-nms": predictions(out / "best-nms.onnx", images, a.imgsz),
        "torchscript": predictions(out / "best.torchscript", images, a.imgsz),
    }
    (out / "predictions.json").write_text(json.dumps(preds))

    # The raw forward pass of the checkpoint's model as stored (unfused, float32, eval mode).
    net = torch.load(best, map_location="cpu", weights_only=False)["model"].float().eval()
    import cv2

    img = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    boxed = LetterBox((a.imgsz, a.imgsz), auto=False, stride=32)(image=img)
    x = torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1))).float()[None] / 255.0
    with torch.no_grad():
        y = net(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    (out / "forward.json").write_text(json.dumps({
        "image": images[0].name, "input": x[0].flatten().tolist(), "output": y[0].flatten().tolist(),
        "output_shape": list(y[0].shape),
    }))

    m = YOLO(str(best)).val(data=str(data / "data.yaml"), imgsz=a.imgsz, batch=16, device="cpu", plots=False,
                            verbose=False, project=str(out / "runs"), name="val", exist_ok=True)
    (out / "val.json").write_text(json.dumps({
        "map50": float(m.box.map50), "map50_95": float(m.box.map), "ultralytics": ultralytics.__version__,
        "torch": torch.__version__, "epochs": a.epochs, "imgsz": a.imgsz,
    }))
    shutil.rmtree(out / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
