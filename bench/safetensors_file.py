"""Writes and reads PyTorch tensors in the safetensors layout (8-byte little-endian header length,
JSON header, data) without the `safetensors` package, for the benchmark and fixture scripts."""
import json
import struct

import torch

DTYPES = {torch.float32: "F32", torch.uint8: "U8"}
NAMES = {v: k for k, v in DTYPES.items()}


def write_safetensors(path, tensors):
    """`tensors` (name to float32 or uint8 CPU tensor) to `path`, names sorted."""
    header, blobs, offset = {}, [], 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        b = t.numpy().tobytes()
        header[k] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    """Name to tensor, for the dtypes `write_safetensors` writes; `__metadata__` is skipped."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        start, end = v["data_offsets"]
        t = torch.frombuffer(bytearray(data[start:end]), dtype=NAMES[v["dtype"]])
        out[k] = t.reshape(v["shape"])
    return out
