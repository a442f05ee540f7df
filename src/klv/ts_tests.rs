//! Tests of the TS demultiplexer on streams written by a tiny test muxer below (PAT, PMT
//! with CRC, PES with PTS, synchronous metadata AU cells), plus garbage and chunking.

use super::*;
use crate::klv::st0601::{decode_packet, encode_packet};
use crate::klv::tags::{Tag, TagValue};

const PMT_PID: u16 = 0x1000;
const VIDEO: u16 = 0x100;
const ASYNC: u16 = 0x101;
const SYNC_PID: u16 = 0x102;
const EMPTY: u16 = 0x103;

/// One 188-byte packet; short payloads are padded with adaptation-field stuffing.
fn ts_packet(pid: u16, pusi: bool, cc: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 184);
    let mut p = vec![SYNC, (pusi as u8) << 6 | (pid >> 8) as u8, pid as u8];
    if payload.len() == 184 {
        p.push(0x10 | cc);
    } else {
        let af_len = 183 - payload.len();
        p.push(0x30 | cc);
        p.push(af_len as u8);
        if af_len > 0 {
            p.push(0x00);
            p.extend(std::iter::repeat_n(0xff, af_len - 1));
        }
    }
    p.extend_from_slice(payload);
    assert_eq!(p.len(), TS_PACKET);
    p
}

/// Cuts `data` into packets of `pid`, continuity counter in `cc`.
fn packetize(pid: u16, data: &[u8], cc: &mut u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, chunk) in data.chunks(184).enumerate() {
        out.extend(ts_packet(pid, i == 0, *cc, chunk));
        *cc = (*cc + 1) & 0x0f;
    }
    out
}

fn section(table_id: u8, ext: u16, body: &[u8]) -> Vec<u8> {
    let len = 5 + body.len() + 4;
    let mut s = vec![table_id, 0xb0 | (len >> 8) as u8, len as u8];
    s.extend_from_slice(&[(ext >> 8) as u8, ext as u8, 0xc1, 0, 0]);
    s.extend_from_slice(body);
    let crc = crc32_mpeg(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

fn psi(pid: u16, section: &[u8], cc: &mut u8) -> Vec<u8> {
    let mut payload = vec![0u8];
    payload.extend_from_slice(section);
    packetize(pid, &payload, cc)
}

/// PAT + PMT declaring H.264 video, async KLV, sync KLV, and an empty async KLV PID.
fn tables(cc: &mut u8) -> Vec<u8> {
    let pat = section(0, 1, &[0, 1, 0xe0 | (PMT_PID >> 8) as u8, PMT_PID as u8]);
    let klva = [0x05, 4, b'K', b'L', b'V', b'A'];
    let meta = [0x26, 9, 0x01, 0x00, 0xff, b'K', b'L', b'V', b'A', 0x00, 0x0f];
    let mut body = vec![0xe0 | (VIDEO >> 8) as u8, VIDEO as u8, 0xf0, 0];
    for (ty, pid, desc) in
        [(0x1b, VIDEO, &[][..]), (0x06, ASYNC, &klva[..]), (0x15, SYNC_PID, &meta[..]), (0x06, EMPTY, &klva[..])]
    {
        body.extend_from_slice(&[ty, 0xe0 | (pid >> 8) as u8, pid as u8, 0xf0]);
        body.push(desc.len() as u8);
        body.extend_from_slice(desc);
    }
    let mut out = psi(0, &pat, &mut 0);
    out.extend(psi(PMT_PID, &section(2, 1, &body), cc));
    out
}

fn pts_bytes(pts: u64) -> [u8; 5] {
    [
        0x21 | ((pts >> 29) & 0x0e) as u8,
        (pts >> 22) as u8,
        0x01 | ((pts >> 14) & 0xfe) as u8,
        (pts >> 7) as u8,
        0x01 | ((pts << 1) & 0xfe) as u8,
    ]
}

fn pes(stream_id: u8, pts: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let header: Vec<u8> = match pts {
        Some(p) => [&[0x80, 0x80, 5][..], &pts_bytes(p)].concat(),
        None => vec![0x80, 0x00, 0],
    };
    let len = header.len() + payload.len();
    let mut out = vec![0, 0, 1, stream_id, (len >> 8) as u8, len as u8];
    out.extend(header);
    out.extend_from_slice(payload);
    out
}

/// Synchronous metadata AU cell; `frag`: 0b11 whole, 0b10 first, 0b00 middle, 0b01 last.
fn cell(seq: u8, frag: u8, data: &[u8]) -> Vec<u8> {
    let mut c = vec![0, seq, frag << 6 | 0x0f, (data.len() >> 8) as u8, data.len() as u8];
    c.extend_from_slice(data);
    c
}

fn klv(ts_us: u64, lat: f64) -> Vec<u8> {
    encode_packet(&[
        Tag::new(2, TagValue::UInt(ts_us)),
        Tag::new(13, TagValue::Float(lat)),
        Tag::new(3, TagValue::Text("M".repeat(300))), // spans several TS packets
    ])
    .unwrap()
}

/// A stream with 3 frames: video PES, async KLV (two packets in one PES) and sync KLV.
fn stream() -> Vec<u8> {
    let (mut cv, mut ca, mut cs, mut cp) = (0u8, 0u8, 0u8, 0u8);
    let mut out = tables(&mut cp);
    for f in 0..3u64 {
        let pts = 90_000 + 3003 * f;
        out.extend(packetize(VIDEO, &pes(0xe0, Some(pts), &[0, 0, 0, 1, 9, 0xf0]), &mut cv));
        let two = [klv(f * 10, 1.0), klv(f * 10 + 1, 2.0)].concat();
        out.extend(packetize(ASYNC, &pes(0xbd, Some(pts), &two), &mut ca));
        let k = klv(f * 10 + 5, 3.0);
        let cells = if f == 1 {
            [cell(f as u8, 0b10, &k[..100]), cell(f as u8, 0b00, &k[100..200])].concat()
        } else {
            cell(f as u8, 0b11, &k)
        };
        out.extend(packetize(SYNC_PID, &pes(0xfc, Some(pts), &cells), &mut cs));
        if f == 1 {
            // The last fragment arrives in a later PES.
            let last = cell(f as u8, 0b01, &k[200..]);
            out.extend(packetize(SYNC_PID, &pes(0xfc, Some(pts + 1), &last), &mut cs));
        }
    }
    out
}

/// (pid, pts, tag 2) of every unit: compact enough for assertion messages.
fn summary(units: &[KlvUnit]) -> Vec<(u16, Option<u64>, u64)> {
    units.iter().map(|u| (u.pid, u.pts, decode_packet(&u.bytes).unwrap().timestamp_us().unwrap())).collect()
}

fn times(units: &[KlvUnit], pid: u16) -> Vec<(Option<u64>, u64)> {
    units
        .iter()
        .filter(|u| u.pid == pid)
        .map(|u| (u.pts, decode_packet(&u.bytes).unwrap().timestamp_us().unwrap()))
        .collect()
}

#[test]
fn finds_async_and_sync_klv_and_video() {
    let (units, demux) = demux_all(&stream());
    let kinds: Vec<(u16, StreamKind)> = demux.streams().iter().map(|s| (s.pid, s.kind)).collect();
    assert_eq!(
        kinds,
        [
            (VIDEO, StreamKind::Video),
            (ASYNC, StreamKind::KlvAsync),
            (SYNC_PID, StreamKind::KlvSync),
            (EMPTY, StreamKind::KlvAsync)
        ]
    );
    let p = |f: u64| Some(90_000 + 3003 * f);
    assert_eq!(times(&units, ASYNC), [(p(0), 0), (p(0), 1), (p(1), 10), (p(1), 11), (p(2), 20), (p(2), 21)]);
    // The fragmented AU completes in the PES with PTS + 1.
    assert_eq!(times(&units, SYNC_PID), [(p(0), 5), (Some(93_004), 15), (p(2), 25)]);
    assert!(units.iter().all(|u| u.pid != EMPTY));
    assert_eq!(units.len(), 9);
    assert_eq!(demux.stats().continuity_errors, 0);
    assert_eq!(demux.stats().klv_garbage_bytes, 0);
}

#[test]
fn chunked_feeding_gives_the_same_units() {
    let data = stream();
    let (whole, _) = demux_all(&data);
    for chunk in [1usize, 7, 187, 189, 1000] {
        let mut demux = TsDemux::new();
        let mut out = Vec::new();
        for c in data.chunks(chunk) {
            demux.feed(c, &mut out);
        }
        demux.finish(&mut out);
        assert_eq!(summary(&out), summary(&whole), "chunk {chunk}");
        assert!(out == whole, "chunk {chunk}: bytes differ");
    }
}

#[test]
fn resyncs_after_garbage() {
    let clean = stream();
    let mut data = vec![0x47, 1, 2, 3, 0x47, 9]; // junk, including false sync bytes
    data.extend_from_slice(&clean[..TS_PACKET * 3]);
    data.extend_from_slice(&[0xde, 0xad, 0x47, 0xbe, 0xef]);
    data.extend_from_slice(&clean[TS_PACKET * 3..]);
    let (units, demux) = demux_all(&data);
    let (expected, _) = demux_all(&clean);
    assert_eq!(summary(&units), summary(&expected));
    assert!(demux.stats().resync_bytes >= 11);
}

#[test]
fn continuity_gap_drops_only_that_pes() {
    let clean = stream();
    // Remove the second async KLV packet of frame 0 (find it by PID, skip the PUSI one).
    let packets: Vec<&[u8]> = clean.chunks(TS_PACKET).collect();
    let victim =
        packets.iter().position(|p| u16::from_be_bytes([p[1] & 0x1f, p[2]]) == ASYNC && p[1] & 0x40 == 0).unwrap();
    let data: Vec<u8> =
        packets.iter().enumerate().filter(|(i, _)| *i != victim).flat_map(|(_, p)| p.iter().copied()).collect();
    let (units, demux) = demux_all(&data);
    assert_eq!(demux.stats().continuity_errors, 1);
    let ts: Vec<u64> = times(&units, ASYNC).iter().map(|t| t.1).collect();
    assert_eq!(ts, [10, 11, 20, 21]);
}

#[test]
fn corrupt_pmt_is_ignored_by_crc() {
    let mut data = stream();
    // The PMT is the second packet; its payload (pointer field, then the section) follows
    // the adaptation-field stuffing. Flip a bit of the first ES entry's PID.
    let start = TS_PACKET + 5 + data[TS_PACKET + 4] as usize;
    data[start + 1 + 12 + 1] ^= 0x01;
    let (units, demux) = demux_all(&data);
    assert!(units.is_empty());
    assert_eq!(demux.stats().psi_crc_errors, 1);
    assert!(demux.streams().is_empty());
}

#[test]
fn klv_without_pts_takes_next_video_pts() {
    let (mut cv, mut ca, mut cp) = (0u8, 0u8, 0u8);
    let mut data = tables(&mut cp);
    data.extend(packetize(ASYNC, &pes(0xbd, None, &klv(1, 1.0)), &mut ca));
    data.extend(packetize(VIDEO, &pes(0xe0, Some(500), &[0, 0, 1]), &mut cv));
    data.extend(packetize(ASYNC, &pes(0xbd, None, &klv(2, 1.0)), &mut ca));
    let (units, _) = demux_all(&data);
    let clocks: Vec<_> = units.iter().map(|u| (u.prev_video_pts, u.next_video_pts)).collect();
    assert_eq!(clocks, [(None, Some(500)), (Some(500), None)]);
}

#[test]
fn id3_metadata_stream_is_not_klv() {
    assert_eq!(classify(0x15, &[0x26, 9, 1, 0, 0xff, b'I', b'D', b'3', b' ', 0, 0]), StreamKind::Other);
    assert_eq!(classify(0x15, &[]), StreamKind::KlvSync);
    assert_eq!(classify(0x06, &[]), StreamKind::Other);
    assert_eq!(classify(0x24, &[]), StreamKind::Video);
}

#[test]
fn pts_field_round_trip() {
    let b = pts_bytes(0x1_2345_6789);
    assert_eq!(read_timestamp(&b), 0x1_2345_6789);
}

#[test]
fn empty_payload_after_full_adaptation_field() {
    // PUSI on the PAT PID with an adaptation field filling the whole packet (no payload
    // bytes although afc says payload follows): must be skipped, not indexed.
    let mut p = vec![SYNC, 0x40, 0x00, 0x30, 183, 0x00];
    p.resize(TS_PACKET, 0xff);
    let data = [p.clone(), p].concat();
    let (units, demux) = demux_all(&data);
    assert!(units.is_empty());
    assert_eq!(demux.stats().packets, 2);
}
