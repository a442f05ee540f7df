//! Protocol-2 pickler for [`PyValue`] (the protocol `torch.save` uses by default).
//!
//! Output uses the opcodes Python's own pickler emits at protocol 2 for the same
//! values (`BININT1/2`, `BININT`, `LONG1`, `BINFLOAT`, `BINUNICODE`, `EMPTY_LIST` +
//! `APPENDS` in batches of 1000, `TUPLE1..3`/`TUPLE`, `EMPTY_DICT` + `SETITEMS`), without
//! memo opcodes: values written here share no references. `bytes` are refused
//! because protocol 2 can only express them through a `_codecs` global.

use super::value::PyValue;
use super::{OfflineError, Result};

/// Pickle a value with protocol 2 (the protocol `torch.save` uses by default).
pub fn to_pickle(value: &PyValue) -> Result<Vec<u8>> {
    let mut out = vec![0x80, 2];
    write_value(&mut out, value, 0)?;
    out.push(b'.');
    Ok(out)
}

const WRITE_MAX_DEPTH: usize = 64;

fn write_value(out: &mut Vec<u8>, v: &PyValue, depth: usize) -> Result<()> {
    if depth > WRITE_MAX_DEPTH {
        return Err(OfflineError::Unpicklable { reason: format!("nesting deeper than {WRITE_MAX_DEPTH}") });
    }
    match v {
        PyValue::None => out.push(b'N'),
        PyValue::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        PyValue::Int(i) => write_int(out, *i),
        PyValue::BigInt(b) => write_long1(out, b)?,
        PyValue::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        PyValue::Str(s) => {
            let n = u32::try_from(s.len())
                .map_err(|_| OfflineError::Unpicklable { reason: "string longer than 4 GiB".into() })?;
            out.push(b'X');
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        PyValue::Bytes(_) => {
            return Err(OfflineError::Unpicklable {
                reason: "bytes need protocol 3+ or a codecs global; not written".into(),
            })
        }
        PyValue::List(items) => write_list(out, items, depth)?,
        PyValue::Tuple(items) => write_tuple(out, items, depth)?,
        PyValue::Dict(pairs) => write_dict(out, pairs, depth)?,
    }
    Ok(())
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if let Ok(b) = u8::try_from(i) {
        out.extend_from_slice(&[b'K', b]);
    } else if let Ok(s) = u16::try_from(i) {
        out.push(b'M');
        out.extend_from_slice(&s.to_le_bytes());
    } else if let Ok(w) = i32::try_from(i) {
        out.push(b'J');
        out.extend_from_slice(&w.to_le_bytes());
    } else {
        // Minimal two's-complement length, as Python writes LONG1.
        let bytes = i.to_le_bytes();
        let mut n = 8;
        while n > 1 {
            let top = bytes[n - 1];
            let next_sign = bytes[n - 2] & 0x80;
            if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.extend_from_slice(&[0x8a, n as u8]);
        out.extend_from_slice(&bytes[..n]);
    }
}

fn write_long1(out: &mut Vec<u8>, b: &[u8]) -> Result<()> {
    let n =
        u8::try_from(b.len()).map_err(|_| OfflineError::Unpicklable { reason: "int wider than 255 bytes".into() })?;
    out.extend_from_slice(&[0x8a, n]);
    out.extend_from_slice(b);
    Ok(())
}

fn write_list(out: &mut Vec<u8>, items: &[PyValue], depth: usize) -> Result<()> {
    out.push(b']');
    // Python batches APPENDS by 1000 items.
    for chunk in items.chunks(1000) {
        out.push(b'(');
        for it in chunk {
            write_value(out, it, depth + 1)?;
        }
        out.push(b'e');
    }
    Ok(())
}

fn write_tuple(out: &mut Vec<u8>, items: &[PyValue], depth: usize) -> Result<()> {
    if items.is_empty() {
        out.push(b')');
        return Ok(());
    }
    let short = items.len() <= 3;
    if !short {
        out.push(b'(');
    }
    for it in items {
        write_value(out, it, depth + 1)?;
    }
    out.push(if short { 0x84 + items.len() as u8 } else { b't' });
    Ok(())
}

fn write_dict(out: &mut Vec<u8>, pairs: &[(PyValue, PyValue)], depth: usize) -> Result<()> {
    out.push(b'}');
    for chunk in pairs.chunks(1000) {
        out.push(b'(');
        for (k, v) in chunk {
            write_value(out, k, depth + 1)?;
            write_value(out, v, depth + 1)?;
        }
        out.push(b'u');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::pickle::unpickle;

    fn roundtrip(v: &PyValue) -> PyValue {
        let bytes = to_pickle(v).expect("pickle");
        let (back, used) = unpickle(&bytes).expect("unpickle");
        assert_eq!(used, bytes.len());
        back
    }

    #[test]
    fn ints_roundtrip_at_encoding_boundaries() {
        for i in [
            0i64,
            255,
            256,
            65535,
            65536,
            -1,
            -129,
            i64::from(i32::MAX),
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(roundtrip(&PyValue::Int(i)), PyValue::Int(i), "{i}");
        }
    }

    #[test]
    fn long1_matches_python_bytes() {
        // Python: pickle.dumps(2**31, 2) -> 80 02 8a 05 00 00 00 80 00 2e
        let b = to_pickle(&PyValue::Int(1 << 31)).unwrap();
        assert_eq!(b, [0x80, 2, 0x8a, 5, 0, 0, 0, 0x80, 0, b'.']);
        // Python: pickle.dumps(-2**31 - 1, 2) -> 8a 05 ff ff ff 7f ff
        let b = to_pickle(&PyValue::Int(-(1i64 << 31) - 1)).unwrap();
        assert_eq!(&b[2..9], [0x8a, 5, 0xff, 0xff, 0xff, 0x7f, 0xff]);
    }

    #[test]
    fn nested_values_roundtrip() {
        let v = PyValue::List(vec![
            PyValue::Tuple(vec![]),
            PyValue::Tuple(vec![PyValue::Int(1)]),
            PyValue::Tuple((0..5).map(PyValue::Int).collect()),
            PyValue::Dict(vec![(PyValue::Str("k".into()), PyValue::Float(-0.5))]),
            PyValue::None,
            PyValue::Bool(true),
            PyValue::Bool(false),
            PyValue::Str("ünïcode".into()),
            PyValue::List((0..2500).map(PyValue::Int).collect()),
        ]);
        assert_eq!(roundtrip(&v), v);
    }
}
