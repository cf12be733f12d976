"""Reference outputs of Ultralytics' yolov8n (3 classes) with deterministic weights, for
trainer-image/tests/parity.rs. Every state-dict entry (but the fixed DFL projection and counters)
is set from a formula of its name and flat index; the input is a fixed pattern."""
import json
import math

import torch
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


m = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
sd = m.state_dict()
with torch.no_grad():
    for k, t in sd.items():
        if "dfl" in k or k.endswith("num_batches_tracked"):
            continue
        t.copy_(fill(k, t))
    c, h, w = torch.meshgrid(torch.arange(3), torch.arange(160), torch.arange(160), indexing="ij")
    x = (0.5 + 0.5 * torch.sin(0.1 * (c * 7 + h * 3 + w).double())).float().unsqueeze(0)
    y = m(x)[0][0]
idx = list(range(0, y.numel(), 37))
flat = y.flatten()
print(json.dumps({"shape": list(y.shape), "sum": float(y.double().sum()), "abs_sum": float(y.double().abs().sum()),
                  "samples": [[i, float(flat[i])] for i in idx]}))
