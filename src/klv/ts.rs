//! A minimal MPEG-TS (ISO/IEC 13818-1) demultiplexer that finds KLV metadata.
//!
//! Input: a byte stream of 188-byte transport packets, fed in chunks of any size
//! ([`TsDemux::feed`]) or all at once ([`demux_all`]). Output: [`KlvUnit`]s, one per KLV
//! packet (16-byte key + BER length + value), with the PID and the PES PTS (90 kHz, 33
//! bits, not unwrapped; see [`PtsUnwrap`]).
//!
//! It reads the PAT and the PMTs (sections reassembled across packets, CRC-32 checked),
//! then reassembles PES packets of the KLV PIDs:
//! - asynchronous KLV (MISB ST 1402 §6.1): stream_type 0x06 with a registration
//!   descriptor (tag 0x05) "KLVA"; PES stream_id 0xBD; the payload is KLV packets back to
//!   back.
//! - synchronous KLV (ST 1402 §6.2): stream_type 0x15 (metadata in PES, stream_id 0xFC);
//!   the payload is metadata access-unit cells, each with a 5-byte header:
//!   metadata_service_id, sequence_number, flags (cell_fragment_indication in the top two
//!   bits: 11 whole, 10 first, 00 middle, 01 last fragment), AU_cell_data_length (16 bits).
//!   A 0x15 stream whose metadata descriptor names another format (e.g. "ID3 ") is ignored.
//!
//! Every PES payload is split into its KLV packets. Video PIDs and their stream types are
//! reported by [`TsDemux::streams`]. Garbage is survived: the reader resynchronises on
//! 0x47 (confirmed by the next packet's sync byte when available), drops packets with the
//! transport error indicator, drops a PES on a continuity-counter gap, caps every buffer,
//! and counts all of it in [`DemuxStats`].

use std::collections::BTreeMap;

use super::mpeg::parse_pes;
pub use super::mpeg::{crc32_mpeg, read_timestamp, PtsUnwrap};
use super::st0601::split_klv;

/// Transport packet size.
pub const TS_PACKET: usize = 188;
const SYNC: u8 = 0x47;
/// Largest PES we reassemble; a bigger one is dropped and counted.
const MAX_PES: usize = 4 << 20;
/// Largest PSI section (13818-1: section_length <= 1021 for PAT/PMT; private up to 4093).
const MAX_SECTION: usize = 4096;
/// Most KLV units held back waiting for a video PTS (bounds memory without video).
const MAX_WAITING: usize = 256;
/// Prefix shared by SMPTE Universal Labels, used to resynchronise inside a PES payload.
const UL_PREFIX: [u8; 4] = [0x06, 0x0E, 0x2B, 0x34];

/// What an elementary stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Video,
    /// stream_type 0x06 + "KLVA" registration.
    KlvAsync,
    /// stream_type 0x15 metadata carried in PES.
    KlvSync,
    Other,
}

/// One elementary stream declared in a PMT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub program: u16,
    pub pid: u16,
    pub stream_type: u8,
    pub kind: StreamKind,
}

/// One KLV packet found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlvUnit {
    pub pid: u16,
    /// PES presentation time stamp, 90 kHz, 33 bits. Asynchronous KLV often has none.
    pub pts: Option<u64>,
    /// PTS of the last video PES that started before this KLV's PES.
    pub prev_video_pts: Option<u64>,
    /// For KLV without PTS only: PTS of the first video PES that started after it (such
    /// units are held back until that video PES header is seen, or the end of input).
    /// Muxers commonly write a frame's KLV just before the frame, so this is the usual
    /// fallback clock for asynchronous KLV without PTS.
    pub next_video_pts: Option<u64>,
    /// Key, BER length and value of one KLV packet.
    pub bytes: Vec<u8>,
}

impl KlvUnit {
    /// The best PTS for joining with video: its own PTS, else the next video PTS, else
    /// the previous one.
    pub fn clock(&self) -> Option<u64> {
        self.pts.or(self.next_video_pts).or(self.prev_video_pts)
    }
}

/// Counters of what the demultiplexer saw and what it had to skip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemuxStats {
    pub packets: u64,
    /// Bytes skipped while looking for sync.
    pub resync_bytes: u64,
    pub transport_errors: u64,
    pub continuity_errors: u64,
    pub psi_crc_errors: u64,
    pub psi_errors: u64,
    pub pes_errors: u64,
    pub oversized_pes: u64,
    pub pes_packets: u64,
    /// Bytes inside KLV PES payloads that did not form a complete KLV packet.
    pub klv_garbage_bytes: u64,
}

#[derive(Debug, Default)]
struct PesBuf {
    data: Vec<u8>,
    active: bool,
    last_cc: Option<u8>,
    /// Pending fragments of a synchronous metadata AU.
    fragment: Vec<u8>,
    /// Last video PTS when this PES started.
    video_pts: Option<u64>,
}

/// Streaming MPEG-TS demultiplexer for KLV.
#[derive(Debug, Default)]
pub struct TsDemux {
    pending: Vec<u8>,
    /// PMT PID -> program number.
    pmt_pids: BTreeMap<u16, u16>,
    streams: BTreeMap<u16, StreamInfo>,
    sections: BTreeMap<u16, Vec<u8>>,
    pes: BTreeMap<u16, PesBuf>,
    last_video_pts: Option<u64>,
    /// KLV units without PTS waiting for the next video PTS.
    waiting: Vec<KlvUnit>,
    stats: DemuxStats,
}

/// Demultiplexes a whole buffer; returns the KLV units and the demuxer (streams, stats).
pub fn demux_all(data: &[u8]) -> (Vec<KlvUnit>, TsDemux) {
    let mut demux = TsDemux::new();
    let mut out = Vec::new();
    demux.feed(data, &mut out);
    demux.finish(&mut out);
    (out, demux)
}

impl TsDemux {
    pub fn new() -> Self {
        Self::default()
    }

    /// Streams declared by the PMTs seen so far, by PID.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.streams.values().copied().collect()
    }

    /// Video streams declared so far.
    pub fn video_streams(&self) -> Vec<StreamInfo> {
        self.streams_of(|k| k == StreamKind::Video)
    }

    /// KLV streams (synchronous or asynchronous) declared so far.
    pub fn klv_streams(&self) -> Vec<StreamInfo> {
        self.streams_of(|k| matches!(k, StreamKind::KlvAsync | StreamKind::KlvSync))
    }

    fn streams_of(&self, f: impl Fn(StreamKind) -> bool) -> Vec<StreamInfo> {
        self.streams.values().filter(|s| f(s.kind)).copied().collect()
    }

    pub fn stats(&self) -> &DemuxStats {
        &self.stats
    }

    /// Feeds bytes (any chunking); complete KLV packets are appended to `out`. A packet is
    /// processed once the sync byte of the next one is visible, so the result does not
    /// depend on how the input is chunked.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<KlvUnit>) {
        self.pending.extend_from_slice(data);
        self.drain_packets(false, out);
    }

    /// Processes the bytes left at the end of input and flushes PES packets still being
    /// assembled and KLV units still waiting for a video PTS.
    pub fn finish(&mut self, out: &mut Vec<KlvUnit>) {
        self.drain_packets(true, out);
        self.stats.resync_bytes += self.pending.len() as u64;
        self.pending.clear();
        let pids: Vec<u16> = self.pes.keys().copied().collect();
        for pid in pids {
            self.flush_pes(pid, out);
        }
        out.append(&mut self.waiting);
    }

    fn drain_packets(&mut self, at_end: bool, out: &mut Vec<KlvUnit>) {
        let buf = std::mem::take(&mut self.pending);
        let mut pos = 0;
        while buf.len() - pos >= TS_PACKET {
            let next = buf.get(pos + TS_PACKET).copied();
            if buf[pos] == SYNC && next.map_or(at_end, |b| b == SYNC) {
                self.packet(&buf[pos..pos + TS_PACKET], out);
                pos += TS_PACKET;
                continue;
            }
            if buf[pos] == SYNC && next.is_none() {
                break; // wait for the next sync byte
            }
            let (found, j) = match find_sync(&buf, pos + 1, at_end) {
                Ok(j) => (true, j),
                Err(j) => (false, j),
            };
            self.stats.resync_bytes += (j - pos) as u64;
            pos = j;
            if !found {
                break;
            }
        }
        self.pending = buf;
        self.pending.drain(..pos);
    }

    fn packet(&mut self, p: &[u8], out: &mut Vec<KlvUnit>) {
        self.stats.packets += 1;
        if p[1] & 0x80 != 0 {
            self.stats.transport_errors += 1;
            return;
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = u16::from_be_bytes([p[1] & 0x1f, p[2]]);
        let afc = (p[3] >> 4) & 0x3;
        let cc = p[3] & 0x0f;
        let mut start = 4;
        if afc & 0x2 != 0 {
            start = 5 + p[4] as usize;
        }
        if afc & 0x1 == 0 || start >= TS_PACKET {
            if start > TS_PACKET {
                self.stats.transport_errors += 1;
            }
            return;
        }
        let payload = &p[start..];
        if pid == 0 || self.pmt_pids.contains_key(&pid) {
            self.psi(pid, pusi, payload);
        } else if self.is_klv(pid) {
            self.pes_packet(pid, pusi, cc, payload, out);
        } else if pusi && self.streams.get(&pid).map(|s| s.kind) == Some(StreamKind::Video) {
            if let Some((Some(pts), _)) = parse_pes(payload) {
                self.last_video_pts = Some(pts);
                for mut unit in self.waiting.drain(..) {
                    unit.next_video_pts = Some(pts);
                    out.push(unit);
                }
            }
        }
    }

    fn is_klv(&self, pid: u16) -> bool {
        self.streams.get(&pid).is_some_and(|s| matches!(s.kind, StreamKind::KlvAsync | StreamKind::KlvSync))
    }

    // ---- PSI -------------------------------------------------------------------------

    fn psi(&mut self, pid: u16, pusi: bool, payload: &[u8]) {
        if pusi {
            let pointer = payload[0] as usize;
            let Some(after) = payload.get(1 + pointer..) else {
                self.stats.psi_errors += 1;
                return;
            };
            if let Some(buf) = self.sections.get_mut(&pid) {
                buf.extend_from_slice(&payload[1..1 + pointer]);
                self.parse_sections(pid);
            }
            self.sections.insert(pid, after.to_vec());
        } else if let Some(buf) = self.sections.get_mut(&pid) {
            buf.extend_from_slice(payload);
        } else {
            return;
        }
        self.parse_sections(pid);
    }

    /// Parses every complete section at the front of the PID's section buffer.
    fn parse_sections(&mut self, pid: u16) {
        loop {
            let Some(buf) = self.sections.get_mut(&pid) else {
                return;
            };
            if buf.len() < 3 || buf[0] == 0xff {
                if buf.first() == Some(&0xff) || buf.len() > MAX_SECTION {
                    self.sections.remove(&pid);
                }
                return;
            }
            let total = 3 + (u16::from_be_bytes([buf[1] & 0x0f, buf[2]]) as usize);
            if buf.len() < total {
                if total > MAX_SECTION {
                    self.stats.psi_errors += 1;
                    self.sections.remove(&pid);
                }
                return;
            }
            let section: Vec<u8> = buf.drain(..total).collect();
            self.section(pid, &section);
        }
    }

    fn section(&mut self, pid: u16, s: &[u8]) {
        if s.len() < 12 {
            self.stats.psi_errors += 1;
            return;
        }
        if crc32_mpeg(s) != 0 {
            self.stats.psi_crc_errors += 1;
            return;
        }
        let body = &s[8..s.len() - 4];
        match (pid, s[0]) {
            (0, 0x00) => self.pat(body),
            (p, 0x02) if p != 0 => {
                let program = u16::from_be_bytes([s[3], s[4]]);
                self.pmt(program, body);
            }
            _ => {}
        }
    }

    fn pat(&mut self, body: &[u8]) {
        for entry in body.chunks_exact(4) {
            let program = u16::from_be_bytes([entry[0], entry[1]]);
            let pmt_pid = u16::from_be_bytes([entry[2] & 0x1f, entry[3]]);
            if program != 0 {
                self.pmt_pids.insert(pmt_pid, program);
            }
        }
    }

    fn pmt(&mut self, program: u16, body: &[u8]) {
        if body.len() < 4 {
            self.stats.psi_errors += 1;
            return;
        }
        let info_len = (u16::from_be_bytes([body[2] & 0x0f, body[3]])) as usize;
        let Some(mut es) = body.get(4 + info_len..) else {
            self.stats.psi_errors += 1;
            return;
        };
        self.streams.retain(|_, s| s.program != program);
        while es.len() >= 5 {
            let stream_type = es[0];
            let pid = u16::from_be_bytes([es[1] & 0x1f, es[2]]);
            let es_len = (u16::from_be_bytes([es[3] & 0x0f, es[4]])) as usize;
            let Some(descriptors) = es.get(5..5 + es_len) else {
                self.stats.psi_errors += 1;
                return;
            };
            let kind = classify(stream_type, descriptors);
            self.streams.insert(pid, StreamInfo { program, pid, stream_type, kind });
            es = &es[5 + es_len..];
        }
    }

    // ---- PES -------------------------------------------------------------------------

    fn pes_packet(&mut self, pid: u16, pusi: bool, cc: u8, payload: &[u8], out: &mut Vec<KlvUnit>) {
        if pusi {
            self.flush_pes(pid, out);
        }
        let video_pts = self.last_video_pts;
        let buf = self.pes.entry(pid).or_default();
        let expected = buf.last_cc.map(|c| (c + 1) & 0x0f);
        if !pusi && buf.last_cc == Some(cc) {
            return; // duplicate packet (13818-1 allows one repeat)
        }
        buf.last_cc = Some(cc);
        if pusi {
            buf.data.clear();
            buf.active = true;
            buf.video_pts = video_pts;
        } else if !buf.active {
            return;
        } else if expected != Some(cc) {
            self.stats.continuity_errors += 1;
            buf.active = false;
            buf.data.clear();
            return;
        }
        if buf.data.len() + payload.len() > MAX_PES {
            self.stats.oversized_pes += 1;
            buf.active = false;
            buf.data.clear();
            return;
        }
        buf.data.extend_from_slice(payload);
        let declared = buf.data.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]]));
        if let Some(len) = declared.filter(|&l| l > 0) {
            if buf.data.len() >= 6 + len as usize {
                self.flush_pes(pid, out);
            }
        }
    }

    fn flush_pes(&mut self, pid: u16, out: &mut Vec<KlvUnit>) {
        let Some(buf) = self.pes.get_mut(&pid) else {
            return;
        };
        if !buf.active {
            return;
        }
        buf.active = false;
        let data = std::mem::take(&mut buf.data);
        let clock = Clock { pid, pts: None, video_pts: buf.video_pts };
        let sync = self.streams.get(&pid).map(|s| s.kind) == Some(StreamKind::KlvSync);
        match parse_pes(&data) {
            Some((pts, payload)) => {
                self.stats.pes_packets += 1;
                let clock = Clock { pts, ..clock };
                if sync {
                    self.metadata_cells(clock, payload, out);
                } else {
                    self.split_units(clock, payload, out);
                }
            }
            None => self.stats.pes_errors += 1,
        }
    }

    /// Synchronous metadata: AU cells, reassembling fragmented cells.
    fn metadata_cells(&mut self, clock: Clock, mut p: &[u8], out: &mut Vec<KlvUnit>) {
        while p.len() >= 5 {
            let frag = p[2] >> 6;
            let len = u16::from_be_bytes([p[3], p[4]]) as usize;
            let Some(cell) = p.get(5..5 + len) else {
                self.stats.pes_errors += 1;
                return;
            };
            p = &p[5 + len..];
            let buf = self.pes.entry(clock.pid).or_default();
            match frag {
                0b11 => {
                    buf.fragment.clear();
                    self.split_units(clock, cell, out);
                }
                0b10 => buf.fragment = cell.to_vec(),
                _ if buf.fragment.len() + cell.len() > MAX_PES => {
                    self.stats.oversized_pes += 1;
                    buf.fragment.clear();
                }
                0b00 => buf.fragment.extend_from_slice(cell),
                _ => {
                    buf.fragment.extend_from_slice(cell);
                    let whole = std::mem::take(&mut buf.fragment);
                    self.split_units(clock, &whole, out);
                }
            }
        }
        self.stats.klv_garbage_bytes += p.len() as u64;
    }

    /// Splits back-to-back KLV packets; skips bytes up to the next UL prefix on garbage.
    fn split_units(&mut self, clock: Clock, mut p: &[u8], out: &mut Vec<KlvUnit>) {
        while !p.is_empty() {
            if !p.starts_with(&UL_PREFIX) {
                let skip = find(p, &UL_PREFIX, 1).unwrap_or(p.len());
                // Trailing stuffing (0x00/0xFF) is not counted as garbage.
                if !p[..skip].iter().all(|&b| b == 0 || b == 0xff) {
                    self.stats.klv_garbage_bytes += skip as u64;
                }
                p = &p[skip..];
                continue;
            }
            match split_klv(p) {
                Ok((unit, rest)) => {
                    let unit = KlvUnit {
                        pid: clock.pid,
                        pts: clock.pts,
                        prev_video_pts: clock.video_pts,
                        next_video_pts: None,
                        bytes: unit.to_vec(),
                    };
                    self.emit(unit, out);
                    p = rest;
                }
                Err(_) => {
                    let skip = find(p, &UL_PREFIX, 1).unwrap_or(p.len());
                    self.stats.klv_garbage_bytes += skip as u64;
                    p = &p[skip..];
                }
            }
        }
    }
}

impl TsDemux {
    /// Emits a unit now, or holds it until the next video PTS when it has no PTS itself.
    fn emit(&mut self, unit: KlvUnit, out: &mut Vec<KlvUnit>) {
        let has_video = self.streams.values().any(|s| s.kind == StreamKind::Video);
        if unit.pts.is_some() || !has_video {
            out.push(unit);
            return;
        }
        if self.waiting.len() >= MAX_WAITING {
            out.append(&mut self.waiting);
        }
        self.waiting.push(unit);
    }
}

/// Where a KLV PES came from and its clocks.
#[derive(Debug, Clone, Copy)]
struct Clock {
    pid: u16,
    pts: Option<u64>,
    video_pts: Option<u64>,
}

/// Stream kind from the PMT's stream_type and ES descriptors.
fn classify(stream_type: u8, descriptors: &[u8]) -> StreamKind {
    let mut klva = false;
    let mut other_metadata = false;
    let mut d = descriptors;
    while d.len() >= 2 {
        let (tag, len) = (d[0], d[1] as usize);
        let Some(body) = d.get(2..2 + len) else {
            break;
        };
        let has_klva = find(body, b"KLVA", 0).is_some();
        klva |= (tag == 0x05 || tag == 0x26) && has_klva;
        other_metadata |= tag == 0x26 && !has_klva;
        d = &d[2 + len..];
    }
    match stream_type {
        0x01 | 0x02 | 0x10 | 0x1b | 0x24 | 0x33 | 0x42 | 0xd1 | 0xea => StreamKind::Video,
        0x06 if klva => StreamKind::KlvAsync,
        0x15 if klva || !other_metadata => StreamKind::KlvSync,
        _ => StreamKind::Other,
    }
}

/// Next sync position at or after `from`: a 0x47 followed by another 0x47 one packet
/// later. `Err(j)`: none confirmed; bytes before `j` can be dropped (at `j` a candidate
/// waits for more input, or `j` is the end).
fn find_sync(buf: &[u8], from: usize, at_end: bool) -> Result<usize, usize> {
    for j in from..buf.len() {
        if buf[j] != SYNC {
            continue;
        }
        match buf.get(j + TS_PACKET) {
            Some(&SYNC) => return Ok(j),
            Some(_) => {}
            None if at_end && buf.len() - j >= TS_PACKET => return Ok(j),
            None => return Err(j),
        }
    }
    Err(buf.len())
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

#[cfg(test)]
#[path = "ts_tests.rs"]
mod tests;
