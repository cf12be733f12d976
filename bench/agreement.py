"""Before the predictor benchmark times anything: do all servers return the same detections?
So that nobody is fast by doing less (another resize, a lower input size, fewer boxes).

    python bench/agreement.py variants SRC_DIR OUT_DIR     # non-square, rescaled copies (needs cv2)
    python bench/agreement.py check --server NAME=URL ... IMAGE_DIR...

`check` posts every image to every server's Ultralytics-style `/predict` and compares each pair
of servers: every detection must have a same-class partner at IoU > IOU_MIN whose confidence is
within CONF_TOL, except detections within CONF_TOL of the confidence threshold (the other server
may have them just below it). On JPEG inputs only, up to JPEG_SLACK of a pair's detections may
instead have a same-class partner at IoU > 0.5 (the decoders differ, which can move a borderline
box); on lossless inputs none may. It prints a summary per pair and exits 1 with the mismatches.
"""
import argparse
import json
import sys
import urllib.request
import uuid
from itertools import combinations
from pathlib import Path

IOU_MIN = 0.9
# Same model, same ONNX Runtime, same preprocessing (vision/tests/letterbox_reference.rs): on
# lossless inputs the three agree to the printed digit. What differs is JPEG decoding: our `image`
# crate (zune-jpeg) and OpenCV's libjpeg-turbo differ by up to a few grey levels on ~10% of the
# values, which moves confidences by up to ~0.015 and, rarely, a borderline box.
CONF_TOL = 0.02
JPEG_SLACK = 0.02
CONF = 0.25  # all servers' default threshold


def post(url, path):
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["images"][0]["results"]


def iou(a, b):
    ix = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    iy = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    inter = ix * iy
    area = lambda r: max(0.0, r["x2"] - r["x1"]) * max(0.0, r["y2"] - r["y1"])
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def compare(da, db):
    """Greedy same-class matching by IoU, most confident first. Returns (pairs, unmatched a, unmatched b)."""
    free = list(range(len(db)))
    pairs, lone_a = [], []
    for x in sorted(da, key=lambda d: -d["confidence"]):
        best, best_iou = None, 0.0
        for j in free:
            if db[j]["class"] == x["class"] and (v := iou(x["box"], db[j]["box"])) > best_iou:
                best, best_iou = j, v
        if best is not None and best_iou > IOU_MIN:
            free.remove(best)
            pairs.append((x, db[best], best_iou))
        else:
            lone_a.append(x)
    return pairs, lone_a, [db[j] for j in free]


def check(args):
    servers = dict(s.split("=", 1) for s in args.server)
    images = sorted(p for d in args.dirs for p in Path(d).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        sys.exit("no images to compare")
    results = {name: {p: post(url, p) for p in images} for name, url in servers.items()}
    failures = []
    for a, b in combinations(servers, 2):
        n, worst_conf, worst_iou, dets, near = 0, 0.0, 1.0, 0, []
        for p in images:
            pairs, lone_a, lone_b = compare(results[a][p], results[b][p])
            dets += len(results[a][p])
            for x, y, v in pairs:
                n += 1
                dc = abs(x["confidence"] - y["confidence"])
                worst_conf, worst_iou = max(worst_conf, dc), min(worst_iou, v)
                if dc > CONF_TOL:
                    failures.append(f"{p.name}: {a} vs {b}: class {x['class']} confidence {x['confidence']:.4f} vs {y['confidence']:.4f}")
            # The same object located a little differently: a same-class partner at IoU > 0.5.
            for x in list(lone_a):
                y = max((y for y in lone_b if y["class"] == x["class"]), key=lambda y: iou(x["box"], y["box"]), default=None)
                if y is not None and iou(x["box"], y["box"]) > 0.5 and abs(x["confidence"] - y["confidence"]) <= CONF_TOL:
                    lone_a.remove(x)
                    lone_b.remove(y)
                    msg = f"{p.name}: {a} vs {b}: class {x['class']} at IoU {iou(x['box'], y['box']):.3f}"
                    (near if p.suffix.lower() in (".jpg", ".jpeg") else failures).append(msg)
            for who, lone in ((a, lone_a), (b, lone_b)):
                for x in lone:
                    if x["confidence"] > CONF + CONF_TOL:
                        failures.append(f"{p.name}: only {who} has class {x['class']} at {x['confidence']:.4f} {x['box']}")
        print(f"agreement {a} vs {b}: {len(images)} images, {dets} detections, {n} matched at IoU > {IOU_MIN}; "
              f"largest confidence difference {worst_conf:.4f}, smallest IoU {worst_iou:.4f}; "
              f"{len(near)} JPEG detection(s) matched at IoU > 0.5 only", *near, sep="\n  ")
        if len(near) > max(1, JPEG_SLACK * dets):
            failures += near
    if sum(len(r) for r in results[next(iter(servers))].values()) == 0:
        failures.append("no detections at all: the comparison would prove nothing")
    if failures:
        print(f"MISMATCH (IoU > {IOU_MIN}, confidence within {CONF_TOL}):", *failures[:50], sep="\n  ")
        sys.exit(1)


def variants(args):
    """Non-square crops of the first images, downscaled and upscaled, as JPEG and PNG: they
    exercise the letterbox resize, which the benchmark's square images at IMGSZ never do."""
    import cv2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(sorted(Path(args.src).glob("*.jpg"))[: args.n]):
        img = cv2.imread(str(p))
        h, w = img.shape[:2]
        crop = img[: h * 3 // 4] if i % 2 else img[:, : w * 2 // 3]  # 4:3 landscape or 2:3 portrait
        for scale in (0.7, 1.6):
            v = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            cv2.imwrite(str(out / f"{p.stem}_{scale}.jpg"), v, [cv2.IMWRITE_JPEG_QUALITY, 92])
            cv2.imwrite(str(out / f"{p.stem}_{scale}.png"), v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--server", action="append", required=True, help="NAME=URL of a /predict endpoint")
    c.add_argument("dirs", nargs="+")
    v = sub.add_parser("variants")
    v.add_argument("src")
    v.add_argument("out")
    v.add_argument("-n", type=int, default=12)
    args = ap.parse_args()
    (check if args.cmd == "check" else variants)(args)


if __name__ == "__main__":
    main()
