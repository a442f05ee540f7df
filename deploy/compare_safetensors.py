"""Compare two safetensors files tensor by tensor, in plain Python (no PyTorch, no numpy:
the GPU machines have PyTorch, CPU machines may have neither). Used by deploy/gpu_check.sh.
Usage: compare_safetensors.py REFERENCE OURS. Prints a JSON line per tensor both files
hold (inputs skipped): max |diff| and whether every element is within
atol + rtol·|ref| with the golden tests' tolerances (1e-4, 1e-4); integer tensors must
be equal. Last line: totals."""
import array
import json
import struct
import sys

FLOAT = {"F32": "f", "F64": "d"}
INT = {"I64": "q", "I32": "i", "I16": "h", "I8": "b", "U8": "B", "BOOL": "B"}


def values(dtype, raw):
    if dtype in FLOAT or dtype in INT:
        a = array.array((FLOAT.get(dtype) or INT[dtype]))
        a.frombytes(raw)
        return list(a)
    if dtype == "F16":
        return [v for (v,) in struct.iter_unpack("<e", raw)]
    if dtype == "BF16":
        return [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    raise ValueError(f"dtype {dtype}")


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
        out[key] = (meta["dtype"], meta["shape"], values(meta["dtype"], data[base + start:base + end]))
    return out


def main():
    ref, ours = load(sys.argv[1]), load(sys.argv[2])
    n = bad = 0
    for key in sorted(set(ref) & set(ours)):
        if key.startswith("input."):
            continue
        (dt_a, shape_a, a), (dt_b, shape_b, b) = ref[key], ours[key]
        n += 1
        if shape_a != shape_b:
            print(json.dumps({"key": key, "ok": False, "why": f"shape {shape_b} vs {shape_a}"}))
            bad += 1
            continue
        if dt_a in INT and dt_b in INT:
            ok = a == b
            rec = {"key": key, "ok": ok, "exact": True}
        else:
            diffs = [abs(x - y) for x, y in zip(a, b)]
            ok = all(d <= 1e-4 + 1e-4 * abs(x) for d, x in zip(diffs, a))
            rec = {"key": key, "ok": ok, "max_abs": max(diffs, default=0.0)}
        print(json.dumps(rec))
        bad += not ok
    print(json.dumps({"compared": n, "outside_tolerance": bad, "only_in_reference": len(set(ref) - set(ours))}))


if __name__ == "__main__":
    main()
