//! Bounded, seeded fuzz and property tests (run in the normal suite, well under a second
//! each in debug builds): random bytes, mutated real packets (with the checksum repaired so
//! the item parser is reached), mutated transport streams, and encode/decode round trips
//! of random in-range values for every scaled tag. Properties: no panic, termination, and
//! outputs never larger than inputs (nothing is allocated from a declared length).

use super::ber;
use super::codec::{decode_value, step};
use super::st0601::{checksum, decode_packet, encode_packet};
use super::tags::{Format, Tag, TagValue, TAGS};
use super::ts::{demux_all, TsDemux};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn sample_ts() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/klv/h264_klv.ts")).unwrap()
}

fn real_packets() -> Vec<Vec<u8>> {
    demux_all(&sample_ts()).0.into_iter().map(|u| u.bytes).collect()
}

fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(6) {
        let i = rng.below(b.len());
        match rng.below(5) {
            0 if !b.is_empty() => b[i] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[i] = rng.next() as u8,
            2 => b.insert(i, rng.next() as u8),
            3 if !b.is_empty() => {
                b.remove(i);
            }
            _ => b.truncate(i),
        }
    }
    b
}

/// Makes the last two bytes the checksum of the rest, when the packet ends in `01 02 xx xx`.
fn repair_checksum(b: &mut [u8]) {
    let n = b.len();
    if n >= 4 && b[n - 4..n - 2] == [1, 2] {
        let sum = checksum(&b[..n - 2]);
        b[n - 2..].copy_from_slice(&sum.to_be_bytes());
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_0601);
    for _ in 0..3000 {
        let len = rng.below(400);
        let mut b = rng.bytes(len);
        if rng.below(2) == 0 && b.len() >= 16 {
            b[..16].copy_from_slice(&super::st0601::UAS_LS_KEY);
        }
        let _ = decode_packet(&b);
        let _ = ber::read_length_checked(&b);
        let _ = ber::read_oid(&b);
        for tag in [1 + rng.below(150) as u32, rng.next() as u32] {
            let v = decode_value(tag, &b);
            if let TagValue::Bytes(x) | TagValue::Malformed(x) = &v {
                assert!(x.len() <= b.len());
            }
        }
        let (units, _) = demux_all(&b);
        assert!(units.iter().map(|u| u.bytes.len()).sum::<usize>() <= b.len());
    }
}

#[test]
fn mutated_real_packets_never_panic() {
    let packets = real_packets();
    let mut rng = Rng(0xbad_c0de);
    let (mut ok, mut rejected) = (0, 0);
    for _ in 0..3000 {
        let original = &packets[rng.below(packets.len())];
        let mut b = mutate(&mut rng, original.clone());
        if rng.below(4) != 0 {
            repair_checksum(&mut b);
        }
        match decode_packet(&b) {
            Ok(p) => {
                ok += 1;
                assert!(p.tags.len() <= b.len() / 2);
            }
            Err(_) => rejected += 1,
        }
    }
    // Both paths are exercised.
    assert!(ok > 100 && rejected > 100, "ok {ok}, rejected {rejected}");
}

#[test]
fn mutated_transport_streams_never_panic() {
    let ts = sample_ts();
    let mut rng = Rng(0x47_47_47);
    for case in 0..60 {
        let start = rng.below(ts.len() / 2);
        let mut b = ts[start..start + 20_000].to_vec();
        for _ in 0..1 + rng.below(40) {
            let i = rng.below(b.len());
            b[i] = rng.next() as u8;
        }
        if case % 3 == 0 {
            b = mutate(&mut rng, b);
        }
        let mut demux = TsDemux::new();
        let mut out = Vec::new();
        let mut rest = &b[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(3000).min(rest.len() - 1);
            demux.feed(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        demux.finish(&mut out);
        assert!(out.iter().map(|u| u.bytes.len()).sum::<usize>() <= b.len());
        for u in &out {
            let _ = decode_packet(&u.bytes);
        }
    }
}

#[test]
fn random_values_round_trip_every_scaled_tag() {
    let mut rng = Rng(42);
    for _ in 0..200 {
        let mut tags = vec![Tag::new(2, TagValue::UInt(rng.next() >> 8))];
        for s in TAGS {
            let (lo, hi) = match s.format {
                Format::UMap { min, max, .. } | Format::Imapb { min, max, .. } => (min, max),
                Format::SMap { max, .. } => (-max, max),
                _ => continue,
            };
            tags.push(Tag::new(s.tag, TagValue::Float(lo + (hi - lo) * rng.unit())));
        }
        let bytes = encode_packet(&tags).unwrap();
        let p = decode_packet(&bytes).unwrap();
        for (a, b) in tags.iter().zip(&p.tags).skip(1) {
            let len = match super::tags::spec(a.tag).unwrap().format {
                Format::UMap { len, .. } | Format::SMap { len, .. } | Format::Imapb { len, .. } => len,
                _ => unreachable!(),
            };
            let (x, y) = (a.value.as_f64().unwrap(), b.value.as_f64().unwrap());
            assert!((x - y).abs() <= step(a.tag, len).unwrap(), "tag {}: {x} vs {y}", a.tag);
        }
    }
}
