#!/usr/bin/env python3
"""Flatten a PyTorch checkpoint (.pth) into a safetensors file, keeping key names.

Used by `smgeo weights import` for official SMGeo checkpoints and Swin-T ImageNet
weights; all renaming/resizing happens in Rust. Needs a Python with torch (any 2.x).
The state dict is taken from the top level or from the first of the keys
'state_dict', 'model', 'module' that holds a dict of tensors. Non-tensor entries are
skipped (and listed). Usage: pth_to_safetensors.py IN.pth OUT.safetensors
"""
import json
import struct
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("pth_to_safetensors.py: this needs a Python with torch installed", file=sys.stderr)
        return 3
    src, dst = sys.argv[1], sys.argv[2]
    obj = torch.load(src, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        print(f"{src}: no state dict found (top level is {type(obj).__name__})", file=sys.stderr)
        return 4
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}
    header, blobs, offset, skipped = {}, [], 0, []
    for name, t in obj.items():
        if not torch.is_tensor(t) or t.dtype not in dtypes:
            skipped.append(name)
            continue
        data = t.detach().contiguous().cpu().numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    if skipped:
        print(f"skipped non-tensor entries: {skipped}", file=sys.stderr)
    print(f"{len(header)} tensors -> {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
