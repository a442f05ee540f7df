//! MPEG-2 systems (ISO/IEC 13818-1) helpers: PES header parsing, the CRC-32 of PSI
//! sections, 33-bit PTS fields, and unwrapping of PTS across its 2^33 wrap (about 26.5 hours at 90 kHz).

/// 33-bit PTS/DTS from its 5-byte field.
pub fn read_timestamp(b: &[u8; 5]) -> u64 {
    (((b[0] >> 1) & 0x07) as u64) << 30
        | (b[1] as u64) << 22
        | ((b[2] >> 1) as u64) << 15
        | (b[3] as u64) << 7
        | (b[4] >> 1) as u64
}

/// Parses a PES packet (or its first bytes): (PTS, payload up to the declared length).
/// None when the header is malformed or does not fit.
pub(crate) fn parse_pes(data: &[u8]) -> Option<(Option<u64>, &[u8])> {
    if data.len() < 6 || data[..3] != [0, 0, 1] {
        return None;
    }
    let stream_id = data[3];
    let declared = u16::from_be_bytes([data[4], data[5]]) as usize;
    let end = if declared == 0 { data.len() } else { (6 + declared).min(data.len()) };
    let no_header = matches!(stream_id, 0xbc | 0xbe | 0xbf | 0xf0 | 0xf1 | 0xf2 | 0xf8 | 0xff);
    if no_header {
        return Some((None, &data[6..end]));
    }
    let header_len = *data.get(8)? as usize;
    let start = 9 + header_len;
    if start > end {
        return None;
    }
    let pts =
        if data[7] & 0x80 != 0 && header_len >= 5 { Some(read_timestamp(data[9..14].try_into().ok()?)) } else { None };
    Some((pts, &data[start..end]))
}

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init all ones, no reflection). Over a whole section
/// including its CRC field the result is 0.
pub fn crc32_mpeg(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}

/// Unwraps 33-bit PTS values into a monotonic-ish 64-bit timeline (handles the wrap every
/// 2^33 ticks, about 26.5 hours, and small backward steps).
#[derive(Debug, Clone, Copy, Default)]
pub struct PtsUnwrap {
    last: Option<u64>,
}

impl PtsUnwrap {
    const WRAP: u64 = 1 << 33;

    /// The unwrapped value of `pts` (taken modulo 2^33), the one closest to the last.
    pub fn unwrap(&mut self, pts: u64) -> u64 {
        let pts = pts % Self::WRAP;
        let value = match self.last {
            None => pts,
            Some(last) => {
                let base = last - last % Self::WRAP;
                [base.wrapping_sub(Self::WRAP), base, base + Self::WRAP]
                    .into_iter()
                    .filter(|b| *b <= u64::MAX - Self::WRAP)
                    .map(|b| b + pts)
                    .min_by_key(|&c| c.abs_diff(last))
                    .unwrap_or(pts)
            }
        };
        self.last = Some(value);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pts_unwrap_across_wrap() {
        let mut u = PtsUnwrap::default();
        assert_eq!(u.unwrap((1 << 33) - 3000), (1 << 33) - 3000);
        assert_eq!(u.unwrap(1000), (1 << 33) + 1000);
        assert_eq!(u.unwrap(500), (1 << 33) + 500); // small step back stays in this cycle
    }

    #[test]
    fn pes_headers() {
        // PES with PTS 90000 (0x21 0x00 0x05 0xbf 0x21), declared length 8 + 2 payload.
        let pes = [0, 0, 1, 0xbd, 0, 10, 0x84, 0x80, 5, 0x21, 0x00, 0x05, 0xbf, 0x21, 7, 8, 9];
        assert_eq!(parse_pes(&pes), Some((Some(90_000), &[7u8, 8][..])));
        // No PTS flag; header length pointing past the end; wrong start code.
        let no_pts = [0, 0, 1, 0xbd, 0, 0, 0x84, 0x00, 0, 1, 2];
        assert_eq!(parse_pes(&no_pts), Some((None, &[1u8, 2][..])));
        assert_eq!(parse_pes(&[0, 0, 1, 0xbd, 0, 0, 0x84, 0x80, 9, 0]), None);
        assert_eq!(parse_pes(&[0, 0, 2, 0xbd, 0, 0]), None);
    }

    #[test]
    fn crc_check_value() {
        // CRC-32/MPEG-2 check value of "123456789".
        assert_eq!(crc32_mpeg(b"123456789"), 0x0376_e6e7);
    }
}
