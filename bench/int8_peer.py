"""Ultralytics' side of the INT8 benchmark (bench/int8.sh), one process per step:

    python bench/int8_peer.py finetune BASE_PT DATA_YAML EPOCHS IMGSZ PROJECT OUT_PT
        fine-tunes BASE_PT (the bring-your-own-model fixture's yolov8n) at IMGSZ on DATA_YAML and
        copies the last checkpoint to OUT_PT: the one set of weights behind every server.
    python bench/int8_peer.py export-onnx PT IMGSZ OUT
        Ultralytics' FP32 ONNX export (dynamic=True, simplified), copied to OUT.
    python bench/int8_peer.py export-openvino PT IMGSZ CALIB_YAML OUT_DIR
        Ultralytics' OpenVINO INT8 export (format="openvino", int8=True: NNCF post-training
        quantization, its defaults), calibrated on the `val` images of CALIB_YAML, batch 1. OUT_DIR
        must end in `_openvino_model` (Ultralytics recognises the format by the name).
    python bench/int8_peer.py val MODEL DATA_YAML IMGSZ PROJECT
        Ultralytics' validator (conf 0.001, IoU 0.7, batch 1, square) on MODEL (a .pt, an .onnx or an
        OpenVINO dir); prints {"map50", "map50_95"} as JSON: one evaluator for every model.
    python bench/int8_peer.py detections IMAGE_DIR REF_NAME NAME=URL...
        posts every image to every server; prints each server's detections and the share of them
        with a same-class partner at IoU > 0.5 in REF_NAME's answer. Fails if a server finds nothing.
    python bench/int8_peer.py versions
        prints the versions of Ultralytics, ONNX Runtime, OpenVINO and NNCF in this environment.
"""
import json
import shutil
import sys
from pathlib import Path

mode = sys.argv[1]
if mode == "versions":
    from importlib.metadata import version

    print(json.dumps({p: version(p) for p in ("ultralytics", "onnxruntime", "openvino", "nncf", "torch")}))
    sys.exit(0)
if mode == "detections":
    sys.path.insert(0, str(Path(__file__).parent))
    import agreement

    images = sorted(Path(sys.argv[2]).glob("*.jpg"))
    ref = sys.argv[3]
    servers = dict(s.split("=", 1) for s in sys.argv[4:])
    got = {n: {p: agreement.post(u, p) for p in images} for n, u in servers.items()}
    agreement.IOU_MIN = 0.5
    bad = False
    for n in servers:
        dets = sum(len(got[n][p]) for p in images)
        matched = sum(len(agreement.compare(got[n][p], got[ref][p])[0]) for p in images)
        print(f"detections {n}: {dets} on {len(images)} images, {matched / max(dets, 1):.1%} with a same-class partner at IoU > 0.5 in {ref}'s")
        bad |= dets == 0
    sys.exit("a server found nothing: the comparison would prove nothing" if bad else 0)

from ultralytics import YOLO  # noqa: E402

if mode == "finetune":
    base, data, epochs, imgsz, project, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
    model = YOLO(base)
    # Plain SGD, no warm-up: AdamW (what "auto" picks for short runs) and the warm-up's high bias
    # learning rate both undo much of the pretrained detector in a fine-tune of a few hundred steps.
    model.train(data=data, epochs=epochs, imgsz=imgsz, batch=16, device="cpu", workers=0, plots=False, amp=False, val=False, warmup_epochs=0,
                optimizer="SGD", lr0=0.01,
                project=project, name="run", exist_ok=True, verbose=False, seed=0, deterministic=True)
    shutil.copy(Path(model.trainer.save_dir) / "weights" / "last.pt", out)
elif mode == "export-onnx":
    pt, imgsz, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    path = YOLO(pt).export(format="onnx", imgsz=imgsz, dynamic=True, device="cpu", verbose=False)
    shutil.copy(path, out)
elif mode == "export-openvino":
    pt, imgsz, calib, out = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    path = YOLO(pt).export(format="openvino", int8=True, data=calib, imgsz=imgsz, batch=1, device="cpu", verbose=False)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(path, out)
elif mode == "val":
    model, data, imgsz, project = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    v = YOLO(model, task="detect").val(data=data, imgsz=imgsz, batch=1, rect=False, device="cpu", plots=False, verbose=False,
                                       project=project, name="val", exist_ok=True)
    print(json.dumps({"map50": float(v.box.map50), "map50_95": float(v.box.map)}))
else:
    sys.exit(f"unknown mode {mode}")
