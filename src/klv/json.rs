//! JSON view of decoded packets and the `smgeo klv dump` driver.
//!
//! One JSON object per KLV packet (JSON lines):
//! ```json
//! {"pts": 126000, "prev_video_pts": null, "next_video_pts": null, "pid": 257, "checksum_ok": true,
//!  "tags": [{"tag": 2, "name": "Precision Time Stamp", "unit": "us", "value": 1224807209913000}, ...]}
//! ```
//! `pts` is the PES PTS in 90 kHz ticks (null when absent, as is common for asynchronous
//! KLV); `prev_video_pts` / `next_video_pts` are the PTS of the video PES started just
//! before / after it (the second only for KLV without PTS). Values: numbers for scaled and
//! integer values (units as in the tag table), strings for text, arrays for flag/list
//! tags (set bit positions or items), `{"num", "den"}` for the frame rate, `{"raw": hex}`
//! for nested sets, packs and unknown tags, `{"sentinel": "out_of_range" | "+inf" |
//! "-inf" | "nan" | "reserved"}` for non-numbers, `{"malformed": hex}` for bytes that do
//! not fit their tag. Enumerated tags (34, 63, 77, 125, 126) add a `"label"`. A rejected packet gives `"checksum_ok": false` and an `"error"`
//! message instead of `"tags"`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde_json::{json, Value};

use super::st0601::{decode_packet, hex, Packet};
use super::tags::{enum_label, Tag, TagValue};
use super::ts::{DemuxStats, KlvUnit, StreamInfo, TsDemux};
use super::{KlvError, Result};

/// What a dump saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// KLV packets found in the KLV streams.
    pub klv_units: u64,
    /// Packets decoded with a valid checksum.
    pub decoded: u64,
    pub checksum_errors: u64,
    /// Packets rejected for other reasons (wrong key, bad lengths, checksum tag missing).
    pub other_errors: u64,
    pub streams: Vec<StreamInfo>,
    pub demux: DemuxStats,
}

/// Options of [`dump_ts_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// Only this KLV PID.
    pub pid: Option<u16>,
}

/// JSON value of one tag value (see module docs).
pub fn value_json(v: &TagValue) -> Value {
    match v {
        TagValue::Float(x) => json!(x),
        TagValue::UInt(u) => json!(u),
        TagValue::Int(i) => json!(i),
        TagValue::Text(s) => json!(s),
        TagValue::List(items) => json!(items),
        TagValue::Rational { num, den } => json!({"num": num, "den": den}),
        TagValue::Bytes(b) => json!({"raw": hex(b)}),
        TagValue::Sentinel(s) => json!({"sentinel": s.as_str()}),
        TagValue::Malformed(b) => json!({"malformed": hex(b)}),
    }
}

/// JSON of one tag: number, name, unit, value.
/// Enumerated tags also get a `"label"` (see [`enum_label`]).
pub fn tag_json(t: &Tag) -> Value {
    let mut v = json!({"tag": t.tag, "name": t.name, "unit": t.unit, "value": value_json(&t.value)});
    if let TagValue::UInt(u) = t.value {
        if let Some(label) = enum_label(t.tag, u) {
            v["label"] = json!(label);
        }
    }
    v
}

/// JSON of one decoded packet.
pub fn packet_json(unit: &KlvUnit, p: &Packet) -> Value {
    let tags: Vec<Value> = p.tags.iter().map(tag_json).collect();
    json!({"pts": unit.pts, "prev_video_pts": unit.prev_video_pts,
           "next_video_pts": unit.next_video_pts, "pid": unit.pid,
           "checksum_ok": true, "tags": tags})
}

/// Decodes one unit and returns its JSON line, counting the outcome in `stats`.
pub fn unit_json(unit: &KlvUnit, stats: &mut DumpStats) -> Value {
    stats.klv_units += 1;
    match decode_packet(&unit.bytes) {
        Ok(p) => {
            stats.decoded += 1;
            packet_json(unit, &p)
        }
        Err(e) => {
            if matches!(e, KlvError::Checksum { .. }) {
                stats.checksum_errors += 1;
            } else {
                stats.other_errors += 1;
            }
            json!({"pts": unit.pts, "prev_video_pts": unit.prev_video_pts,
           "next_video_pts": unit.next_video_pts, "pid": unit.pid,
                   "checksum_ok": false, "error": e.to_string()})
        }
    }
}

/// Reads an MPEG-TS file and writes one JSON line per KLV packet to `out`.
pub fn dump_ts(path: impl AsRef<Path>, out: &mut impl Write) -> Result<DumpStats> {
    dump_ts_with(path, out, DumpOptions::default())
}

/// [`dump_ts`] with options. The file is streamed in 1 MiB chunks.
pub fn dump_ts_with(path: impl AsRef<Path>, out: &mut impl Write, opts: DumpOptions) -> Result<DumpStats> {
    let path = path.as_ref();
    let io_err = |source| KlvError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_err)?;
    let mut demux = TsDemux::new();
    let mut stats = DumpStats::default();
    let mut chunk = vec![0u8; 1 << 20];
    let mut units = Vec::new();
    loop {
        let n = file.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            demux.finish(&mut units);
        } else {
            demux.feed(&chunk[..n], &mut units);
        }
        for unit in units.drain(..) {
            if opts.pid.is_some_and(|p| p != unit.pid) {
                continue;
            }
            let line = unit_json(&unit, &mut stats);
            writeln!(out, "{line}").map_err(KlvError::Output)?;
        }
        if n == 0 {
            break;
        }
    }
    out.flush().map_err(KlvError::Output)?;
    stats.streams = demux.streams();
    stats.demux = *demux.stats();
    Ok(stats)
}
