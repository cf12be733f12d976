"""Reference for the parity tests in trainer-image/tests/parity.rs: Ultralytics' yolov8n (3 classes)
on two of its own sample photos, with the weights, the input and the outputs stored next to the test.

    eval "$(bench/setup-peer.sh)" && python bench/parity_reference.py

writes trainer-image/tests/data/yolov8n_nc3_parity.{safetensors,json}.

Weights. Ultralytics' seeded default initialisation (`torch.manual_seed(0)`, `DetectionModel`:
PyTorch's kaiming-uniform convolutions, batch norm eps 1e-3 / momentum 0.03, the Detect head's
`bias_init`) is degenerate in eval mode: the signal shrinks through ~60 layers of small weights and
identity running statistics, so every box distribution is uniform to 1e-7 and the class scores are
the bias prior. So the model then trains for STEPS steps as Ultralytics would start (its loss and
default SGD: lr 0.01, momentum 0.937, Nesterov) on the two images and their boxes, and its batch-norm
running statistics are set to those of the batch (one train-mode pass, cumulative average): scores
then span ~0 to ~1 per class and box distributions are peaked at different bins across anchors.
The fixture carries the weights, because libtorch from Rust cannot replay PyTorch's construction
RNG order. Rerunning this script rewrites weights, outputs and loss together (on one machine it
reproduces them bit for bit; elsewhere float32 rounding may differ, which is harmless).

Input. bus.jpg and zidane.jpg from the ultralytics package, letterboxed here to IMGSZ square
(OpenCV bilinear, grey 114 padding) and stored as bytes, so the Rust side needs no letterbox.

Contents. safetensors: every state-dict entry but `num_batches_tracked` (float32, Ultralytics
names), `input` (uint8 [2, 3, S, S], RGB), `raw` (float32 [2, 64 + nc, anchors]: box-bin and class
logits of the three levels, eval mode), `output` (float32 [2, 4 + nc, anchors]: decoded boxes cx,
cy, w, h in pixels and class probabilities) and `raw_train` (the logits in train mode, with batch
statistics, as the loss takes them). JSON: versions, recipe, targets, the training loss
[box, cls, dfl] x batch size of these weights on this batch, what backward of its sum gives (the
L2 norm of every trained parameter's gradient, and the first convolution's gradient whole), and
how far float32 is from float64 on the same model (the scale of rounding error the test's
tolerances are set against).

    python bench/parity_reference.py --gradients

recomputes only the gradients from the stored weights and input (the JSON is rewritten, the
safetensors left as they are) after checking that the stored loss is reproduced.
"""
import copy
import json
import os
import re

import cv2
import numpy as np
import torch
import ultralytics
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from safetensors_file import read_safetensors, write_safetensors

SEED = 0
NC = 3
IMGSZ = 320
STEPS = 40
LR, MOMENTUM = 0.01, 0.937
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer-image", "tests", "data")
NAME = "yolov8n_nc3_parity"

# Ground truth in original pixels, x1 y1 x2 y2 (traced by eye); classes 0 person, 1 bus, 2 head.
# The last head of bus.jpg (cut by the right edge) is 7 x 14 px once letterboxed, under the middle
# stride, which exercises the assigner's widening of small boxes.
IMAGES = {
    "bus.jpg": [
        (1, (17, 230, 805, 760)),
        (0, (48, 398, 245, 905)),
        (0, (221, 405, 345, 860)),
        (0, (668, 390, 810, 880)),
        (0, (0, 550, 64, 875)),
        (2, (100, 400, 160, 472)),
        (2, (260, 407, 308, 475)),
        (2, (787, 397, 810, 445)),
    ],
    "zidane.jpg": [
        (0, (747, 40, 1145, 712)),
        (0, (123, 195, 715, 720)),
        (2, (485, 200, 665, 410)),
        (2, (895, 40, 1070, 285)),
    ],
}


def letterbox(path):
    """`[3, S, S]` uint8 RGB, the image scaled to fit and centred on grey; and the box transform."""
    img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    r = min(IMGSZ / w, IMGSZ / h)
    nw, nh = round(w * r), round(h * r)
    left, top = (IMGSZ - nw) // 2, (IMGSZ - nh) // 2
    out = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
    out[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)

    def xywhn(b):
        x1, y1, x2, y2 = (b[0] * r + left, b[1] * r + top, b[2] * r + left, b[3] * r + top)
        return ((x1 + x2) / 2 / IMGSZ, (y1 + y2) / 2 / IMGSZ, (x2 - x1) / IMGSZ, (y2 - y1) / IMGSZ)

    return torch.from_numpy(out).permute(2, 0, 1).contiguous(), xywhn


def calibrate_batch_norm(m, x):
    """Running statistics := those of `x` (one train-mode pass with a cumulative average)."""
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    m.train()
    with torch.no_grad():
        m(x)
    for b in bns:
        b.momentum = 0.03


def predict(m, x):
    """Decoded output and raw logits `[B, 64 + nc, anchors]`, eval mode."""
    m.eval()
    with torch.no_grad():
        y, preds = m(x)
    return y, logits(preds)


def logits(preds):
    """`[B, 64 + nc, anchors]`: box-bin then class logits, levels concatenated."""
    return torch.cat([preds["boxes"], preds["scores"]], 1).detach()


def gradients(m, batch):
    """What backward of the training loss's sum gives, in train mode: every trained parameter's
    gradient L2 norm, and the first convolution's gradient (it sits behind every other layer)."""
    m.train()
    m.zero_grad()
    loss, _ = m.loss(batch)
    loss.sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    return {
        "grad_norms": {n: float(g.double().norm()) for n, g in sorted(grads.items())},
        "grad_first_conv": [float(v) for v in grads["model.0.conv.weight"].flatten()],
    }


def gradients_only():
    """Adds the gradients of the stored weights to the stored JSON; the safetensors stay as they are."""
    fx = read_safetensors(os.path.join(OUT, NAME + ".safetensors"))
    with open(os.path.join(OUT, NAME + ".json")) as f:
        meta = json.load(f)
    m = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    m.args = get_cfg()
    state = m.state_dict()
    for k in state:
        if not k.endswith("num_batches_tracked"):
            state[k].copy_(fx[k])
    t = torch.tensor(meta["targets"], dtype=torch.float32)
    batch = {"img": fx["input"].float() / 255, "batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:6]}
    grads = gradients(m, batch)
    m.train()
    with torch.no_grad():
        loss, _ = m.loss(batch)
    for got, want in zip(loss.tolist(), meta["loss"]):
        if abs(got - want) > 1e-5 * abs(want):
            raise SystemExit(f"the stored loss {meta['loss']} is not reproduced ({loss.tolist()}): regenerate all")
    meta.update(grads)
    with open(os.path.join(OUT, NAME + ".json"), "w") as f:
        f.write(to_json(meta))


def main():
    assets = os.path.join(os.path.dirname(ultralytics.__file__), "assets")
    inputs, targets = [], []
    for i, (name, boxes) in enumerate(IMAGES.items()):
        img, xywhn = letterbox(os.path.join(assets, name))
        inputs.append(img)
        targets += [(i, c, *(round(v, 6) for v in xywhn(b))) for c, b in boxes]
    x8 = torch.stack(inputs)
    x = x8.float() / 255
    t = torch.tensor(targets, dtype=torch.float32)
    batch = {"img": x, "batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:6]}

    torch.manual_seed(SEED)
    m = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    m.args = get_cfg()
    opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)
    m.train()
    for step in range(STEPS):
        loss, _ = m.loss(batch)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        print(f"step {step + 1}/{STEPS}: loss {[round(float(v), 3) for v in loss.detach()]}", flush=True)
    calibrate_batch_norm(m, x)

    m64 = copy.deepcopy(m).double()
    y, raw = predict(m, x)
    y64, raw64 = predict(m64, x.double())
    m64.train()
    with torch.no_grad():
        raw_train64 = logits(m64(x.double()))
    state = {k: v.detach().clone() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    m.train()
    preds = m(x)  # train mode: batch statistics (and updated running ones, not stored)
    raw_train = logits(preds)
    loss, _ = m.loss(batch, preds)
    deviation = {
        "raw": float((raw.double() - raw64).abs().max()),
        "raw_train": float((raw_train.double() - raw_train64).abs().max()),
        "boxes": float((y[:, :4].double() - y64[:, :4]).abs().max()),
        "scores": float((y[:, 4:].double() - y64[:, 4:]).abs().max()),
    }

    # What the test's guard checks: per-class score spread, and box-bin distributions that are
    # peaked and differ across anchors.
    scores, bins = y[:, 4:], raw[:, :64].reshape(2, 4, 16, -1).softmax(2)
    dist = (bins * torch.arange(16.0).view(1, 1, 16, 1)).sum(2)
    print("score spread per class", [round(float(s.max() - s.min()), 4) for s in scores.transpose(0, 1)])
    print("box bins: peak probability max", float(bins.amax(2).max()), "mean", float(bins.amax(2).mean()),
          "(uniform 1/16); expected-distance std", float(dist.std()))
    print("float32 vs float64", deviation)

    tensors = {**state, "input": x8, "raw": raw, "output": y, "raw_train": raw_train}
    write_safetensors(os.path.join(OUT, NAME + ".safetensors"), tensors)
    meta = {
        "generator": "bench/parity_reference.py",
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "model": "yolov8n.yaml",
        "nc": NC,
        "seed": SEED,
        "imgsz": IMGSZ,
        "images": list(IMAGES),
        "training": {"steps": STEPS, "lr": LR, "momentum": MOMENTUM, "nesterov": True},
        "targets": targets,
        "loss": [float(v) for v in loss.detach()],
        **gradients(m, batch),
        "float32_vs_float64": deviation,
    }
    with open(os.path.join(OUT, NAME + ".json"), "w") as f:
        f.write(to_json(meta))


def to_json(meta):
    """Indented JSON with each innermost list (a target row) on one line."""
    text = json.dumps(meta, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--gradients"]:
        gradients_only()
    elif sys.argv[1:]:
        sys.exit(f"usage: {sys.argv[0]} [--gradients]  (no argument regenerates the whole fixture)")
    else:
        main()
