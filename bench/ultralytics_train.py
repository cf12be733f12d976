"""Peer for the trainer benchmark (run by bench/train.sh, one process per step so that each is
timed the same way as ours):

    python bench/ultralytics_train.py train DATA_YAML EPOCHS IMGSZ BATCH PROJECT
        Ultralytics trains yolov8n.yaml from scratch; prints {"save_dir", "last"} as JSON. With
        OCELLUS_DUMP_INIT=PATH, the model's initial state dict (at `on_train_start`, before any
        step; Ultralytics' names, float32) is written there as safetensors first. Nothing
        but the training runs (its per-epoch validation and the final validation of best.pt are
        part of Ultralytics' training and cannot be turned off without changing the recipe).
    python bench/ultralytics_train.py export WEIGHTS IMGSZ [dynamic]
        exports WEIGHTS to ONNX (batch 1, fixed size, like `ocellus-trainer export`; with `dynamic`,
        dynamic batch and size, which rectangular validation batches need); prints the path.
    python bench/ultralytics_train.py val MODEL DATA_YAML IMGSZ PROJECT
        Ultralytics' own validator on MODEL (its defaults: conf 0.001, IoU 0.7, max_det 300);
        prints its mAP50 and mAP50-95 and the settings it ran with.
"""
import json
import os
import sys

from ultralytics import YOLO

from safetensors_file import write_safetensors

def dump_state(model, path):
    """The state dict (less the batch-norm step counters) as float32 safetensors."""
    write_safetensors(path, {k: v.detach().float().cpu() for k, v in model.state_dict().items()
                             if not k.endswith("num_batches_tracked")})


mode = sys.argv[1]
if mode == "train":
    data, epochs, imgsz, batch, project = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    model = YOLO("yolov8n.yaml")
    if os.environ.get("OCELLUS_DUMP_INIT"):
        model.add_callback("on_train_start", lambda t: dump_state(t.model, os.environ["OCELLUS_DUMP_INIT"]))
    # workers=2 as ours; on a CPU Ultralytics itself lowers it to 0 (loads in the main process).
    model.train(data=data, epochs=epochs, imgsz=imgsz, batch=batch, device="cpu", workers=2, plots=False, amp=False,
                project=project, name="run", exist_ok=True, verbose=False, seed=0, deterministic=True)
    save_dir = model.trainer.save_dir
    print(json.dumps({"save_dir": str(save_dir), "last": str(save_dir / "weights" / "last.pt")}))
elif mode == "export":
    weights, imgsz, dynamic = sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["dynamic"]
    path = YOLO(weights).export(format="onnx", imgsz=imgsz, batch=1, dynamic=dynamic, device="cpu", verbose=False)
    print(json.dumps({"onnx": str(path)}))
elif mode == "val":
    model, data, imgsz, project = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    v = YOLO(model, task="detect").val(data=data, imgsz=imgsz, device="cpu", plots=False, verbose=False,
                                       project=project, name="val", exist_ok=True)
    print(json.dumps({"map50": float(v.box.map50), "map50_95": float(v.box.map)}))
else:
    sys.exit(f"unknown mode {mode}: train or export")
