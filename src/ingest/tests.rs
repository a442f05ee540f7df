//! End-to-end tests on real GStreamer pipelines: encoder → file / UDP → source.
//! Every wait has a finite timeout; ports come from the OS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::bench::test_pattern;
use super::encode::{no_klv, stream_ts_udp, stream_ts_udp_via, write_ts, StreamControl};
use super::*;

const LONG: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/klv")).join(name)
}

fn tmp_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("smgeo_ingest_{tag}_{}_{nanos}.ts", std::process::id()))
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind port 0");
    s.local_addr().expect("local addr").port()
}

/// Run a finite source to EOS with a ring big enough to keep every frame.
fn read_all(kind: SourceKind, ring: usize) -> (Vec<Arc<Frame>>, Vec<KlvUnit>, SourceStats) {
    let mut cfg = SourceConfig::new(kind);
    cfg.sync = false;
    cfg.ring_capacity = ring;
    cfg.klv_capacity = 4096;
    let src = Source::start(cfg).expect("start");
    let end = src.wait_state(LONG, |s| matches!(s, SourceState::Eos | SourceState::Failed(_)));
    assert_eq!(end, Some(SourceState::Eos), "stats: {:?}", src.stats());
    let frames = src.frames().snapshot();
    let klv: Vec<KlvUnit> = src.klv().try_iter().collect();
    let stats = src.stats();
    src.stop();
    (frames, klv, stats)
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    let sum: u64 = a.iter().zip(b).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    sum as f64 / a.len().max(1) as f64
}

#[test]
fn ts_roundtrip_frames_stride_and_klv() {
    let (w, h, n) = (322u32, 240u32, 30u32);
    let path = tmp_path("roundtrip");
    // Three KLV units: a 16-byte key then a payload, at the PTS of frames 0, 10, 20.
    let klv: Vec<(u64, Vec<u8>)> = (0..3u8)
        .map(|k| {
            let mut d: Vec<u8> = (0..16).map(|i| 0x06 + i + k).collect();
            d.extend([0x81, 5, k, 0xAA, 0x55, k ^ 0xFF, 7]);
            (u64::from(k) * 10 * 1_000_000_000 / 30, d)
        })
        .collect();
    let stats = write_ts(&path, (0..n).map(|i| test_pattern(w, h, i)), 30, Some(klv.clone())).expect("write_ts");
    assert_eq!((stats.frames, stats.klv_units), (30, 3));
    let (frames, units, st) = read_all(SourceKind::File { path: path.clone() }, 64);
    let _ = std::fs::remove_file(&path);
    assert_eq!(frames.len(), n as usize, "stats {st:?}");
    assert_eq!(st.dropped, 0);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!((f.width, f.height, f.data.len()), (w, h, (w * h * 3) as usize));
        if i > 0 {
            assert!(f.pts_ns > frames[i - 1].pts_ns, "PTS order at {i}");
        }
        // Lossy H.264, but close to the source; a stride slip would shear rows.
        let mad = mean_abs_diff(&f.data, &test_pattern(w, h, i as u32).data);
        assert!(mad < 6.0, "frame {i}: mean abs diff {mad}");
    }
    assert_eq!(units.len(), 3);
    for (k, u) in units.iter().enumerate() {
        assert_eq!(u.data.as_ref(), klv[k].1.as_slice(), "KLV unit {k} bytes");
        assert_eq!(u.pts_ns, Some(frames[k * 10].pts_ns), "KLV unit {k} PTS = frame {}", k * 10);
    }
}

#[test]
fn fixture_files_give_frames_and_klv_only_where_present() {
    let (frames, klv, st) = read_all(SourceKind::File { path: fixture("h264_klv.ts") }, 4);
    assert!(st.frames > 0 && !frames.is_empty(), "{st:?}");
    assert!(!klv.is_empty(), "KLV expected: {st:?}");
    // 30 local sets, one per frame as in the golden dump; this file's KLV PES
    // headers carry no PTS (PTS_DTS_flags = 0), so none comes back.
    assert_eq!(klv.len(), 30, "{st:?}");
    assert!(klv.iter().all(|u| u.pts_ns.is_none() && u.data.len() > 16));
    // Raw units start with the MISB ST 0601 UAS local set key.
    assert!(klv[0].data.starts_with(&[0x06, 0x0E, 0x2B, 0x34]), "{:02x?}", &klv[0].data[..4]);
    let (frames, klv, st) = read_all(SourceKind::File { path: fixture("h264_no_klv.ts") }, 4);
    assert!(st.frames > 0 && !frames.is_empty(), "{st:?}");
    assert!(klv.is_empty() && st.klv_units == 0);
}

#[test]
fn test_pattern_source_scales_and_ends() {
    let kind = SourceKind::Test { width: 64, height: 48, fps: 30, num_buffers: Some(10), live: false };
    let mut cfg = SourceConfig::new(kind);
    cfg.output_size = Some((32, 24));
    cfg.sync = false;
    cfg.ring_capacity = 16;
    let src = Source::start(cfg).expect("start");
    let end = src.wait_state(LONG, |s| matches!(s, SourceState::Eos | SourceState::Failed(_)));
    assert_eq!(end, Some(SourceState::Eos));
    let frames = src.frames().snapshot();
    assert_eq!(frames.len(), 10);
    assert!(frames.iter().all(|f| (f.width, f.height, f.data.len()) == (32, 24, 32 * 24 * 3)));
}

#[test]
fn udp_stall_and_recovery_on_same_handle() {
    let port = free_udp_port();
    let mut cfg = SourceConfig::new(SourceKind::UdpTs { address: "127.0.0.1".into(), port, multicast_iface: None });
    cfg.codec = Codec::H264;
    cfg.sync = false;
    cfg.stall_timeout_ms = 1000;
    let src = Source::start(cfg).expect("start receiver");
    assert_eq!(src.state(), SourceState::Connecting);

    let ctl = Arc::new(StreamControl::default());
    let sender = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            let frames = (0u32..).map(|i| test_pattern(160, 120, i));
            stream_ts_udp("127.0.0.1", port, frames, 30, no_klv(), true, Some(&ctl))
        })
    };
    let playing = |s: &SourceState| *s == SourceState::Playing;
    assert!(src.wait_state(LONG, playing).is_some(), "never Playing: {:?}", src.stats());
    let f = src.frames().latest().expect("frame");
    assert_eq!((f.width, f.height), (160, 120));

    ctl.pause();
    let stalled = src.wait_state(Duration::from_secs(5), |s| *s == SourceState::Stalled);
    assert!(stalled.is_some(), "no Stalled: {:?}", src.stats());
    let before = src.stats().frames;
    ctl.resume();
    assert!(src.wait_state(LONG, playing).is_some(), "no recovery: {:?}", src.stats());
    // Half a second of video flows again on the same handle.
    let deadline = std::time::Instant::now() + LONG;
    while src.stats().frames < before + 15 && std::time::Instant::now() < deadline {
        let _ = src.frames().wait_newer(src.frames().latest().map(|f| f.seq), Duration::from_millis(200));
    }
    let st = src.stats();
    assert!(st.frames >= before + 15, "frames after resume: {st:?}");
    assert_eq!(st.reconnects, 0, "UDP keeps its pipeline: {st:?}");
    assert_eq!(st.state, SourceState::Playing);

    ctl.stop();
    let sent = sender.join().expect("sender thread").expect("sender");
    assert!(sent.frames >= 15, "{sent:?}");
    src.stop();
}

#[test]
fn rtsp_refused_reconnects_with_backoff_then_fails() {
    // Nothing listens on a port just released by the OS: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free tcp port");
    let location = format!("rtsp://127.0.0.1:{port}/none");
    let mut cfg = SourceConfig::new(SourceKind::Rtsp { location, latency_ms: 100, tcp: true });
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 100;
    cfg.max_reconnects = Some(2);
    let src = Source::start(cfg).expect("start");
    let r = src.wait_state(LONG, |s| matches!(s, SourceState::Reconnecting { attempt: 2 }));
    assert!(r.is_some(), "{:?}", src.stats());
    let end = src.wait_state(LONG, |s| matches!(s, SourceState::Failed(_)));
    assert!(end.is_some(), "{:?}", src.stats());
    let st = src.stats();
    assert_eq!(st.reconnects, 2);
    assert!(st.errors >= 3 && st.last_error.as_ref().is_some_and(|e| e.contains("rtsp")), "{st:?}");
    src.stop();
}

#[test]
fn write_ts_rejects_bad_input() {
    let path = tmp_path("bad");
    let frames = vec![test_pattern(16, 16, 0), test_pattern(8, 8, 1)];
    let e = write_ts(&path, frames, 30, no_klv()).unwrap_err();
    assert!(e.to_string().contains("frame 1"), "{e}");
    let e = write_ts(&path, Vec::new(), 30, no_klv()).unwrap_err();
    assert!(e.to_string().contains("no frames"), "{e}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn missing_file_fails_with_context() {
    let path = tmp_path("missing");
    let src = Source::start(SourceConfig::new(SourceKind::File { path: path.clone() })).expect("start");
    let end = src.wait_state(LONG, |s| matches!(s, SourceState::Failed(_) | SourceState::Eos));
    let Some(SourceState::Failed(msg)) = end else { panic!("expected Failed, got {end:?}") };
    assert!(msg.contains("file.pipeline") && msg.contains("src"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(src.stats().reconnects, 0, "files are not reconnected");
}

#[test]
fn udp_realtime_stream_carries_klv_with_frame_pts() {
    let port = free_udp_port();
    let kind = SourceKind::UdpTs { address: "127.0.0.1".into(), port, multicast_iface: None };
    let mut cfg = SourceConfig::new(kind);
    cfg.ring_capacity = 128;
    let src = Source::start(cfg).expect("start receiver");
    // 2 s at 30 fps, one KLV unit every 10 frames.
    let sent: Vec<(u64, Vec<u8>)> =
        (0..6u8).map(|k| (u64::from(k) * 1_000_000_000 / 3, vec![0x06, 0x0E, k, 42])).collect();
    let frames = (0u32..60).map(|i| test_pattern(96, 64, i));
    let stats = stream_ts_udp("127.0.0.1", port, frames, 30, Some(sent.clone()), true, None).expect("send");
    assert_eq!((stats.frames, stats.klv_units), (60, 6));
    // The receiver may have missed the very first datagrams while starting up.
    let mut got = Vec::new();
    while let Ok(u) = src.klv().recv_timeout(Duration::from_secs(2)) {
        got.push(u);
    }
    assert!(got.len() >= 4, "{} KLV units: {:?}", got.len(), src.stats());
    let frames = src.frames().snapshot();
    let first = frames.first().map(|f| f.pts_ns).expect("frames");
    let mut joined = 0;
    for u in &got {
        assert!(sent.iter().any(|(_, d)| d.as_slice() == u.data.as_ref()), "unexpected {:?}", u.data);
        let pts = u.pts_ns.expect("KLV PTS over UDP");
        // Units before the first decodable frame (missed keyframe) have no partner.
        if pts >= first {
            let f = src.frames().get_at(pts, 5_000_000);
            assert!(f.is_some(), "no frame within 5 ms of KLV PTS {pts}: frames from {first}");
            joined += 1;
        }
    }
    assert!(joined >= 3, "{joined} KLV units joined to frames");
}

/// Wait until the source has delivered `n` more frames than `before`.
fn wait_frames(src: &SourceHandle, before: u64, n: u64) -> SourceStats {
    let deadline = std::time::Instant::now() + LONG;
    while src.stats().frames < before + n && std::time::Instant::now() < deadline {
        let _ = src.frames().wait_newer(src.frames().latest().map(|f| f.seq), Duration::from_millis(200));
    }
    src.stats()
}

#[test]
fn rtsp_server_goes_away_and_returns_source_recovers_unaided() {
    let media = RtspMedia::TestPattern { width: 160, height: 120, fps: 30, h265: false };
    let server = RtspServer::start("127.0.0.1", 0, "/live", &media).expect("rtsp server");
    let port = server.port();
    assert!(port > 0);
    let mut cfg = SourceConfig::new(SourceKind::Rtsp { location: server.url(), latency_ms: 100, tcp: true });
    cfg.codec = Codec::H264;
    cfg.sync = false;
    cfg.stall_timeout_ms = 1500;
    cfg.backoff_initial_ms = 100;
    cfg.backoff_max_ms = 400;
    let src = Source::start(cfg).expect("start");
    let playing = |s: &SourceState| *s == SourceState::Playing;
    assert!(src.wait_state(LONG, playing).is_some(), "never Playing: {:?}", src.stats());
    let st = wait_frames(&src, 0, 15);
    assert!(st.frames >= 15, "{st:?}");
    let f = src.frames().latest().expect("frame");
    assert_eq!((f.width, f.height), (160, 120));
    assert_eq!(server.clients(), 1);

    // The server goes away: connection closed, then refused while it is down.
    server.stop();
    let lost = src.wait_state(LONG, |s| matches!(s, SourceState::Reconnecting { .. }));
    assert!(lost.is_some(), "loss not reported: {:?}", src.stats());
    std::thread::sleep(Duration::from_millis(1500));
    let down = src.stats();
    assert!(down.reconnects >= 2, "retries while the server is down: {down:?}");
    assert_ne!(down.state, SourceState::Playing);
    assert!(down.last_error.is_some(), "{down:?}");

    // It comes back on the same port: the same handle plays again.
    let server = RtspServer::start("127.0.0.1", port, "/live", &media).expect("rtsp server again");
    assert!(src.wait_state(LONG, playing).is_some(), "no recovery: {:?}", src.stats());
    let st = wait_frames(&src, down.frames, 15);
    assert!(st.frames >= down.frames + 15, "frames after return: {st:?}");
    assert_eq!(st.state, SourceState::Playing);
    src.stop();
    server.stop();
}

#[test]
fn rtsp_serves_ts_file_and_source_plays_it_in_pts_order() {
    let path = tmp_path("rtsp_ts");
    write_ts(&path, (0u32..90).map(|i| test_pattern(128, 96, i)), 30, None::<Vec<(u64, Vec<u8>)>>).expect("write ts");
    let server =
        RtspServer::start("127.0.0.1", 0, "/flight", &RtspMedia::TsFile { path: path.clone() }).expect("rtsp server");
    let mut cfg = SourceConfig::new(SourceKind::Rtsp { location: server.url(), latency_ms: 100, tcp: true });
    cfg.codec = Codec::H264;
    cfg.sync = false;
    cfg.ring_capacity = 128;
    let src = Source::start(cfg).expect("start");
    assert!(src.wait_state(LONG, |s| *s == SourceState::Playing).is_some(), "{:?}", src.stats());
    let st = wait_frames(&src, 0, 80);
    let pts: Vec<u64> = src.frames().snapshot().iter().map(|f| f.pts_ns).collect();
    src.stop();
    server.stop();
    let _ = std::fs::remove_file(&path);
    assert!(st.frames >= 80, "{st:?}");
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "PTS not increasing: {pts:?}");
    assert_eq!(st.klv_units, 0, "video-only media: {st:?}");
}

#[test]
fn rtsp_mp2t_carries_video_and_klv_to_the_source() {
    let path = tmp_path("rtsp_mp2t");
    // 3 s at 30 fps, a KLV unit every 10 frames, each a distinct payload.
    let klv: Vec<(u64, Vec<u8>)> =
        (0..9u8).map(|k| (u64::from(k) * 1_000_000_000 / 3, vec![0x06, 0x0E, 0x2B, 0x34, k, 7, 7])).collect();
    write_ts(&path, (0u32..90).map(|i| test_pattern(128, 96, i)), 30, Some(klv.clone())).expect("write ts");
    let server =
        RtspServer::start("127.0.0.1", 0, "/flight", &RtspMedia::Mp2tFile { path: path.clone() }).expect("rtsp server");
    let mut cfg = SourceConfig::new(SourceKind::RtspTs { location: server.url(), latency_ms: 100, tcp: true });
    cfg.sync = false;
    cfg.ring_capacity = 128;
    let src = Source::start(cfg).expect("start");
    assert!(src.wait_state(LONG, |s| *s == SourceState::Playing).is_some(), "{:?}", src.stats());
    // The server ends the file and the source reconnects (EOS on a network source is a
    // loss), so the stream repeats: collect one play's worth of units, with a deadline.
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while got.len() < klv.len() && std::time::Instant::now() < deadline {
        if let Ok(u) = src.klv().recv_timeout(Duration::from_millis(500)) {
            got.push(u);
        }
    }
    let _ = wait_frames(&src, 0, 80);
    let st = src.stats();
    let pts: Vec<u64> = src.frames().snapshot().iter().map(|f| f.pts_ns).collect();
    src.stop();
    server.stop();
    let _ = std::fs::remove_file(&path);
    assert!(st.frames >= 80, "{st:?}");
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "PTS not increasing");
    assert!(got.len() >= 8, "{} KLV units over RTSP: {st:?}", got.len());
    for u in &got {
        assert!(klv.iter().any(|(_, d)| d.as_slice() == u.data.as_ref()), "unexpected KLV {:02x?}", u.data);
    }
}

#[test]
fn rtsp_server_rejects_bad_mount_and_missing_file() {
    let e =
        RtspServer::start("127.0.0.1", 0, "live", &RtspMedia::TestPattern { width: 8, height: 8, fps: 5, h265: false });
    assert!(e.err().is_some_and(|e| e.to_string().contains("mount point")));
    let missing = RtspMedia::TsFile { path: tmp_path("absent") };
    let e = RtspServer::start("127.0.0.1", 0, "/x", &missing);
    assert!(e.err().is_some_and(|e| e.to_string().contains("no such file")));
}

#[test]
fn udp_multicast_on_loopback_joins_group_and_plays() {
    let port = free_udp_port();
    // A group in the organisation-local scope, unique per test process.
    let group = format!("239.255.{}.{}", (std::process::id() >> 8) & 0xff, std::process::id() & 0xff | 1);
    let kind = SourceKind::UdpTs { address: group.clone(), port, multicast_iface: Some("lo".into()) };
    let mut cfg = SourceConfig::new(kind);
    cfg.codec = Codec::H264;
    cfg.sync = false;
    let src = Source::start(cfg).expect("start receiver");
    // Stream until the receiver has what it needs: it may join the group after the first
    // datagrams went out (a loaded machine), and those are simply lost, as on a real link.
    let ctl = Arc::new(StreamControl::default());
    let sender = {
        let (ctl, group) = (ctl.clone(), group.clone());
        std::thread::spawn(move || {
            let frames = (0u32..).map(|i| test_pattern(96, 64, i));
            let klv = (0u64..).map(|k| (k * 500_000_000, vec![0x06, 0x0E, (k % 251) as u8]));
            stream_ts_udp_via(&group, port, Some("lo"), frames, 30, Some(klv), true, Some(&ctl))
        })
    };
    let st = wait_frames(&src, 0, 30);
    let deadline = std::time::Instant::now() + LONG;
    let mut units = 0;
    while units < 2 && std::time::Instant::now() < deadline {
        units += src.klv().recv_timeout(Duration::from_millis(500)).is_ok() as usize;
    }
    ctl.stop();
    let sent = sender.join().expect("sender thread").expect("send");
    src.stop();
    assert!(sent.frames >= 30, "{sent:?}");
    assert!(st.frames >= 30, "multicast frames: {st:?}");
    assert!(units >= 2, "multicast KLV units: {units}");
    let bad = stream_ts_udp_via(&group, port, Some("lo; rm"), Vec::new(), 30, no_klv(), false, None);
    assert!(bad.err().is_some_and(|e| e.to_string().contains("interface")));
}

/// Run a finite launch line (a test-file writer) to EOS.
fn run_to_eos(text: &str) {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    super::init().expect("gst init");
    let p = gst::parse::launch(text).expect("launch text");
    p.set_state(gst::State::Playing).expect("PLAYING");
    let bus = p.bus().expect("bus");
    let msg =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error]);
    let _ = p.set_state(gst::State::Null);
    let kind = msg.as_ref().map(|m| m.type_());
    assert_eq!(kind, Some(gst::MessageType::Eos), "{text}: {msg:?}");
}

#[test]
fn h265_ts_and_h264_mp4_files_decode_in_pts_order() {
    let ts = tmp_path("h265");
    let mp4 = tmp_path("h264").with_extension("mp4");
    let src = "videotestsrc num-buffers=30 ! video/x-raw,width=96,height=64,framerate=30/1";
    run_to_eos(&format!(
        "{src} ! x265enc speed-preset=ultrafast key-int-max=10 ! h265parse ! mpegtsmux ! filesink location={}",
        ts.display()
    ));
    run_to_eos(&format!(
        "{src} ! x264enc speed-preset=ultrafast key-int-max=10 ! h264parse ! mp4mux ! filesink location={}",
        mp4.display()
    ));
    for (path, codec) in [(&ts, Codec::H265), (&ts, Codec::Auto), (&mp4, Codec::Auto)] {
        let mut cfg = SourceConfig::new(SourceKind::File { path: path.clone() });
        cfg.codec = codec;
        cfg.sync = false;
        cfg.ring_capacity = 64;
        let src = Source::start(cfg).expect("start");
        let end = src.wait_state(LONG, |s| matches!(s, SourceState::Eos | SourceState::Failed(_)));
        assert_eq!(end, Some(SourceState::Eos), "{} {codec:?}: {:?}", path.display(), src.stats());
        let frames = src.frames().snapshot();
        src.stop();
        assert_eq!(frames.len(), 30, "{} {codec:?}", path.display());
        assert!(frames.iter().all(|f| (f.width, f.height) == (96, 64)));
        assert!(frames.windows(2).all(|w| w[1].pts_ns > w[0].pts_ns), "PTS order");
        let step = frames[1].pts_ns - frames[0].pts_ns;
        assert!(step.abs_diff(33_333_333) < 1_000_000, "frame step {step} ns");
    }
    let _ = std::fs::remove_file(&ts);
    let _ = std::fs::remove_file(&mp4);
}

#[test]
fn rtsp_h265_stream_plays() {
    let media = RtspMedia::TestPattern { width: 128, height: 96, fps: 15, h265: true };
    let server = RtspServer::start("127.0.0.1", 0, "/hevc", &media).expect("rtsp server");
    let mut cfg = SourceConfig::new(SourceKind::Rtsp { location: server.url(), latency_ms: 100, tcp: false });
    cfg.codec = Codec::H265;
    cfg.sync = false;
    let src = Source::start(cfg).expect("start");
    assert!(src.wait_state(LONG, |s| *s == SourceState::Playing).is_some(), "{:?}", src.stats());
    let st = wait_frames(&src, 0, 10);
    let f = src.frames().latest().expect("frame");
    src.stop();
    server.stop();
    assert!(st.frames >= 10, "{st:?}");
    assert_eq!((f.width, f.height), (128, 96));
}
