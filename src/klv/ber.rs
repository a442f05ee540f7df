//! BER lengths and BER-OID integers as used by SMPTE 336 KLV and MISB ST 0601.
//!
//! - Length (X.690 definite form): one byte `< 0x80` is the length itself (short form);
//!   `0x80 | n` is followed by `n` big-endian length bytes (long form). The indefinite
//!   form (`0x80` alone) is not allowed in KLV and is rejected; so are lengths needing more
//!   than 8 bytes.
//! - BER-OID (tag numbers, list items): base-128 big-endian, high bit set on every byte but
//!   the last. At most 10 bytes, must fit in `u64`.
//!
//! Hostile input: [`read_length_checked`] rejects a length larger than the bytes that
//! remain, so callers never slice or allocate beyond what is present.

use super::{KlvError, Result};

/// Reads a BER length at the start of `data`: returns (length, bytes consumed).
pub fn read_length(data: &[u8]) -> Result<(usize, usize)> {
    let first = *data.first().ok_or(KlvError::Truncated { what: "BER length", needed: 1, available: 0 })?;
    if first < 0x80 {
        return Ok((first as usize, 1));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 {
        return Err(KlvError::BadBer { what: "length", reason: "indefinite form (0x80) is not allowed in KLV" });
    }
    if n > 8 {
        return Err(KlvError::BadBer { what: "length", reason: "long form with more than 8 length bytes" });
    }
    let bytes = super::take(data, 1, n, "BER long-form length")?;
    let value = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64);
    let value = usize::try_from(value)
        .map_err(|_| KlvError::BadBer { what: "length", reason: "length does not fit in memory addresses" })?;
    Ok((value, 1 + n))
}

/// Reads a BER length and checks that `length` bytes follow it in `data`.
pub fn read_length_checked(data: &[u8]) -> Result<(usize, usize)> {
    let (len, used) = read_length(data)?;
    let available = data.len() - used;
    if len > available {
        return Err(KlvError::Truncated {
            what: "value (declared BER length exceeds remaining bytes)",
            needed: len,
            available,
        });
    }
    Ok((len, used))
}

/// Appends the shortest BER encoding of `len` (short form below 128).
pub fn write_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = (len as u64).to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (8 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Reads a BER-OID integer at the start of `data`: returns (value, bytes consumed).
pub fn read_oid(data: &[u8]) -> Result<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &b) in data.iter().enumerate() {
        if i >= 10 || value > (u64::MAX >> 7) {
            return Err(KlvError::BadBer { what: "OID", reason: "value overflows 64 bits" });
        }
        value = (value << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(KlvError::Truncated { what: "BER-OID", needed: data.len() + 1, available: data.len() })
}

/// Appends the BER-OID encoding of `value`.
pub fn write_oid(value: u64, out: &mut Vec<u8>) {
    let mut groups = [0u8; 10];
    let mut n = 0;
    let mut v = value;
    loop {
        groups[n] = (v & 0x7f) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        let more = if i > 0 { 0x80 } else { 0 };
        out.push(groups[i] | more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_form_lengths() {
        assert_eq!(read_length(&[0x00]).unwrap(), (0, 1));
        assert_eq!(read_length(&[0x7f]).unwrap(), (127, 1));
        assert_eq!(read_length(&[0x81, 0x80]).unwrap(), (128, 2));
        // The real sample's first packet: 0x82 0x09 0x63 = 2403 bytes.
        assert_eq!(read_length(&[0x82, 0x09, 0x63]).unwrap(), (2403, 3));
        // Long form may carry leading zeros (non-minimal but legal).
        assert_eq!(read_length(&[0x84, 0, 0, 0, 5]).unwrap(), (5, 5));
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(matches!(read_length(&[]), Err(KlvError::Truncated { .. })));
        assert!(matches!(read_length(&[0x80]), Err(KlvError::BadBer { .. })));
        assert!(matches!(read_length(&[0x89; 10]), Err(KlvError::BadBer { .. })));
        assert!(matches!(read_length(&[0x82, 0x01]), Err(KlvError::Truncated { .. })));
        // Hostile: declares 2^63 bytes; must fail without allocating.
        let hostile = [0x88, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        assert!(matches!(read_length_checked(&hostile), Err(KlvError::Truncated { .. })));
        assert!(read_length_checked(&[0x03, 1, 2]).is_err());
        assert_eq!(read_length_checked(&[0x02, 1, 2]).unwrap(), (2, 1));
    }

    #[test]
    fn length_round_trip_and_minimal_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536, 1 << 24] {
            let mut out = Vec::new();
            write_length(len, &mut out);
            assert_eq!(read_length(&out).unwrap(), (len, out.len()));
        }
        let mut out = Vec::new();
        write_length(300, &mut out);
        assert_eq!(out, [0x82, 0x01, 0x2c]);
    }

    #[test]
    fn oid_values() {
        assert_eq!(read_oid(&[0x05]).unwrap(), (5, 1));
        // 144 = 0b1_0010000 -> 0x81 0x10 (ST 0601 tags above 127 use two bytes).
        assert_eq!(read_oid(&[0x81, 0x10]).unwrap(), (144, 2));
        assert_eq!(read_oid(&[0x81, 0x00]).unwrap(), (128, 2));
        assert!(matches!(read_oid(&[0x81]), Err(KlvError::Truncated { .. })));
        assert!(matches!(read_oid(&[0xff; 11]), Err(KlvError::BadBer { .. })));
        for v in [0u64, 1, 127, 128, 142, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            write_oid(v, &mut out);
            assert_eq!(read_oid(&out).unwrap(), (v, out.len()), "value {v}");
        }
    }
}
