"""Reference outputs of Ultralytics' yolov8n (3 classes) with deterministic weights, for the
parity tests in trainer-image/tests/. Every state-dict entry (but the fixed DFL projection and
counters) is set from a formula of its name and flat index; inputs are fixed patterns.

    python bench/parity_reference.py predict   # decoded eval-mode output
    python bench/parity_reference.py loss      # training loss [box, cls, dfl] x batch size
"""
import json
import math
import sys

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel


def fill(key, t):
    i = torch.arange(t.numel(), dtype=torch.float64)
    s = torch.sin(1.7 * i + 0.3 * len(key))
    if key.endswith("running_var"):
        v = 1.0 + 0.2 * s.abs()
    elif key.endswith("running_mean") or key.endswith("bias"):
        v = 0.05 * s
    elif t.dim() >= 2:
        v = s / math.sqrt(t.numel() / t.shape[0])
    else:
        v = 1.0 + 0.1 * s
    return v.reshape(t.shape).to(t.dtype)


def model():
    m = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    with torch.no_grad():
        for k, t in m.state_dict().items():
            if "dfl" in k or k.endswith("num_batches_tracked"):
                continue
            t.copy_(fill(k, t))
    return m


def pattern():
    c, h, w = torch.meshgrid(torch.arange(3), torch.arange(160), torch.arange(160), indexing="ij")
    return (0.5 + 0.5 * torch.sin(0.1 * (c * 7 + h * 3 + w).double())).float()


# Ground truth of the loss test: image index, class, normalised cx, cy, w, h (the last box of
# image 0 is smaller than a stride, to exercise the widening of tiny boxes).
TARGETS = [
    (0, 0, 0.3, 0.3, 0.2, 0.25),
    (0, 1, 0.7, 0.6, 0.3, 0.2),
    (0, 2, 0.5, 0.85, 0.05, 0.06),
    (1, 1, 0.5, 0.5, 0.6, 0.5),
]

mode = sys.argv[1] if len(sys.argv) > 1 else "predict"
m = model()
if mode == "predict":
    m.eval()
    with torch.no_grad():
        y = m(pattern().unsqueeze(0))[0][0]
    flat = y.flatten()
    print(json.dumps({"shape": list(y.shape), "sum": float(y.double().sum()), "abs_sum": float(y.double().abs().sum()),
                      "samples": [[i, float(flat[i])] for i in range(0, y.numel(), 37)]}))
else:
    m.train()
    m.args = get_cfg()
    x = torch.stack([pattern(), 1.0 - pattern()])
    t = torch.tensor(TARGETS)
    batch = {"img": x, "batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:6]}
    loss, _ = m.loss(batch)
    print(json.dumps({"loss": [float(v) for v in loss]}))
