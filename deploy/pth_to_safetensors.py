#!/usr/bin/env python3
"""Flatten a PyTorch checkpoint (.pth) into a safetensors file, keeping key names.

Used by `smgeo weights import` for official SMGeo checkpoints and Swin-T ImageNet
weights; all renaming/resizing happens in Rust. Needs a Python with torch (any 2.x).
The state dict is taken from the top level or from the first of the keys
'state_dict', 'model', 'module' that holds a dict of tensors. Non-tensor entries are
skipped (and listed). Needs no numpy (bf16 works). Usage:
  pth_to_safetensors.py IN.pth OUT.safetensors [--trust-pickle]
The file is read with torch.load(weights_only=True), which refuses arbitrary pickled
objects (e.g. an argparse.Namespace saved beside the weights). --trust-pickle reads
such a file with weights_only=False: only for files from a source you trust, since
unpickling can run code.
"""
import json
import struct
import sys


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--trust-pickle"]
    trust = len(args) != len(sys.argv) - 1
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("pth_to_safetensors.py: this needs a Python with torch installed", file=sys.stderr)
        return 3
    src, dst = args
    try:
        obj = torch.load(src, map_location="cpu", weights_only=not trust)
    except Exception as e:  # noqa: BLE001 - report any load failure with its cause
        hint = "" if trust else " (if the file is trusted and holds non-tensor objects, add --trust-pickle)"
        print(f"{src}: torch.load failed: {e}{hint}", file=sys.stderr)
        return 5
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
        # clone(): a tensor of its own storage, exactly numel elements, no numpy
        data = bytes(t.detach().cpu().contiguous().clone().untyped_storage())
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
