"""Compare two safetensors files tensor by tensor (used by deploy/gpu_check.sh on the GPU
machine, whose Python has PyTorch but maybe not the safetensors package).
Usage: compare_safetensors.py REFERENCE OURS. Prints a JSON line per tensor both files
hold (inputs skipped): max |diff|, and whether it is within atol + rtol·|ref| with the
golden tests' tolerances (1e-4, 1e-4); integer tensors must be equal. Last line: totals."""
import json
import struct
import sys

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def load(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        dtype = DTYPES[meta["dtype"]]
        if end > start:
            t = torch.frombuffer(bytearray(data[base + start:base + end]), dtype=dtype)
        else:
            t = torch.empty(0, dtype=dtype)
        out[key] = t.reshape(meta["shape"])
    return out


def main():
    ref, ours = load(sys.argv[1]), load(sys.argv[2])
    n = bad = 0
    for key in sorted(set(ref) & set(ours)):
        if key.startswith("input."):
            continue
        a, b = ref[key], ours[key]
        if a.shape != b.shape:
            print(json.dumps({"key": key, "ok": False, "why": f"shape {list(b.shape)} vs {list(a.shape)}"}))
            n += 1
            bad += 1
            continue
        if a.is_floating_point():
            a64, b64 = a.double(), b.double()
            diff = (a64 - b64).abs()
            ok = bool((diff <= 1e-4 + 1e-4 * a64.abs()).all())
            rec = {"key": key, "ok": ok, "max_abs": float(diff.max()) if diff.numel() else 0.0}
        else:
            ok = bool(torch.equal(a, b))
            rec = {"key": key, "ok": ok, "exact": True}
        print(json.dumps(rec))
        n += 1
        bad += not ok
    print(json.dumps({"compared": n, "outside_tolerance": bad, "only_in_reference": len(set(ref) - set(ours))}))


if __name__ == "__main__":
    main()
