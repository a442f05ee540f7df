//! H.264 + KLV in MPEG-TS, written to a file or sent over UDP: test streams for the
//! ingest tests, `smgeo bench ingest` and the synthetic flight generator.
//!
//! ```text
//! appsrc vsrc (RGB) ! videoconvert ! x264enc (ultrafast, zerolatency) ! h264parse ! mpegtsmux name=mux ! sink
//! appsrc ksrc (meta/x-klv,parsed=true) ! mux.      (asynchronous KLV, stream_type 0x06 "KLVA")
//! ```
//! Frame `i` gets PTS `i · 10⁹ / fps` ns; KLV units carry their own PTS on that
//! time line and must come in PTS order (the iterator may be endless). The muxer
//! only emits video once the KLV pad holds a unit at or after the video time (or
//! has ended), so KLV is pushed one unit ahead of the video. Real-time mode
//! ([`stream_ts_udp`] with `realtime`) paces frames by the wall clock; a pause via
//! [`StreamControl`] shifts all later PTS by its length, like a live encoder.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::{IngestError, Result};

/// A tightly packed RGB picture (`data.len() == width * height * 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Pause / stop switch for a running [`stream_ts_udp`] (e.g. to simulate a link loss).
#[derive(Debug, Default)]
pub struct StreamControl {
    paused: AtomicBool,
    stop: AtomicBool,
}

impl StreamControl {
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What an encode run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EncodeStats {
    pub frames: u64,
    pub klv_units: u64,
}

/// `None` for the `klv` argument of [`write_ts`] / [`stream_ts_udp`].
pub fn no_klv() -> Option<std::iter::Empty<(u64, Vec<u8>)>> {
    None
}

const NAME: &str = "encode_ts";

/// Encode frames (and optional KLV units `(pts_ns, bytes)`) into an MPEG-TS file.
/// All frames must have the size of the first; KLV units in PTS order.
pub fn write_ts(
    path: &Path,
    frames: impl IntoIterator<Item = RgbFrame>,
    fps: u32,
    klv: Option<impl IntoIterator<Item = (u64, Vec<u8>)>>,
) -> Result<EncodeStats> {
    let sink = format!("filesink location=\"{}\"", path.display().to_string().replace('"', "\\\""));
    encode(&sink, "", frames, fps, klv, false, None)
}

/// Send frames (and optional KLV) as MPEG-TS over UDP to `host:port`
/// (`mpegtsmux alignment=7`, 7 TS packets per datagram). `realtime` paces frames at
/// `fps` by the wall clock (a pause leaves a gap in PTS);
/// otherwise as fast as possible. `ctl` can pause or end the stream early.
pub fn stream_ts_udp(
    host: &str,
    port: u16,
    frames: impl IntoIterator<Item = RgbFrame>,
    fps: u32,
    klv: Option<impl IntoIterator<Item = (u64, Vec<u8>)>>,
    realtime: bool,
    ctl: Option<&StreamControl>,
) -> Result<EncodeStats> {
    stream_ts_udp_via(host, port, None, frames, fps, klv, realtime, ctl)
}

/// [`stream_ts_udp`] with the outgoing interface for multicast (`iface`, e.g. `lo`
/// or `eth0`; `host` is then the group, e.g. `239.255.0.1`). TTL 1: the stream
/// stays on the local link.
#[allow(clippy::too_many_arguments)]
pub fn stream_ts_udp_via(
    host: &str,
    port: u16,
    iface: Option<&str>,
    frames: impl IntoIterator<Item = RgbFrame>,
    fps: u32,
    klv: Option<impl IntoIterator<Item = (u64, Vec<u8>)>>,
    realtime: bool,
    ctl: Option<&StreamControl>,
) -> Result<EncodeStats> {
    let mut sink = format!("udpsink host={host} port={port} sync=false async=false");
    if let Some(i) = iface {
        if i.is_empty() || !i.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(IngestError::Input { what: NAME.into(), message: format!("bad interface name {i:?}") });
        }
        sink.push_str(&format!(" multicast-iface={i} ttl-mc=1 loop=true"));
    }
    encode(&sink, "alignment=7", frames, fps, klv, realtime, ctl)
}

fn frame_pts(i: u64, fps: u32) -> u64 {
    i * 1_000_000_000 / u64::from(fps.max(1))
}

/// `realtime`: pace frames by the wall clock; `ctl`: pause / stop switch.
fn encode(
    sink: &str,
    mux_props: &str,
    frames: impl IntoIterator<Item = RgbFrame>,
    fps: u32,
    klv: Option<impl IntoIterator<Item = (u64, Vec<u8>)>>,
    realtime: bool,
    ctl: Option<&StreamControl>,
) -> Result<EncodeStats> {
    super::init()?;
    let bad = |m: String| IngestError::Input { what: NAME.into(), message: m };
    if fps == 0 {
        return Err(bad("fps must be > 0".into()));
    }
    let mut frames = frames.into_iter().peekable();
    let Some(first) = frames.peek() else { return Err(bad("no frames".into())) };
    let (w, h) = (first.width, first.height);
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w, h)
        .fps(gst::Fraction::new(fps as i32, 1))
        .build()
        .map_err(|e| bad(format!("{w}x{h}: {e}")))?;
    let (p, vsrc, ksrc) = build(&info, sink, mux_props, fps, klv.is_some())?;
    let run = || -> Result<EncodeStats> {
        let mut klv = klv.map(|k| k.into_iter());
        let mut stats = EncodeStats { frames: 0, klv_units: 0 };
        let (start, mut shift) = (Instant::now(), 0u64);
        // PTS of the newest KLV unit pushed; the muxer needs one at or after the
        // current video time on the KLV pad (or EOS) before it can emit video.
        let mut klv_ahead: Option<u64> = None;
        for (i, f) in frames.enumerate() {
            let i = i as u64;
            if realtime && !pace(start, frame_pts(i, fps), &mut shift, ctl) {
                break;
            }
            if ctl.is_some_and(|c| c.stop.load(Ordering::SeqCst)) {
                break;
            }
            let pts = frame_pts(i, fps) + shift;
            if let (Some(k), Some(ks)) = (klv.as_mut(), ksrc.as_ref()) {
                while klv_ahead.is_none_or(|t| t <= pts) {
                    let Some((t, data)) = k.next() else {
                        let _ = ks.end_of_stream();
                        klv = None;
                        break;
                    };
                    push(&p, ks, data, Some(t + shift), None)?;
                    klv_ahead = Some(t + shift);
                    stats.klv_units += 1;
                }
            }
            let data = pad_rows(&info, f).map_err(|m| bad(format!("frame {i}: {m}")))?;
            push(&p, &vsrc, data, Some(pts), Some(frame_pts(i + 1, fps) - frame_pts(i, fps)))?;
            stats.frames += 1;
        }
        for s in std::iter::once(&vsrc).chain(ksrc.as_ref()) {
            let _ = s.end_of_stream();
        }
        wait_eos(&p, Duration::from_secs(60 + stats.frames / u64::from(fps)))?;
        Ok(stats)
    };
    let out = run();
    let _ = p.set_state(gst::State::Null);
    out
}

type Encoder = (gst::Pipeline, gst_app::AppSrc, Option<gst_app::AppSrc>);

/// The encoder pipeline, PLAYING, with its video and (optional) KLV appsrc.
fn build(info: &gst_video::VideoInfo, sink: &str, mux: &str, fps: u32, klv: bool) -> Result<Encoder> {
    let p = super::pipeline::parse(NAME, &launch(info, sink, mux, fps, klv))?;
    let src = |n: &str| {
        p.by_name(n).and_then(|e| e.downcast::<gst_app::AppSrc>().ok()).ok_or_else(|| IngestError::Element {
            name: NAME.into(),
            element: n.into(),
            message: "no appsrc".into(),
        })
    };
    let (vsrc, ksrc) = (src("vsrc")?, if klv { Some(src("ksrc")?) } else { None });
    p.set_state(gst::State::Playing).map_err(|_| IngestError::State { name: NAME.into(), state: "PLAYING".into() })?;
    Ok((p, vsrc, ksrc))
}

fn launch(info: &gst_video::VideoInfo, sink: &str, mux: &str, fps: u32, klv: bool) -> String {
    let caps = info.to_caps().map(|c| c.to_string()).unwrap_or_default();
    let frame_bytes = info.size() as u64;
    let mut t = format!(
        "appsrc name=vsrc format=time block=true \
         max-bytes={} caps=\"{caps}\" ! videoconvert ! x264enc tune=zerolatency \
         speed-preset=ultrafast key-int-max={fps} ! h264parse config-interval=-1 \
         ! mpegtsmux name=mux {mux} ! {sink}",
        frame_bytes * 3
    );
    if klv {
        t.push_str(" appsrc name=ksrc format=time caps=meta/x-klv,parsed=true ! mux.");
    }
    t
}

/// Sleep until frame time `start + shift + pts_ns`; while paused, grow `shift`
/// (ns) so the stream resumes at its normal rate with a gap in PTS.
/// Returns false when the stream should stop.
fn pace(start: Instant, pts_ns: u64, shift: &mut u64, ctl: Option<&StreamControl>) -> bool {
    loop {
        if ctl.is_some_and(|c| c.stop.load(Ordering::SeqCst)) {
            return false;
        }
        let now = Instant::now();
        if ctl.is_some_and(|c| c.paused.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_millis(10));
            *shift += now.elapsed().as_nanos() as u64;
            continue;
        }
        let due = start + Duration::from_nanos(pts_ns + *shift);
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(10)));
    }
}

/// Tightly packed RGB → GStreamer's row layout for `info` (rows padded to 4 bytes).
fn pad_rows(info: &gst_video::VideoInfo, f: RgbFrame) -> std::result::Result<Vec<u8>, String> {
    let (w, h) = (info.width() as usize, info.height() as usize);
    if (f.width as usize, f.height as usize) != (w, h) {
        return Err(format!("size {}x{} differs from the first frame {w}x{h}", f.width, f.height));
    }
    let row = w * 3;
    if f.data.len() != row * h {
        return Err(format!("{} bytes, expected {}", f.data.len(), row * h));
    }
    let stride = info.stride()[0] as usize;
    if stride == row {
        return Ok(f.data);
    }
    let mut out = vec![0u8; info.size()];
    for (y, src) in f.data.chunks_exact(row).enumerate() {
        out[y * stride..y * stride + row].copy_from_slice(src);
    }
    Ok(out)
}

fn push(
    p: &gst::Pipeline,
    src: &gst_app::AppSrc,
    data: Vec<u8>,
    pts_ns: Option<u64>,
    dur_ns: Option<u64>,
) -> Result<()> {
    let mut buf = gst::Buffer::from_mut_slice(data);
    {
        let b = buf.make_mut();
        b.set_pts(pts_ns.map(gst::ClockTime::from_nseconds));
        b.set_duration(dur_ns.map(gst::ClockTime::from_nseconds));
    }
    src.push_buffer(buf).map(|_| ()).map_err(|flow| {
        bus_error(p).unwrap_or_else(|| IngestError::Element {
            name: NAME.into(),
            element: src.name().to_string(),
            message: format!("push failed: {flow:?}"),
        })
    })
}

fn bus_error(p: &gst::Pipeline) -> Option<IngestError> {
    let bus = p.bus()?;
    let msg = bus.timed_pop_filtered(gst::ClockTime::from_mseconds(200), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(IngestError::Bus {
            name: NAME.into(),
            element: e.src().map(|s| s.path_string().to_string()).unwrap_or_default(),
            message: e.error().to_string(),
        }),
        _ => None,
    }
}

fn wait_eos(p: &gst::Pipeline, timeout: Duration) -> Result<()> {
    let bus = p.bus().ok_or_else(|| IngestError::Thread("pipeline without bus".into()))?;
    let t = gst::ClockTime::from_nseconds(timeout.as_nanos() as u64);
    match bus.timed_pop_filtered(t, &[gst::MessageType::Eos, gst::MessageType::Error]) {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => Err(IngestError::Bus {
                name: NAME.into(),
                element: e.src().map(|s| s.path_string().to_string()).unwrap_or_default(),
                message: e.error().to_string(),
            }),
            _ => Ok(()),
        },
        None => Err(IngestError::Timeout { name: NAME.into(), what: "EOS".into(), seconds: timeout.as_secs_f64() }),
    }
}

/// Send a recorded MPEG-TS file over UDP at its own pace (`tsparse` timestamps from the
/// PCR, `udpsink sync=true`), 7 TS packets per datagram, without re-encoding: what a
/// downlink replay looks like to a receiver. `ctl` pauses (the pipeline goes to PAUSED:
/// no datagrams, then the stream resumes where it stopped) or stops it.
pub fn stream_file_udp(path: &Path, host: &str, port: u16, ctl: Option<&StreamControl>) -> Result<()> {
    super::init()?;
    const NAME: &str = "stream_file_udp";
    let loc = path.display().to_string().replace('"', "\\\"");
    let text = format!(
        "filesrc location=\"{loc}\" ! tsparse set-timestamps=true alignment=7 \
         ! udpsink host={host} port={port} sync=true async=false"
    );
    let p = super::pipeline::parse(NAME, &text)?;
    let state_err = |s: &str| IngestError::State { name: NAME.into(), state: s.into() };
    p.set_state(gst::State::Playing).map_err(|_| state_err("PLAYING"))?;
    let bus = p.bus().ok_or_else(|| IngestError::Thread("pipeline without bus".into()))?;
    let mut paused = false;
    let out = loop {
        if ctl.is_some_and(|c| c.stop.load(Ordering::SeqCst)) {
            break Ok(());
        }
        let want_pause = ctl.is_some_and(|c| c.paused.load(Ordering::SeqCst));
        if want_pause != paused {
            let s = if want_pause { gst::State::Paused } else { gst::State::Playing };
            p.set_state(s).map_err(|_| state_err(if want_pause { "PAUSED" } else { "PLAYING" }))?;
            paused = want_pause;
        }
        let msg = bus
            .timed_pop_filtered(gst::ClockTime::from_mseconds(50), &[gst::MessageType::Eos, gst::MessageType::Error]);
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Error(e)) => {
                break Err(IngestError::Bus {
                    name: NAME.into(),
                    element: e.src().map(|s| s.path_string().to_string()).unwrap_or_default(),
                    message: e.error().to_string(),
                })
            }
            Some(_) => break Ok(()),
            None => {}
        }
    };
    let _ = p.set_state(gst::State::Null);
    out
}
