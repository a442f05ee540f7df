//! MISB ST 1201.4 IMAPB: floating point values mapped onto `len`-byte unsigned integers.
//!
//! For a range `[a, b]` and a length of `L` bytes (ST 1201 §8.1.1):
//! - `bPow = ceil(log2(b - a))`, `dPow = 8L - 1`
//! - `sF = 2^(dPow - bPow)` (forward scale), `sR = 2^(bPow - dPow)` (reverse scale)
//! - `zOffset = sF*a - floor(sF*a)` when `a < 0` and `sF*a` is not an integer, else 0,
//!   so that zero is exactly representable.
//! - forward: `y = trunc(sF*(x - a) + zOffset)`; reverse: `x = sR*(y - zOffset) + a`.
//!
//! Both directions are computed here in an algebraically equal form that is exact in
//! binary floating point (`sF`, `sR` are powers of two): `y = floor(sF*x) - floor(sF*a)`
//! and `x = sR*(y + floor(sF*a))` when `a < 0`.
//!
//! Values with the most significant bit set are outside `[a, b]` by construction and
//! carry special values (ST 1201 Table 2): top bits `11001` +∞, `11101` −∞,
//! `11010`/`11110` quiet NaN, `11011`/`11111` signalling NaN; the others are reserved or
//! user defined. One quantisation step is `sR`.

use super::{KlvError, Result};

/// A decoded IMAPB value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ImapbValue {
    Finite(f64),
    PosInfinity,
    NegInfinity,
    NaN,
    /// A special pattern that ST 1201 reserves or leaves to users (raw integer kept).
    Reserved(u64),
}

/// An IMAPB mapping for one range and length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Imapb {
    min: f64,
    max: f64,
    len: usize,
    /// `floor(sF*a)` when `a < 0`, else 0 (see module docs).
    floor_sfa: f64,
    sf: f64,
    sr: f64,
}

impl Imapb {
    /// Mapping of `[min, max]` onto `len` bytes (1..=8).
    pub fn new(min: f64, max: f64, len: usize) -> Result<Self> {
        let bad = || KlvError::BadImapb { min, max, len };
        if !min.is_finite() || !max.is_finite() || min >= max || !(1..=8).contains(&len) {
            return Err(bad());
        }
        let b_pow = (max - min).log2().ceil() as i32;
        let d_pow = 8 * len as i32 - 1;
        let sf = 2f64.powi(d_pow - b_pow);
        let sr = 2f64.powi(b_pow - d_pow);
        let floor_sfa = if min < 0.0 { (sf * min).floor() } else { 0.0 };
        Ok(Self { min, max, len, floor_sfa, sf, sr })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One quantisation step (`sR`), in the value's unit.
    pub fn step(&self) -> f64 {
        self.sr
    }

    /// Forward mapping of a finite `x` in `[min, max]` to its integer.
    pub fn forward(&self, x: f64) -> Option<u64> {
        if !(x >= self.min && x <= self.max) {
            return None;
        }
        let y =
            if self.min < 0.0 { (self.sf * x).floor() - self.floor_sfa } else { (self.sf * (x - self.min)).floor() };
        Some(y as u64)
    }

    /// Reverse mapping of the integer `y` (special values decoded).
    pub fn reverse(&self, y: u64) -> ImapbValue {
        let bits = 8 * self.len as u32;
        let msb = 1u64 << (bits - 1);
        if y & msb != 0 {
            return special(y >> (bits - 5), y);
        }
        let yf = y as f64;
        if self.min < 0.0 {
            ImapbValue::Finite(self.sr * (yf + self.floor_sfa))
        } else {
            ImapbValue::Finite(self.sr * yf + self.min)
        }
    }

    /// Encodes a value to exactly `len` big-endian bytes.
    pub fn encode(&self, v: ImapbValue) -> Option<Vec<u8>> {
        let top5: u64 = match v {
            ImapbValue::Finite(x) => {
                let y = self.forward(x)?;
                return Some(be_bytes(y, self.len));
            }
            ImapbValue::PosInfinity => 0b11001,
            ImapbValue::NegInfinity => 0b11101,
            ImapbValue::NaN => 0b11010,
            ImapbValue::Reserved(y) => return Some(be_bytes(y, self.len)),
        };
        Some(be_bytes(top5 << (8 * self.len - 5), self.len))
    }

    /// Decodes big-endian bytes (any length 1..=8 is read with this range).
    pub fn decode(min: f64, max: f64, bytes: &[u8]) -> Result<ImapbValue> {
        let m = Self::new(min, max, bytes.len())?;
        Ok(m.reverse(be_uint(bytes)))
    }
}

fn special(top5: u64, y: u64) -> ImapbValue {
    match top5 {
        0b11001 => ImapbValue::PosInfinity,
        0b11101 => ImapbValue::NegInfinity,
        0b11010 | 0b11110 | 0b11011 | 0b11111 => ImapbValue::NaN,
        _ => ImapbValue::Reserved(y),
    }
}

/// Big-endian unsigned integer of up to 8 bytes.
pub(crate) fn be_uint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// The low `len` bytes of `v`, big-endian.
pub(crate) fn be_bytes(v: u64, len: usize) -> Vec<u8> {
    v.to_be_bytes()[8 - len..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        // Tag 103 Density Altitude Extended, [-900, 40000], 3 bytes:
        // b-a = 40900 -> bPow = 16, dPow = 23, sF = 2^7 = 128, sF*a = -115200 (integer, so
        // zOffset = 0). x = 23456.234375 -> y = 128 * 24356.234375 = 3117598 = 0x2F921E.
        let m = Imapb::new(-900.0, 40000.0, 3).unwrap();
        assert_eq!(m.forward(23456.234375), Some(3_117_598));
        assert_eq!(m.encode(ImapbValue::Finite(23456.234375)).unwrap(), [0x2f, 0x92, 0x1e]);
        assert_eq!(m.reverse(3_117_598), ImapbValue::Finite(23456.234375));
        assert_eq!(m.step(), 1.0 / 128.0);
        // Zero maps to y = 115200 exactly.
        assert_eq!(m.forward(0.0), Some(115_200));
        assert_eq!(m.reverse(115_200), ImapbValue::Finite(0.0));

        // Tag 112 Platform Course Angle, [0, 360], 2 bytes: bPow = 9, dPow = 15, sF = 64.
        // x = 125 -> y = 8000 = 0x1F40.
        let m = Imapb::new(0.0, 360.0, 2).unwrap();
        assert_eq!(m.forward(125.0), Some(8000));
        assert_eq!(m.reverse(0x1f40), ImapbValue::Finite(125.0));

        // Non-integer sF*a: [-0.1, 0.9], 1 byte: b-a = 1 -> bPow = 0, dPow = 7, sF = 128,
        // sF*a = -12.8, zOffset = -12.8 - (-13) = 0.2. x = 0.3 -> y = trunc(128*0.4 + 0.2)
        // = trunc(51.4) = 51; reverse: (51 - 0.2)/128 - 0.1 = 0.296875. x = 0 -> y = 13.
        let m = Imapb::new(-0.1, 0.9, 1).unwrap();
        assert_eq!(m.forward(0.3), Some(51));
        match m.reverse(51) {
            ImapbValue::Finite(x) => assert!((x - 0.296875).abs() < 1e-15, "{x}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.forward(0.0), Some(13));
        assert_eq!(m.reverse(13), ImapbValue::Finite(0.0));
    }

    #[test]
    fn special_values() {
        let m = Imapb::new(0.0, 360.0, 2).unwrap();
        assert_eq!(m.encode(ImapbValue::PosInfinity).unwrap(), [0xc8, 0x00]);
        assert_eq!(m.encode(ImapbValue::NegInfinity).unwrap(), [0xe8, 0x00]);
        assert_eq!(m.reverse(0xc800), ImapbValue::PosInfinity);
        assert_eq!(m.reverse(0xe800), ImapbValue::NegInfinity);
        assert_eq!(m.reverse(0xd000), ImapbValue::NaN);
        assert_eq!(m.reverse(0xf800), ImapbValue::NaN);
        assert_eq!(m.reverse(0x8001), ImapbValue::Reserved(0x8001));
        assert_eq!(m.forward(360.5), None);
        assert_eq!(m.forward(f64::NAN), None);
    }

    #[test]
    fn round_trip_within_one_step() {
        for (a, b, len) in [(-900.0, 40000.0, 2), (0.0, 1.5e6, 3), (-1000.0, 1000.0, 4)] {
            let m = Imapb::new(a, b, len).unwrap();
            for i in 0..=100 {
                let x = a + (b - a) * i as f64 / 100.0;
                let bytes = m.encode(ImapbValue::Finite(x)).unwrap();
                match Imapb::decode(a, b, &bytes).unwrap() {
                    ImapbValue::Finite(r) => assert!((r - x).abs() <= m.step(), "{x} {r}"),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(Imapb::new(1.0, 1.0, 2).is_err());
        assert!(Imapb::new(0.0, 1.0, 9).is_err());
        assert!(Imapb::new(0.0, 1.0, 0).is_err());
    }
}
