"""Writes PyTorch tensors in the safetensors layout (8-byte little-endian header length, JSON
header, data) without the `safetensors` package, for the benchmark and fixture scripts."""
import json
import struct

import torch

DTYPES = {torch.float32: "F32", torch.uint8: "U8"}


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
