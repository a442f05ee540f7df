//! Value codec: bytes of one tag ↔ [`TagValue`], driven by the tag table's [`Format`].
//!
//! Decoding never fails: bytes that do not fit the tag's format become
//! [`TagValue::Malformed`] (raw bytes kept), unknown tags become [`TagValue::Bytes`].
//! Encoding fails with [`KlvError::Encode`] when a value has the wrong type or lies
//! outside the format's range. Raw [`TagValue::Bytes`] are accepted for every tag so a
//! decoded packet can be written back unchanged.

use super::ber;
use super::imapb::{be_bytes, be_uint, Imapb};
use super::tags::{spec, Format, Sentinel, TagValue};
use super::{KlvError, Result};

/// Decodes the value bytes of `tag`.
pub fn decode_value(tag: u32, bytes: &[u8]) -> TagValue {
    let Some(s) = spec(tag) else {
        return TagValue::Bytes(bytes.to_vec());
    };
    decode_format(s.format, bytes).unwrap_or_else(|| TagValue::Malformed(bytes.to_vec()))
}

fn decode_format(format: Format, b: &[u8]) -> Option<TagValue> {
    let n = b.len();
    let value = match format {
        Format::Uint { len } if (1..=len).contains(&n) => TagValue::UInt(be_uint(b)),
        Format::Int { len } if (1..=len).contains(&n) => TagValue::Int(be_int(b)),
        Format::Text => TagValue::Text(String::from_utf8_lossy(b).into_owned()),
        Format::UMap { len, min, max } if n == len => {
            TagValue::Float(min + be_uint(b) as f64 * (max - min) / umax(len))
        }
        Format::SMap { len, max } if n == len => {
            let s = be_int(b);
            if s == i64::MIN >> (64 - 8 * len) {
                TagValue::Sentinel(Sentinel::OutOfRange)
            } else {
                TagValue::Float(s as f64 * max / smax(len))
            }
        }
        Format::Imapb { min, max, .. } if (1..=8).contains(&n) => Imapb::decode(min, max, b).ok()?.into(),
        Format::Flags { len } if (1..=len).contains(&n) => {
            let v = be_uint(b);
            TagValue::List((0..64).filter(|i| v >> i & 1 == 1).collect())
        }
        Format::OidList => TagValue::List(read_oids(b)?),
        Format::FrameRate => {
            let items = read_oids(b)?;
            match items[..] {
                [num] => TagValue::Rational { num, den: 1 },
                [num, den] => TagValue::Rational { num, den },
                _ => return None,
            }
        }
        Format::LocalSet | Format::Bytes => TagValue::Bytes(b.to_vec()),
        _ => return None,
    };
    Some(value)
}

/// The quantisation step of a numeric tag whose value had `len` bytes (None for
/// non-numeric formats). Plain integers have step 1.
pub fn step(tag: u32, len: usize) -> Option<f64> {
    match spec(tag)?.format {
        Format::Uint { .. } | Format::Int { .. } => Some(1.0),
        Format::UMap { len, min, max } => Some((max - min) / umax(len)),
        Format::SMap { len, max } => Some(max / smax(len)),
        Format::Imapb { min, max, .. } => Imapb::new(min, max, len).ok().map(|m| m.step()),
        _ => None,
    }
}

/// Encodes `value` as the value bytes of `tag`.
pub fn encode_value(tag: u32, value: &TagValue) -> Result<Vec<u8>> {
    if let TagValue::Bytes(b) | TagValue::Malformed(b) = value {
        return Ok(b.clone());
    }
    let s = spec(tag).ok_or_else(|| err(tag, "unknown tags take raw Bytes only".into()))?;
    encode_format(s.format, value).map_err(|reason| err(tag, reason))
}

fn encode_format(format: Format, value: &TagValue) -> std::result::Result<Vec<u8>, String> {
    let bad = || format!("{value:?} as {format:?}");
    match (format, value) {
        (Format::Uint { len }, TagValue::UInt(u)) if fits_u(*u, len) => Ok(be_bytes(*u, len)),
        (Format::Int { len }, TagValue::Int(i)) if fits_i(*i, len) => Ok(be_bytes(*i as u64, len)),
        (Format::Text, TagValue::Text(s)) => Ok(s.as_bytes().to_vec()),
        (Format::UMap { len, min, max }, TagValue::Float(x)) if (min..=max).contains(x) => {
            let u = ((x - min) * umax(len) / (max - min)).round() as u64;
            Ok(be_bytes(u, len))
        }
        (Format::SMap { len, max }, TagValue::Float(x)) if (-max..=max).contains(x) => {
            let s = (x * smax(len) / max).round() as i64;
            Ok(be_bytes(s as u64, len))
        }
        (Format::SMap { len, .. }, TagValue::Sentinel(Sentinel::OutOfRange)) => {
            Ok(be_bytes(1u64 << (8 * len - 1), len))
        }
        (Format::Imapb { min, max, len }, v) => encode_imapb(min, max, len, v).ok_or_else(bad),
        (Format::Flags { len }, TagValue::List(bits)) => encode_flags(bits, len).ok_or_else(bad),
        (Format::OidList, TagValue::List(items)) => {
            let mut out = Vec::new();
            items.iter().for_each(|&i| ber::write_oid(i, &mut out));
            Ok(out)
        }
        (Format::FrameRate, TagValue::Rational { num, den }) => {
            let mut out = Vec::new();
            ber::write_oid(*num, &mut out);
            ber::write_oid(*den, &mut out);
            Ok(out)
        }
        _ => Err(bad()),
    }
}

fn encode_imapb(min: f64, max: f64, len: usize, v: &TagValue) -> Option<Vec<u8>> {
    use super::imapb::ImapbValue as I;
    let m = Imapb::new(min, max, len).ok()?;
    let iv = match v {
        TagValue::Float(x) => I::Finite(*x),
        TagValue::Sentinel(Sentinel::PosInfinity) => I::PosInfinity,
        TagValue::Sentinel(Sentinel::NegInfinity) => I::NegInfinity,
        TagValue::Sentinel(Sentinel::NaN) => I::NaN,
        _ => return None,
    };
    m.encode(iv)
}

/// Bit positions → the shortest big-endian bit field (at least one byte, at most `len`).
fn encode_flags(bits: &[u64], len: usize) -> Option<Vec<u8>> {
    let mut v = 0u64;
    for &b in bits {
        if b >= 8 * len as u64 {
            return None;
        }
        v |= 1 << b;
    }
    let used = (8 - v.leading_zeros() as usize / 8).max(1);
    Some(be_bytes(v, used))
}

fn read_oids(mut b: &[u8]) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (v, used) = ber::read_oid(b).ok()?;
        out.push(v);
        b = &b[used..];
    }
    (!out.is_empty()).then_some(out)
}

/// Sign-extended big-endian integer of 1..=8 bytes.
fn be_int(b: &[u8]) -> i64 {
    let shift = 64 - 8 * b.len() as u32;
    ((be_uint(b) << shift) as i64) >> shift
}

/// `2^(8 len) - 1`: the largest unsigned value of `len` bytes.
fn umax(len: usize) -> f64 {
    2f64.powi(8 * len as i32) - 1.0
}

/// `2^(8 len - 1) - 1`: the largest signed value of `len` bytes.
fn smax(len: usize) -> f64 {
    2f64.powi(8 * len as i32 - 1) - 1.0
}

fn fits_u(u: u64, len: usize) -> bool {
    len >= 8 || u >> (8 * len) == 0
}

fn fits_i(i: i64, len: usize) -> bool {
    let bits = 8 * len as u32;
    bits >= 64 || (i >= -(1i64 << (bits - 1)) && i < (1i64 << (bits - 1)))
}

fn err(tag: u32, reason: String) -> KlvError {
    KlvError::Encode { tag, name: spec(tag).map_or("Unknown tag", |s| s.name), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn st0601_example_values() {
        // Bytes and KWIVER's values from the first packet of tests/fixtures/klv/h264_klv.ts
        // (the ST 0601 example packet): heading 0x71C2 -> 159.9744 deg; pitch 0xFD3D ->
        // -0.4315 deg; sensor latitude 0x5595B66D -> 60.17682 deg; relative elevation
        // 0x87F84B86 -> -168.7923 deg; frame centre latitude 0xF101A229 -> -10.5424 deg.
        let f = |tag, b: &[u8]| decode_value(tag, b).as_f64().unwrap();
        assert!((f(5, &[0x71, 0xc2]) - 159.974_364_843_213_6).abs() < 1e-9);
        assert!((f(6, &[0xfd, 0x3d]) - -0.431_531_723_990_6).abs() < 1e-9);
        assert!((f(13, &[0x55, 0x95, 0xb6, 0x6d]) - 60.176_822_966_978_3).abs() < 1e-9);
        assert!((f(19, &[0x87, 0xf8, 0x4b, 0x86]) - -168.792_324_833_940_85).abs() < 1e-9);
        assert!((f(23, &[0xf1, 0x01, 0xa2, 0x29]) - -10.542_388_633_146_132).abs() < 1e-9);
        // Sentinels and malformed values.
        assert_eq!(decode_value(6, &[0x80, 0x00]), TagValue::Sentinel(Sentinel::OutOfRange));
        assert_eq!(decode_value(5, &[1, 2, 3]), TagValue::Malformed(vec![1, 2, 3]));
        assert_eq!(decode_value(2, &[]), TagValue::Malformed(vec![]));
        assert_eq!(decode_value(39, &[0xfe]), TagValue::Int(-2));
        assert_eq!(decode_value(139, &[0x0b]), TagValue::List(vec![0, 1, 3]));
        assert_eq!(decode_value(116, &[3, 0x81, 0x00]), TagValue::List(vec![3, 128]));
        assert_eq!(decode_value(127, &[0x83, 0xd4, 0x60, 0x87, 0x69]), TagValue::Rational { num: 60000, den: 1001 });
        assert_eq!(decode_value(300, &[9]), TagValue::Bytes(vec![9]));
    }

    #[test]
    fn encode_rejects_bad_values() {
        assert!(encode_value(5, &TagValue::Float(361.0)).is_err());
        assert!(encode_value(5, &TagValue::Text("x".into())).is_err());
        assert!(encode_value(8, &TagValue::UInt(256)).is_err());
        assert!(encode_value(39, &TagValue::Int(-129)).is_err());
        assert!(encode_value(47, &TagValue::List(vec![8])).is_err());
        assert!(encode_value(300, &TagValue::UInt(1)).is_err());
        assert_eq!(encode_value(6, &TagValue::Sentinel(Sentinel::OutOfRange)).unwrap(), [0x80, 0x00]);
        assert_eq!(encode_value(39, &TagValue::Int(-2)).unwrap(), [0xfe]);
        assert_eq!(encode_value(139, &TagValue::List(vec![0, 9])).unwrap(), [0x02, 0x01]);
    }
}
