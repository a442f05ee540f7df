//! Source kinds, their launch-text templates (`pipelines/*.pipeline`) and pipeline
//! construction.
//!
//! A template is GStreamer launch text with `{name}` placeholders; lines starting
//! with `#` are comments. Every template ends in an appsink named `video` (RGB) and,
//! where the source can carry KLV, an appsink named `klv` (`meta/x-klv`). Dynamic
//! demuxer pads (tsdemux, qtdemux, rtspsrc — always named `demux`) are linked in
//! code by caps: video to the queue `vq`, KLV to the queue `kq`.
//!
//! The templates are compiled in; [`SourceConfig::pipeline_dir`] can point at a
//! folder with edited copies, read at every (re)start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

use super::{IngestError, Result};

/// Video codec of the source: picks the decoder (and RTP depayloader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// `decodebin` picks the decoder from the caps (H.264 or H.265).
    #[default]
    Auto,
    H264,
    H265,
}

/// Where the video comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceKind {
    /// MPEG-TS over UDP. `address` is the local bind address for unicast
    /// (e.g. `0.0.0.0`) or the group for multicast (e.g. `239.1.1.1`).
    UdpTs { address: String, port: u16, multicast_iface: Option<String> },
    /// RTSP client; `tcp` forces interleaved TCP instead of UDP transport. The
    /// depayloader follows [`Codec`] (`Auto` is taken as H.264 here).
    Rtsp { location: String, latency_ms: u32, tcp: bool },
    /// RTSP whose one RTP stream is MPEG-TS (payload MP2T): video and KLV arrive
    /// together and are demuxed as for UDP; the codec is found by the demuxer.
    RtspTs { location: String, latency_ms: u32, tcp: bool },
    /// A recorded MPEG-TS (`.ts`, `.m2ts`, `.mpg`) or MP4/MOV file.
    File { path: PathBuf },
    /// `videotestsrc`; `num_buffers: None` runs until stopped.
    Test { width: u32, height: u32, fps: u32, num_buffers: Option<u32>, live: bool },
}

impl SourceKind {
    /// Template file name in `pipelines/`.
    pub fn template_name(&self) -> &'static str {
        match self {
            SourceKind::UdpTs { .. } => "udp_ts.pipeline",
            SourceKind::Rtsp { .. } => "rtsp.pipeline",
            SourceKind::RtspTs { .. } => "rtsp_ts.pipeline",
            SourceKind::File { .. } => "file.pipeline",
            SourceKind::Test { .. } => "test.pipeline",
        }
    }

    /// Live network sources never end; files and finite test patterns do.
    pub fn is_network(&self) -> bool {
        matches!(self, SourceKind::UdpTs { .. } | SourceKind::Rtsp { .. } | SourceKind::RtspTs { .. })
    }
}

/// Everything needed to start a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceConfig {
    pub kind: SourceKind,
    #[serde(default)]
    pub codec: Codec,
    /// Output size (width, height); frames are scaled before the RGB conversion.
    /// `None` keeps the decoded size.
    pub output_size: Option<(u32, u32)>,
    /// appsink `sync`: true releases frames at the stream's pace (real-time replay of
    /// a file; adds the demuxer/jitter latency on live sources), false as soon as
    /// decoded.
    pub sync: bool,
    /// Frames held by the ring (latest wins).
    pub ring_capacity: usize,
    /// Bound of the KLV channel (oldest units dropped and counted when full).
    pub klv_capacity: usize,
    /// No frame for this long: UDP → `Stalled` (pipeline kept); others → rebuild.
    pub stall_timeout_ms: u64,
    /// First reconnect delay; doubles per attempt up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Give up (state `Failed`) after this many consecutive failed attempts.
    pub max_reconnects: Option<u32>,
    /// appsink `max-buffers` of the video sink.
    pub appsink_max_buffers: u32,
    /// Folder with replacement `*.pipeline` templates.
    pub pipeline_dir: Option<PathBuf>,
    /// Start with the frame ring held at PTS 0 (see `FrameRing::hold`): for replays
    /// that must see the first frame. Never for live sources.
    #[serde(default)]
    pub hold_from_start: bool,
}

impl SourceConfig {
    /// Defaults: frames as soon as decoded (`sync = false`: lowest latency for live
    /// sources, as fast as possible for files), 8-frame ring, 2 s stall timeout.
    pub fn new(kind: SourceKind) -> Self {
        SourceConfig {
            kind,
            codec: Codec::Auto,
            output_size: None,
            sync: false,
            ring_capacity: 8,
            klv_capacity: 256,
            stall_timeout_ms: 2000,
            backoff_initial_ms: 500,
            backoff_max_ms: 10_000,
            max_reconnects: None,
            appsink_max_buffers: 2,
            pipeline_dir: None,
            hold_from_start: false,
        }
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }

    /// Delay before reconnect attempt `attempt` (1-based): initial · 2^(attempt−1), capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(self.backoff_initial_ms.saturating_mul(factor).min(self.backoff_max_ms))
    }
}

const UDP_TS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/udp_ts.pipeline"));
const RTSP: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/rtsp.pipeline"));
const RTSP_TS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/rtsp_ts.pipeline"));
const FILE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/file.pipeline"));
const TEST: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/test.pipeline"));

/// The template text for a kind: from `dir` when given, else the built-in copy.
pub fn template(kind: &SourceKind, dir: Option<&Path>) -> Result<String> {
    let name = kind.template_name();
    if let Some(dir) = dir {
        let path = dir.join(name);
        return std::fs::read_to_string(&path)
            .map_err(|source| IngestError::Io { path: path.display().to_string(), source });
    }
    Ok(match kind {
        SourceKind::UdpTs { .. } => UDP_TS,
        SourceKind::Rtsp { .. } => RTSP,
        SourceKind::RtspTs { .. } => RTSP_TS,
        SourceKind::File { .. } => FILE,
        SourceKind::Test { .. } => TEST,
    }
    .to_string())
}

/// Quote a value for launch text (paths, URLs).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn decoder(codec: Codec) -> &'static str {
    match codec {
        Codec::Auto => "decodebin",
        Codec::H264 => "h264parse ! avdec_h264",
        Codec::H265 => "h265parse ! avdec_h265",
    }
}

fn file_demuxer(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "mov" | "m4v" => "qtdemux",
        _ => "tsdemux",
    }
}

/// Placeholder values for a configuration.
pub fn placeholders(cfg: &SourceConfig) -> HashMap<&'static str, String> {
    let mut m = HashMap::new();
    let scale = cfg
        .output_size
        .map(|(w, h)| format!("video/x-raw,width={w},height={h},pixel-aspect-ratio=1/1 !"))
        .unwrap_or_default();
    m.insert("scale_caps", scale);
    m.insert("decode", decoder(cfg.codec).to_string());
    m.insert("max_buffers", cfg.appsink_max_buffers.max(1).to_string());
    m.insert("sync", cfg.sync.to_string());
    m.insert("drop", "true".to_string());
    match &cfg.kind {
        SourceKind::UdpTs { address, port, multicast_iface } => {
            m.insert("address", address.clone());
            m.insert("port", port.to_string());
            let extra = multicast_iface.as_ref().map(|i| format!("multicast-iface={i}"));
            m.insert("udp_extra", extra.unwrap_or_default());
        }
        SourceKind::Rtsp { location, latency_ms, tcp } => {
            m.insert("location", quoted(location));
            m.insert("latency_ms", latency_ms.to_string());
            m.insert("protocols", if *tcp { "tcp" } else { "udp+tcp" }.to_string());
            let depay = if cfg.codec == Codec::H265 { "rtph265depay" } else { "rtph264depay" };
            m.insert("depay", depay.to_string());
            if cfg.codec == Codec::Auto {
                // decodebin after a depayloader: H.264 unless configured otherwise.
                m.insert("decode", decoder(Codec::H264).to_string());
            }
        }
        SourceKind::RtspTs { location, latency_ms, tcp } => {
            m.insert("location", quoted(location));
            m.insert("latency_ms", latency_ms.to_string());
            m.insert("protocols", if *tcp { "tcp" } else { "udp+tcp" }.to_string());
        }
        SourceKind::File { path } => {
            m.insert("location", quoted(&path.display().to_string()));
            m.insert("demux", file_demuxer(path).to_string());
        }
        SourceKind::Test { width, height, fps, num_buffers, live } => {
            m.insert("src_width", width.to_string());
            m.insert("src_height", height.to_string());
            m.insert("fps", fps.to_string());
            m.insert("num_buffers", num_buffers.map_or(-1, i64::from).to_string());
            m.insert("live", live.to_string());
            m.insert("pattern", "ball".to_string());
        }
    }
    m
}

/// Drop `#` comment lines and replace every `{name}`; an unknown name is an error.
pub fn fill(name: &str, text: &str, values: &HashMap<&'static str, String>) -> Result<String> {
    let err = |message: String| IngestError::Template { name: name.to_string(), message };
    let body: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let body = body.join("\n");
    let mut out = String::with_capacity(body.len());
    let mut rest = body.as_str();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or_else(|| err("unclosed '{'".into()))? + open;
        let key = &rest[open + 1..close];
        let value = values.get(key).ok_or_else(|| err(format!("unknown placeholder {{{key}}}")))?;
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The filled launch text for a configuration.
pub fn launch_text(cfg: &SourceConfig) -> Result<String> {
    let text = template(&cfg.kind, cfg.pipeline_dir.as_deref())?;
    fill(cfg.kind.template_name(), &text, &placeholders(cfg))
}

/// Parse launch text into a pipeline.
pub fn parse(name: &str, text: &str) -> Result<gst::Pipeline> {
    super::init()?;
    let element =
        gst::parse::launch(text).map_err(|e| IngestError::Parse { name: name.to_string(), message: e.to_string() })?;
    element.downcast::<gst::Pipeline>().map_err(|_| IngestError::Parse {
        name: name.to_string(),
        message: "launch text is not a pipeline (single element?)".into(),
    })
}

/// What a dynamic pad carries, judged from its caps.
fn pad_target(caps: &gst::CapsRef) -> Option<&'static str> {
    let s = caps.structure(0)?;
    let name = s.name().as_str();
    if name.starts_with("video/") {
        return Some("vq");
    }
    if name == "meta/x-klv" {
        return Some("kq");
    }
    if name == "application/x-rtp" {
        let media = s.get::<&str>("media").unwrap_or("");
        let enc = s.get::<&str>("encoding-name").unwrap_or("");
        if enc.eq_ignore_ascii_case("SMPTE336M") {
            return Some("kq");
        }
        if enc.eq_ignore_ascii_case("MP2T") {
            return Some("tsdepay");
        }
        if media == "video" {
            return Some("vq");
        }
    }
    None
}

/// Link every pad `el` adds to the sink pad of the element [`pad_target`] names.
fn link_pads_by_caps(pipeline: &gst::Pipeline, el: &gst::Element) {
    let weak = pipeline.downgrade();
    el.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else { return };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(target) = pad_target(&caps) else {
            tracing::debug!(pad = %pad.name(), %caps, "ingest: ignoring demuxer pad");
            return;
        };
        let Some(sink) = pipeline.by_name(target).and_then(|q| q.static_pad("sink")) else {
            tracing::debug!(pad = %pad.name(), target, "ingest: no branch for pad");
            return;
        };
        if sink.is_linked() {
            tracing::debug!(pad = %pad.name(), target, "ingest: branch already linked");
            return;
        }
        match pad.link(&sink) {
            Ok(_) => tracing::debug!(pad = %pad.name(), target, %caps, "ingest: linked"),
            Err(e) => tracing::warn!(pad = %pad.name(), target, ?e, "ingest: pad link failed"),
        }
    });
}

/// Link the dynamic pads of `rtsp` and `demux` (when present) as they appear: to the
/// queues `vq` / `kq`, or an MP2T RTP stream to `tsdepay`.
pub fn link_dynamic_pads(pipeline: &gst::Pipeline) {
    // `rtsp` (rtspsrc in front of a TS demuxer) and `demux` (a demuxer, or rtspsrc
    // itself in rtsp.pipeline) get the same handler: each pad goes to the branch or
    // element its caps call for.
    for name in ["rtsp", "demux"] {
        if let Some(el) = pipeline.by_name(name) {
            link_pads_by_caps(pipeline, &el);
        }
    }
    let Some(demux) = pipeline.by_name("demux") else { return };
    // A branch without a pad (no KLV in this stream) would never see EOS, and the
    // pipeline only posts EOS once every sink has: end those branches now.
    let weak = pipeline.downgrade();
    demux.connect_no_more_pads(move |_| {
        let Some(pipeline) = weak.upgrade() else { return };
        for q in ["vq", "kq"] {
            if let Some(sink) = pipeline.by_name(q).and_then(|q| q.static_pad("sink")) {
                if !sink.is_linked() {
                    tracing::debug!(branch = q, "ingest: no pad for branch, sending EOS");
                    sink.send_event(gst::event::Eos::new());
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_templates_fill_and_parse() {
        let kinds = [
            SourceKind::UdpTs { address: "239.1.2.3".into(), port: 5600, multicast_iface: None },
            SourceKind::Rtsp { location: "rtsp://127.0.0.1:8554/x".into(), latency_ms: 200, tcp: true },
            SourceKind::RtspTs { location: "rtsp://127.0.0.1:8554/x".into(), latency_ms: 200, tcp: false },
            SourceKind::File { path: "/tmp/a b\".ts".into() },
            SourceKind::File { path: "/tmp/x.mp4".into() },
            SourceKind::Test { width: 64, height: 48, fps: 30, num_buffers: Some(3), live: false },
        ];
        for kind in kinds {
            let mut cfg = SourceConfig::new(kind);
            cfg.output_size = Some((32, 24));
            let text = launch_text(&cfg).expect("fill");
            assert!(!text.contains('{') && !text.contains('#'), "{text}");
            let p = parse(cfg.kind.template_name(), &text).expect("parse");
            assert!(p.by_name("video").is_some(), "{text}");
            assert_eq!(p.by_name("klv").is_some(), !matches!(cfg.kind, SourceKind::Test { .. }));
        }
    }

    #[test]
    fn fill_rejects_unknown_placeholder_and_backoff_caps() {
        let vals = placeholders(&SourceConfig::new(SourceKind::File { path: "a.ts".into() }));
        let e = fill("x", "filesrc location={nope}", &vals).unwrap_err();
        assert!(e.to_string().contains("{nope}"), "{e}");
        assert!(fill("x", "a {b", &vals).is_err());
        let cfg = SourceConfig::new(SourceKind::File { path: "a.ts".into() });
        let ms: Vec<u128> = (1..=7).map(|a| cfg.backoff(a).as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(cfg.backoff(1000).as_millis(), 10_000);
    }
}
