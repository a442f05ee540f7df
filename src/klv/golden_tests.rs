//! Golden test: every packet of tests/fixtures/klv/h264_klv.ts (KWIVER sample, BSD
//! licence in LICENSE.kwiver) through our TS reader and decoder, compared tag by tag with
//! KWIVER's decode (h264_klv.golden.json.zz, zlib-compressed JSON).
//!
//! Tolerance rule per tag:
//! - integers, strings, enumerations (KWIVER `{"integer", "string"}`: value and label),
//!   flag sets and BER-OID lists, the frame-rate pack: exact.
//! - scaled values (KWIVER `{"length", "value"}`): `|ours - kwiver| <= step / 1000`, where
//!   `step` is the quantisation step of the tag's encoding at that length (ST 0601 linear
//!   mapping or ST 1201 IMAPB). Both sides decode the same raw integer, so they may only
//!   differ by float rounding (measured: at most 4e-7 steps); a thousandth of a step also
//!   catches a subtly wrong denominator (2^n vs 2^n - 1), which half a step would not.
//!   The byte length must match KWIVER's.
//! - nested local sets and packs (48, 73, 74, 81, 94, 95, 97, 99-102, 115, 122, 128, 130,
//!   138, 140-142): kept raw here; the test checks they are present as raw bytes.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use super::ber;
use super::codec::step;
use super::st0601::{decode_packet, Packet};
use super::tags::{enum_label, spec, Format, TagValue};
use super::ts::{demux_all, StreamKind};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/klv/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).expect("fixture present")
}

fn golden() -> Vec<Value> {
    let zz = fixture("h264_klv.golden.json.zz");
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(&zz[..]).read_to_string(&mut text).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Value::Array(a) => a,
        other => panic!("golden is not an array: {other}"),
    }
}

fn decoded_packets() -> Vec<(Packet, BTreeMap<u32, usize>)> {
    let (units, demux) = demux_all(&fixture("h264_klv.ts"));
    let klv = demux.klv_streams();
    assert_eq!(klv.len(), 1);
    assert_eq!(klv[0].kind, StreamKind::KlvAsync);
    // This sample's KLV PES carry no PTS (PTS_DTS_flags = 0), and each is muxed just
    // before its video frame: the next video PTS is the clock, 1 + 3000 * i (30 Hz),
    // which matches KWIVER's frame times (33333 us steps).
    assert!(units.iter().all(|u| u.pid == klv[0].pid && u.pts.is_none()));
    for (i, (u, g)) in units.iter().zip(golden()).enumerate() {
        let next = u.next_video_pts.unwrap();
        assert_eq!(next, 1 + 3000 * i as u64);
        let us = g["microseconds"].as_i64().unwrap();
        assert!(((next - 1) as i64 * 100 / 9 - us).abs() <= 1, "{i}: {next} vs {us} us");
        assert_eq!(u.prev_video_pts, i.checked_sub(1).map(|j| 1 + 3000 * j as u64));
    }
    assert_eq!(demux.stats().klv_garbage_bytes, 0);
    units
        .iter()
        .map(|u| {
            let p = decode_packet(&u.bytes).expect("checksum and structure valid");
            (p, item_lengths(&u.bytes))
        })
        .collect()
}

/// Compares one golden tag with ours; returns whether it was a numeric comparison.
fn compare(tag: u32, ours: &TagValue, kw: &Value, bytes_len: Option<usize>) -> bool {
    let ctx = format!("tag {tag}: ours {ours:?}, kwiver {kw}");
    match (ours, kw) {
        (TagValue::UInt(u), Value::Number(n)) => assert_eq!(Some(*u), n.as_u64(), "{ctx}"),
        (TagValue::Int(i), Value::Number(n)) => assert_eq!(Some(*i), n.as_i64(), "{ctx}"),
        (TagValue::Text(s), Value::String(k)) => assert_eq!(s, k, "{ctx}"),
        (TagValue::UInt(u), Value::Object(o)) if o.contains_key("integer") => {
            assert_eq!(Some(*u), o["integer"].as_u64(), "{ctx}");
            assert_eq!(enum_label(tag, *u), o["string"].as_str(), "{ctx}");
        }
        (v, Value::Object(o)) if o.contains_key("length") => {
            let len = o["length"].as_u64().unwrap() as usize;
            assert_eq!(bytes_len, Some(len), "{ctx}");
            let k = o["value"].as_f64().unwrap();
            let x = v.as_f64().unwrap_or_else(|| panic!("{ctx}"));
            let tol = step(tag, len).unwrap() / 1000.0;
            assert!((x - k).abs() <= tol, "{ctx}: diff {} > {tol}", (x - k).abs());
            MAX_RATIO.with(|m| m.set(m.get().max((x - k).abs() / (1000.0 * tol))));
            return true;
        }
        (TagValue::List(items), Value::Array(a)) => {
            let kw: Vec<u64> = a.iter().map(|e| e.get("integer").unwrap_or(e).as_u64().unwrap()).collect();
            assert_eq!(items, &kw, "{ctx}");
        }
        (TagValue::Rational { num, den }, Value::Object(o)) => {
            assert_eq!(Some(*num), o["numerator"].as_u64(), "{ctx}");
            assert_eq!(Some(*den), o["denominator"].as_u64(), "{ctx}");
        }
        (TagValue::Bytes(_), _) => {
            let f = spec(tag).unwrap().format;
            assert!(matches!(f, Format::LocalSet | Format::Bytes), "{ctx}");
        }
        _ => panic!("{ctx}: type mismatch"),
    }
    false
}

/// Value byte length of every item of a raw packet, by tag number.
fn item_lengths(packet: &[u8]) -> BTreeMap<u32, usize> {
    let (_, used) = ber::read_length(&packet[16..]).unwrap();
    let mut items = &packet[16 + used..];
    let mut lens = BTreeMap::new();
    while !items.is_empty() {
        let (tag, a) = ber::read_oid(items).unwrap();
        let (len, b) = ber::read_length(&items[a..]).unwrap();
        lens.insert(tag as u32, len);
        items = &items[a + b + len..];
    }
    lens
}

thread_local! {
    /// Largest |ours - kwiver| / step seen (reported by the test).
    static MAX_RATIO: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

#[test]
fn every_packet_matches_kwiver() {
    let ours = decoded_packets();
    let golden = golden();
    assert_eq!(ours.len(), 30);
    assert_eq!(ours.len(), golden.len());
    let mut numeric = 0;
    for (i, ((p, lens), g)) in ours.iter().zip(&golden).enumerate() {
        let items = g["value"].as_array().unwrap();
        assert_eq!(p.tags.len(), items.len(), "packet {i}: tag count");
        for item in items {
            let tag = item["key"]["integer"].as_u64().unwrap() as u32;
            let t = p.get(tag).unwrap_or_else(|| panic!("packet {i}: tag {tag} missing"));
            assert_ne!(t.name, "Unknown tag", "packet {i}: tag {tag} not in our table");
            numeric += compare(tag, &t.value, &item["value"], lens.get(&tag).copied()) as usize;
        }
    }
    // 30 packets x 86 scaled tags (each packet carries every tag 2..142).
    assert!(numeric >= 30 * 80, "only {numeric} numeric comparisons");
    let ratio = MAX_RATIO.with(|m| m.get());
    eprintln!("{numeric} scaled values compared; max |ours - kwiver| = {ratio:e} steps");
}

#[test]
fn no_klv_file_has_video_and_no_telemetry() {
    let (units, demux) = demux_all(&fixture("h264_no_klv.ts"));
    assert!(units.is_empty());
    assert!(demux.klv_streams().is_empty());
    let video = demux.video_streams();
    assert_eq!(video.len(), 1);
    assert_eq!((video[0].pid, video[0].stream_type), (256, 0x1b));
}

#[test]
fn sample_round_trips_through_encoder() {
    // Decoded real packets, encoded again (table lengths), decode to the same values:
    // exactly for non-scaled tags, within one step of the written length for scaled ones.
    let (units, _) = demux_all(&fixture("h264_klv.ts"));
    for u in &units {
        let p = decode_packet(&u.bytes).unwrap();
        let again = super::st0601::encode_packet(&p.tags).unwrap();
        let back = decode_packet(&again).unwrap();
        let lens = item_lengths(&again);
        assert_eq!(back.tags.len(), p.tags.len());
        for (a, b) in p.tags.iter().zip(&back.tags) {
            assert_eq!(a.tag, b.tag);
            match (&a.value, &b.value) {
                (TagValue::Float(x), TagValue::Float(y)) => {
                    let s = step(a.tag, lens[&a.tag]).unwrap();
                    assert!((x - y).abs() <= s, "tag {}: {x} vs {y}", a.tag);
                }
                (x, y) => assert_eq!(x, y, "tag {}", a.tag),
            }
        }
    }
}

#[test]
fn dump_ts_writes_one_line_per_packet() {
    let mut out = Vec::new();
    let stats = super::json::dump_ts(format!("{DIR}h264_klv.ts"), &mut out).unwrap();
    assert_eq!((stats.klv_units, stats.decoded, stats.checksum_errors), (30, 30, 0));
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 30);
    let first = &lines[0];
    assert_eq!(first["pid"], 257);
    assert_eq!(first["checksum_ok"], true);
    assert!(first["pts"].is_null() && first["prev_video_pts"].is_null());
    assert_eq!(first["next_video_pts"], 1);
    let t2 = &first["tags"][0];
    assert_eq!(t2["tag"], 2);
    assert_eq!(t2["name"], "Precision Time Stamp");
    assert_eq!(t2["unit"], "us");
    assert_eq!(t2["value"], 1_224_807_209_913_000u64);
    let missing = super::json::dump_ts(format!("{DIR}does_not_exist.ts"), &mut Vec::new());
    assert!(matches!(missing, Err(super::KlvError::Io { .. })));
}

#[test]
fn real_packet_checksum_and_counted_rejection() {
    let (units, _) = demux_all(&fixture("h264_klv.ts"));
    let bytes = &units[0].bytes;
    let n = bytes.len();
    // The formula reproduces the sender's checksum (tag 1 is the last item: 01 02 hi lo).
    assert_eq!(bytes[n - 4..n - 2], [0x01, 0x02]);
    let sum = super::st0601::checksum(&bytes[..n - 2]);
    assert_eq!(sum.to_be_bytes(), bytes[n - 2..]);
    assert_eq!(decode_packet(bytes).unwrap().checksum, sum);
    // A flipped byte is rejected with a typed error and counted by the dump.
    let mut bad = units[0].clone();
    bad.bytes[100] ^= 0x20;
    assert!(matches!(decode_packet(&bad.bytes), Err(super::KlvError::Checksum { .. })));
    let mut stats = super::json::DumpStats::default();
    let line = super::json::unit_json(&bad, &mut stats);
    assert_eq!(line["checksum_ok"], false);
    assert!(line["error"].as_str().unwrap().contains("checksum"));
    assert_eq!((stats.klv_units, stats.decoded, stats.checksum_errors), (1, 0, 1));
}

#[test]
fn timeline_joins_sample_telemetry_to_video_pts() {
    let (units, _) = demux_all(&fixture("h264_klv.ts"));
    let mut tl = super::timeline::Timeline::default();
    for u in &units {
        tl.insert_unit(u).unwrap();
    }
    let golden = golden();
    let kw = |i: usize, tag: u64| {
        let items = golden[i]["value"].as_array().unwrap();
        let item = items.iter().find(|t| t["key"]["integer"] == tag).unwrap();
        item["value"]["value"].as_f64().unwrap()
    };
    // Frame 5 is displayed at PTS 1 + 5 * 3000; a query 1000 ticks later still finds it.
    let s = tl.nearest_pts(1 + 5 * 3000 + 1000, 1500).unwrap();
    assert_eq!(s.pts, Some(15_001));
    let fc = s.state.frame_centre().unwrap();
    assert!((fc.lat_deg - kw(5, 23)).abs() < 1e-9 && (fc.lon_deg - kw(5, 24)).abs() < 1e-9);
    let sensor = s.state.sensor_position().unwrap();
    assert!((sensor.lat_deg - kw(5, 13)).abs() < 1e-9);
    assert!((sensor.hae_m.unwrap() - kw(5, 104)).abs() < 1e-6); // extended tag 104 wins
    assert_eq!(s.state.corners().map(|c| c[0].0), Some(kw(5, 82)));
    // Past the last frame by more than the gap: nothing.
    assert!(tl.nearest_pts(1 + 29 * 3000 + 2000, 1500).is_none());
    // Corrupted unit: the error comes back to be counted, the timeline is unchanged.
    let mut bad = units[0].clone();
    bad.bytes[50] ^= 1;
    assert!(tl.insert_unit(&bad).is_err());
    assert_eq!(tl.len(), 30);
}
