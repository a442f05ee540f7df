//! MISB ST 0601 UAS Datalink Local Set packets: decode, encode, checksum, report-on-change.
//!
//! A packet is `key (16 bytes) | BER length | items`, each item `BER-OID tag | BER length
//! | value`. The key is [`UAS_LS_KEY`]. The last item must be tag 1, the checksum: a 16-bit
//! running sum over every byte of the packet from the first key byte up to and including
//! the checksum item's length byte, where bytes at even offsets from the key start go in
//! the high byte (`sum += byte << (8 * ((i + 1) % 2))`). Verified against the real sample
//! in tests/fixtures/klv.
//!
//! Rejected packets (wrong key, bad lengths, missing or wrong checksum) give a typed
//! [`KlvError`]; the caller counts them (see [`super::json::DumpStats`]).
//!
//! ST 0601 senders may omit tags whose value did not change ("report on change"):
//! [`ReportOnChange`] keeps the last value of every tag of one stream and fills them in.

use std::collections::BTreeMap;

use super::ber;
use super::codec::{decode_value, encode_value};
use super::tags::{Tag, TagValue};
use super::{KlvError, Result};

/// The 16-byte Universal Label of the UAS Datalink Local Set.
pub const UAS_LS_KEY: [u8; 16] =
    [0x06, 0x0E, 0x2B, 0x34, 0x02, 0x0B, 0x01, 0x01, 0x0E, 0x01, 0x03, 0x01, 0x01, 0x00, 0x00, 0x00];

/// Tag numbers used by the geo-registration code.
pub mod tag {
    pub const CHECKSUM: u32 = 1;
    pub const PRECISION_TIME_STAMP: u32 = 2;
    pub const PLATFORM_HEADING: u32 = 5;
    pub const PLATFORM_PITCH: u32 = 6;
    pub const PLATFORM_ROLL: u32 = 7;
    pub const SENSOR_LATITUDE: u32 = 13;
    pub const SENSOR_LONGITUDE: u32 = 14;
    pub const SENSOR_TRUE_ALTITUDE: u32 = 15;
    pub const SENSOR_HFOV: u32 = 16;
    pub const SENSOR_VFOV: u32 = 17;
    pub const SENSOR_REL_AZIMUTH: u32 = 18;
    pub const SENSOR_REL_ELEVATION: u32 = 19;
    pub const SENSOR_REL_ROLL: u32 = 20;
    pub const SLANT_RANGE: u32 = 21;
    pub const FRAME_CENTER_LATITUDE: u32 = 23;
    pub const FRAME_CENTER_LONGITUDE: u32 = 24;
    pub const FRAME_CENTER_ELEVATION: u32 = 25;
    pub const UAS_LS_VERSION: u32 = 65;
    pub const SENSOR_ELLIPSOID_HEIGHT: u32 = 75;
    pub const PLATFORM_PITCH_FULL: u32 = 90;
    pub const PLATFORM_ROLL_FULL: u32 = 91;
}

/// One decoded ST 0601 packet; `tags` in the order they appear (checksum excluded).
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub tags: Vec<Tag>,
    /// The checksum carried by tag 1 (already verified).
    pub checksum: u16,
}

impl Packet {
    /// The first item with tag number `tag`.
    pub fn get(&self, tag: u32) -> Option<&Tag> {
        self.tags.iter().find(|t| t.tag == tag)
    }

    /// Tag 2, microseconds since 1970-01-01 (MISB precision time).
    pub fn timestamp_us(&self) -> Option<u64> {
        match self.get(tag::PRECISION_TIME_STAMP)?.value {
            TagValue::UInt(u) => Some(u),
            _ => None,
        }
    }
}

/// The ST 0601 checksum of `bytes` (pass the packet without its last two bytes).
pub fn checksum(bytes: &[u8]) -> u16 {
    bytes.iter().enumerate().fold(0u16, |sum, (i, &b)| sum.wrapping_add((b as u16) << (8 * ((i + 1) % 2))))
}

/// Splits the KLV packet at the start of `data` (any 16-byte key): returns (packet, rest).
pub fn split_klv(data: &[u8]) -> Result<(&[u8], &[u8])> {
    super::take(data, 0, 16, "KLV key")?;
    let (len, used) = ber::read_length_checked(&data[16..])?;
    let end = 16 + used + len;
    Ok(data.split_at(end))
}

/// Decodes exactly one ST 0601 packet (key through checksum), verifying the checksum.
pub fn decode_packet(data: &[u8]) -> Result<Packet> {
    let (packet, rest) = split_klv(data)?;
    if packet[..16] != UAS_LS_KEY {
        return Err(KlvError::WrongKey { got: hex(&packet[..16]) });
    }
    if !rest.is_empty() {
        return Err(KlvError::Trailing { extra: rest.len() });
    }
    let n = packet.len();
    let (_, used) = ber::read_length(&packet[16..])?;
    let body_start = 16 + used;
    if n < body_start + 4 || packet[n - 4..n - 2] != [0x01, 0x02] {
        return Err(KlvError::MissingChecksum { len: n });
    }
    let expected = u16::from_be_bytes([packet[n - 2], packet[n - 1]]);
    let computed = checksum(&packet[..n - 2]);
    if expected != computed {
        return Err(KlvError::Checksum { expected, computed });
    }
    let tags = decode_items(&packet[body_start..n - 4])?;
    Ok(Packet { tags, checksum: expected })
}

/// Decodes a sequence of `tag | length | value` items.
fn decode_items(mut items: &[u8]) -> Result<Vec<Tag>> {
    let mut tags = Vec::new();
    while !items.is_empty() {
        let (tag, tag_len) = ber::read_oid(items)?;
        let tag = u32::try_from(tag).map_err(|_| KlvError::BadBer { what: "tag", reason: "tag number above 2^32" })?;
        let (len, len_len) = ber::read_length_checked(&items[tag_len..])?;
        let start = tag_len + len_len;
        let value = &items[start..start + len];
        if tag != tag::CHECKSUM {
            tags.push(Tag::new(tag, decode_value(tag, value)));
        }
        items = &items[start + len..];
    }
    Ok(tags)
}

/// Encodes a packet: key, BER lengths, tag 2 first (when given), the other tags in the
/// given order, checksum last. A tag 1 in `tags` is ignored (it is computed).
pub fn encode_packet(tags: &[Tag]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let first = tags.iter().filter(|t| t.tag == tag::PRECISION_TIME_STAMP);
    let others = tags.iter().filter(|t| t.tag != tag::PRECISION_TIME_STAMP && t.tag != tag::CHECKSUM);
    for t in first.chain(others) {
        let value = encode_value(t.tag, &t.value)?;
        ber::write_oid(t.tag as u64, &mut body);
        ber::write_length(value.len(), &mut body);
        body.extend_from_slice(&value);
    }
    body.extend_from_slice(&[0x01, 0x02]);
    let mut out = Vec::with_capacity(body.len() + 16 + 9 + 2);
    out.extend_from_slice(&UAS_LS_KEY);
    ber::write_length(body.len() + 2, &mut out);
    out.extend_from_slice(&body);
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    Ok(out)
}

/// Report-on-change cache of one stream: the last value of every tag seen.
#[derive(Debug, Clone, Default)]
pub struct ReportOnChange {
    state: BTreeMap<u32, Tag>,
}

impl ReportOnChange {
    pub fn new() -> Self {
        Self::default()
    }

    /// Updates the cache with `packet` and returns the merged state: every tag seen so
    /// far, with this packet's values where present. Sorted by tag number.
    pub fn apply(&mut self, packet: &Packet) -> Vec<Tag> {
        for t in &packet.tags {
            self.state.insert(t.tag, t.clone());
        }
        self.state.values().cloned().collect()
    }

    /// The current merged state by tag number.
    pub fn state(&self) -> &BTreeMap<u32, Tag> {
        &self.state
    }

    /// Forgets everything (e.g. after a stream discontinuity).
    pub fn clear(&mut self) {
        self.state.clear();
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tags::Sentinel;
    use super::*;

    fn sample_tags() -> Vec<Tag> {
        let f = TagValue::Float;
        vec![
            Tag::new(13, f(48.180_040_2)),
            Tag::new(2, TagValue::UInt(1_700_000_000_123_456)),
            Tag::new(3, TagValue::Text("SYNTH01".into())),
            Tag::new(5, f(271.25)),
            Tag::new(6, f(-3.5)),
            Tag::new(7, TagValue::Sentinel(Sentinel::OutOfRange)),
            Tag::new(14, f(11.562_961_2)),
            Tag::new(15, f(1234.5)),
            Tag::new(16, f(12.5)),
            Tag::new(17, f(7.0)),
            Tag::new(18, f(359.9)),
            Tag::new(19, f(-45.0)),
            Tag::new(20, f(0.5)),
            Tag::new(21, f(2500.0)),
            Tag::new(23, f(48.17)),
            Tag::new(24, f(11.57)),
            Tag::new(25, f(510.0)),
            Tag::new(26, f(-0.0123)),
            Tag::new(65, TagValue::UInt(17)),
            Tag::new(90, f(-3.5)),
            Tag::new(104, f(1282.25)),
            Tag::new(112, f(12.0)),
            Tag::new(139, TagValue::List(vec![0, 2])),
            Tag::new(127, TagValue::Rational { num: 30000, den: 1001 }),
            Tag::new(200, TagValue::Bytes(vec![1, 2, 3])),
        ]
    }

    #[test]
    fn round_trip_within_one_step() {
        let tags = sample_tags();
        let bytes = encode_packet(&tags).unwrap();
        assert_eq!(bytes[..16], UAS_LS_KEY);
        let p = decode_packet(&bytes).unwrap();
        // Timestamp first, then the given order; checksum not in `tags`.
        assert_eq!(p.tags[0].tag, 2);
        assert_eq!(p.tags[1].tag, 13);
        assert_eq!(p.tags.len(), tags.len());
        for t in &tags {
            let got = p.get(t.tag).unwrap();
            match (&t.value, &got.value) {
                (TagValue::Float(a), TagValue::Float(b)) => {
                    let step = super::super::codec::step(t.tag, encoded_len(&bytes, t.tag));
                    assert!((a - b).abs() <= step.unwrap(), "tag {}: {a} vs {b}", t.tag);
                }
                (a, b) => assert_eq!(a, b, "tag {}", t.tag),
            }
        }
    }

    /// Length the encoder writes for a mapped tag (the table's length).
    fn encoded_len(_bytes: &[u8], tag: u32) -> usize {
        use super::super::tags::{spec, Format};
        match spec(tag).unwrap().format {
            Format::UMap { len, .. } | Format::SMap { len, .. } | Format::Imapb { len, .. } => len,
            f => panic!("not a mapped format: {f:?}"),
        }
    }

    #[test]
    fn checksum_detects_every_flipped_byte() {
        let bytes = encode_packet(&sample_tags()).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode_packet(&b).is_err(), "flip at {i} accepted");
        }
        // A flipped value byte is reported as a checksum error specifically.
        let mut b = bytes.clone();
        b[30] ^= 0x10;
        assert!(matches!(decode_packet(&b), Err(KlvError::Checksum { .. })));
    }

    #[test]
    fn checksum_formula_on_known_bytes() {
        // i = 0 goes high, i = 1 low: 0x0102 + 0x0300 = 0x0402.
        assert_eq!(checksum(&[0x01, 0x02, 0x03]), 0x0402);
        assert_eq!(checksum(&[0xff, 0xff, 0xff, 0xff]), 0xfffe);
    }

    #[test]
    fn rejects_malformed_packets() {
        let bytes = encode_packet(&sample_tags()).unwrap();
        assert!(matches!(decode_packet(&bytes[..10]), Err(KlvError::Truncated { .. })));
        assert!(decode_packet(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode_packet(&long), Err(KlvError::Trailing { extra: 1 })));
        let mut key = bytes.clone();
        key[15] = 1;
        assert!(matches!(decode_packet(&key), Err(KlvError::WrongKey { .. })));
        // Checksum not last: a packet that ends with a timestamp item.
        let mut p = UAS_LS_KEY.to_vec();
        p.extend_from_slice(&[0x03, 0x41, 0x01, 0x11]);
        assert!(matches!(decode_packet(&p), Err(KlvError::MissingChecksum { .. })));
    }

    #[test]
    fn report_on_change_fills_omitted_tags() {
        let mut roc = ReportOnChange::new();
        let p1 = Packet { tags: vec![Tag::new(2, TagValue::UInt(1)), Tag::new(13, TagValue::Float(1.0))], checksum: 0 };
        let p2 = Packet { tags: vec![Tag::new(2, TagValue::UInt(2)), Tag::new(14, TagValue::Float(2.0))], checksum: 0 };
        roc.apply(&p1);
        let merged = roc.apply(&p2);
        let nums: Vec<u32> = merged.iter().map(|t| t.tag).collect();
        assert_eq!(nums, [2, 13, 14]);
        assert_eq!(merged[0].value, TagValue::UInt(2));
        assert_eq!(roc.state()[&13].value, TagValue::Float(1.0));
    }
}
