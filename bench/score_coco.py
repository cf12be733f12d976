"""One evaluator for the trainer benchmark: runs an ONNX detector (`[B, 3, S, S]` in,
`[B, 4 + classes, anchors]` out, as both `ocellus-trainer export` and Ultralytics write it) over the
images of a YOLO-layout dataset split and scores the predictions with pycocotools.

Both models get the same preprocessing (Ultralytics' validation loader: OpenCV decode, long side
resized to imgsz with INTER_LINEAR, centred grey-114 padding), the same class-aware NMS (conf,
IoU, max_det per image, the best class of each anchor) and the same scorer (boxes mapped back to
original pixels and clipped, pycocotools with maxDets = max_det), so that two models' numbers
differ only by their weights.

    python bench/score_coco.py MODEL.onnx DATASET_DIR --imgsz 160 [--conf 0.001 --iou 0.7 --max-det 300]

Prints one JSON object: pycocotools' mAP50-95 and mAP50. Each other flag switches one evaluation
choice, to measure how much it moves the number:
  --multi-label       every class above conf per anchor (Ultralytics' validator), not the best only
  --space letterbox   compare boxes in letterboxed input pixels, unclipped (Ultralytics 8.4's
                      validator), not mapped back to the original image and clipped
  --rect              Ultralytics' rectangular validation batches (one shape per --batch images
                      sorted by aspect ratio, padded by half a stride); needs a dynamic-size ONNX,
                      or --rect-model, the same weights exported at the one (square) rect shape
  --coco-max-det N    pycocotools' maxDets (default: max_det)
  --ultralytics-ap    also score the same predictions with Ultralytics' matching and AP
                      (`match_predictions` + `ap_per_class`); needs the ultralytics package
  --predictions FILE  score what `ocellus-trainer val --predictions` wrote (original pixels)
                      instead of running a model (pass `-` as MODEL)
  --attribution       all of the above one at a time from the default, and Ultralytics'
                      validator as a whole (letterbox space, multi-label, its AP; --rect too when
                      a rect model is given), as one JSON object
"""

import argparse
import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

PAD = 114
STRIDE = 32


def rect_shapes(sizes, imgsz, batch):
    """Ultralytics' `set_rectangle` (pad 0.5 for validation): per image the (h, w) of its batch."""
    ar = np.array([h / w for h, w in sizes])
    order = ar.argsort()
    shapes = [None] * len(sizes)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        lo, hi = ar[idx].min(), ar[idx].max()
        s = [hi, 1] if hi < 1 else [1, 1 / lo] if lo > 1 else [1, 1]
        shape = (np.ceil(np.array(s) * imgsz / STRIDE + 0.5).astype(int) * STRIDE).tolist()
        for i in idx:
            shapes[i] = tuple(shape)
    return shapes


def letterbox(img, shape, imgsz):
    """Ultralytics' validation preprocessing: `load_image` (long side to imgsz, INTER_LINEAR, sizes
    rounded up) then `LetterBox(scaleup=False)` into `shape` (h, w), centred. Returns the CHW float
    input, the gain and the (left, top) padding, as Ultralytics' `ratio_pad` maps boxes back."""
    h0, w0 = img.shape[:2]
    r = imgsz / max(h0, w0)
    if r != 1:
        img = cv2.resize(img, (min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz)), interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    g = min(shape[0] / h, shape[1] / w, 1.0)
    nw, nh = round(w * g), round(h * g)
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (shape[1] - nw) / 2, (shape[0] - nh) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD, PAD, PAD))
    x = img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0  # BGR HWC -> RGB CHW
    return np.ascontiguousarray(x), (nw / w0, nh / h0), (left, top)  # Ultralytics' ratio_pad, per axis


def iou_one_to_many(b, bs):
    ix = np.clip(np.minimum(b[2], bs[:, 2]) - np.maximum(b[0], bs[:, 0]), 0, None)
    iy = np.clip(np.minimum(b[3], bs[:, 3]) - np.maximum(b[1], bs[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return inter / (area(b) + area(bs) - inter + 1e-12)


def nms(out, conf, iou, max_det, multi_label):
    """Class-aware NMS over one image's `[4 + nc, anchors]` output; boxes xyxy in input pixels."""
    boxes = np.stack([out[0] - out[2] / 2, out[1] - out[3] / 2, out[0] + out[2] / 2, out[1] + out[3] / 2], 1)
    scores = out[4:].T  # anchors x nc
    if multi_label:
        a, c = np.nonzero(scores > conf)
        s = scores[a, c]
    else:
        c = scores.argmax(1)
        s = scores[np.arange(len(c)), c]
        a = np.nonzero(s > conf)[0]
        c, s = c[a], s[a]
    order = np.argsort(-s, kind="stable")[:30000]
    a, c, s = a[order], c[order], s[order]
    b = boxes[a]
    keep, alive = [], np.ones(len(s), bool)
    for i in range(len(s)):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == max_det:
            break
        rest = np.nonzero(alive[i + 1 :])[0] + i + 1
        same = rest[c[rest] == c[i]]
        alive[same[iou_one_to_many(b[i], b[same]) > iou]] = False
    return b[keep], s[keep], c[keep]


def labels(path, w, h):
    """YOLO label file -> (classes, xyxy boxes in original pixels)."""
    rows = [l.split() for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    cls = np.array([int(r[0]) for r in rows], int)
    xywh = np.array([[float(v) for v in r[1:5]] for r in rows], float).reshape(-1, 4) * [w, h, w, h]
    return cls, np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)


def coco_eval(images, names, max_dets):
    """pycocotools' COCOeval (bbox) over per-image (gt cls, gt xyxy, det xyxy, det score, det cls)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, dets = [], []
    for i, (gc, gb, db, ds, dc) in enumerate(images, 1):
        for c, b in zip(gc, gb):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [float(b[0]), float(b[1]), float(w), float(h)], "area": float(w * h)})
        for b, s, c in zip(db, ds, dc):
            dets.append({"image_id": i, "category_id": int(c) + 1, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    if not dets:
        return 0.0, 0.0
    gt = {"images": [{"id": i} for i in range(1, len(images) + 1)], "annotations": anns,
          "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}
    with tempfile.TemporaryDirectory() as d:
        Path(d, "gt.json").write_text(json.dumps(gt))
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # COCO() prints
            coco = COCO(str(Path(d, "gt.json")))
            e = COCOeval(coco, coco.loadRes(dets), "bbox")
            e.params.maxDets = [max_dets]
            e.evaluate()
            e.accumulate()
    # summarize()'s AP at area "all" and maxDets[-1] (its stats[0] hard-codes maxDets=100).
    prec = e.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class
    mean = lambda p: float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return mean(prec), mean(prec[0])


def ultralytics_eval(images, nc):
    """Ultralytics' validator metric on the same predictions: its greedy `match_predictions` at
    IoU 0.50:0.95 and `ap_per_class` (mAP over the classes present in the ground truth)."""
    import torch
    from types import SimpleNamespace
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    me = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    tps, confs, pcls, tcls = [], [], [], []
    for gc, gb, db, ds, dc in images:
        if len(db) and len(gc):
            iou = box_iou(torch.tensor(gb, dtype=torch.float32), torch.tensor(db, dtype=torch.float32))
            tp = BaseValidator.match_predictions(me, torch.tensor(dc), torch.tensor(gc), iou).numpy()
        else:
            tp = np.zeros((len(db), 10), bool)
        tps.append(tp), confs.append(ds), pcls.append(dc), tcls.append(gc)
    r = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls),
                     names={i: str(i) for i in range(nc)})
    ap = r[5]  # (classes with labels, 10)
    return float(ap.mean()), float(ap[:, 0].mean())


def predict(model, dataset, split, files, imgs, shapes, imgsz, conf, iou, max_det, multi_label, space):
    """Runs the ONNX model over the images (letterbox into each image's shape, forward, NMS);
    returns per image (gt classes, gt xyxy, det xyxy, det scores, det classes) in `space`."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = [d if isinstance(d, int) else None for d in inp.shape[2:]]
    results = []
    for f, im, shape in zip(files, imgs, shapes):
        if any(d is not None and d != s for d, s in zip(fixed, shape)):
            raise ValueError(f"{model} takes {inp.shape[2:]}, not {list(shape)}: export it with a dynamic size")
        h0, w0 = im.shape[:2]
        x, (gx, gy), (pl, pt) = letterbox(im, shape, imgsz)
        out = sess.run(None, {inp.name: x[None]})[0][0]
        db, ds, dc = nms(out, conf, iou, max_det, multi_label)
        gc, gb = labels(Path(dataset, "labels", split, f.stem + ".txt"), w0, h0)
        if space == "original":
            db = np.clip((db - [pl, pt, pl, pt]) / [gx, gy, gx, gy], 0, [w0, h0, w0, h0])
        else:
            gb = gb * [gx, gy, gx, gy] + [pl, pt, pl, pt]
        results.append((gc, gb, db, ds, dc))
    return results


def val_predictions(path, dataset, split, files, imgs):
    """`ocellus-trainer val --predictions` output as per-image results in original pixels."""
    theirs = {Path(r["source"]).stem: r for r in json.loads(Path(path).read_text())}
    results = []
    for f, im in zip(files, imgs):
        h0, w0 = im.shape[:2]
        dets = theirs[f.stem]["detections"] if f.stem in theirs else []
        db = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in dets], float).reshape(-1, 4)
        ds = np.array([d["confidence"] for d in dets], float)
        dc = np.array([d["class"] for d in dets], int)
        results.append((*labels(Path(dataset, "labels", split, f.stem + ".txt"), w0, h0), db, ds, dc))
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("dataset", help="YOLO layout: data.yaml, images/<split>/, labels/<split>/")
    p.add_argument("--split", default="val")
    p.add_argument("--imgsz", type=int, required=True)
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--coco-max-det", type=int)
    p.add_argument("--multi-label", action="store_true")
    p.add_argument("--space", choices=["original", "letterbox"], default="original")
    p.add_argument("--rect", action="store_true")
    p.add_argument("--rect-model", help="the weights exported at the rect shape (static ONNX)")
    p.add_argument("--batch", type=int, default=16, help="images per rectangular batch (--rect)")
    p.add_argument("--ultralytics-ap", action="store_true")
    p.add_argument("--predictions", help="JSON written by `ocellus-trainer val --predictions`")
    p.add_argument("--attribution", action="store_true")
    a = p.parse_args()

    import yaml

    data = yaml.safe_load(Path(a.dataset, "data.yaml").read_text())
    names = [data["names"][k] for k in sorted(data["names"])] if isinstance(data["names"], dict) else data["names"]
    files = sorted(Path(a.dataset, "images", a.split).iterdir())
    imgs = [cv2.imread(str(f)) for f in files]
    square = [(a.imgsz, a.imgsz)] * len(files)
    rect = rect_shapes([im.shape[:2] for im in imgs], a.imgsz, a.batch)
    run = lambda multi_label=False, space="original", shapes=square, model=a.model: predict(
        model, a.dataset, a.split, files, imgs, shapes, a.imgsz, a.conf, a.iou, a.max_det, multi_label, space)
    coco = lambda results, max_dets=a.coco_max_det or a.max_det: coco_eval(results, names, max_dets)[0]
    report = {"model": a.model, "images": len(files)}

    if a.attribution:
        base = run()
        m0 = coco(base)
        report["pycocotools"] = m0
        report["delta"] = {
            "ultralytics_ap": ultralytics_eval(base, len(names))[0] - m0,
            "letterbox_space": coco(run(space="letterbox")) - m0,
            "multi_label": coco(run(multi_label=True)) - m0,
            "coco_max_det_100": coco(base, 100) - m0,
        }
        both = run(multi_label=True, space="letterbox")
        report["ultralytics_validator"] = ultralytics_eval(both, len(names))[0]
        if a.rect or a.rect_model:
            model = a.rect_model or a.model
            report["delta"]["rect"] = coco(run(shapes=rect, model=model)) - m0
            both = run(multi_label=True, space="letterbox", shapes=rect, model=model)
            report["ultralytics_validator_rect"] = ultralytics_eval(both, len(names))[0]
        print(json.dumps(report))
        return

    if a.predictions:
        results = val_predictions(a.predictions, a.dataset, a.split, files, imgs)
    else:
        results = run(a.multi_label, a.space, rect if a.rect else square, a.rect_model if a.rect else a.model)
    m, m50 = coco_eval(results, names, a.coco_max_det or a.max_det)
    report.update({"detections": int(sum(len(r[2]) for r in results)), "map50_95": m, "map50": m50})
    if a.ultralytics_ap:
        um, um50 = ultralytics_eval(results, len(names))
        report["ultralytics"] = {"map50_95": um, "map50": um50}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
