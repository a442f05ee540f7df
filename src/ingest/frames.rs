//! Decoded RGB frames and the bounded ring that hands them from the appsink
//! streaming thread to consumers.
//!
//! * [`Frame`]: one decoded picture, tightly packed 8-bit RGB (`width * 3` bytes per
//!   row, no stride padding), with its presentation timestamp in nanoseconds (the
//!   pipeline's buffer PTS, the same time base as the KLV units of the same source)
//!   and a sequence number assigned on arrival.
//! * [`FrameRing`]: capacity `N`, latest wins: a push into a full ring evicts the
//!   oldest frame and counts it as dropped, so memory stays flat whatever the consumer
//!   does. Lookup by PTS ([`FrameRing::get_at`]) or newest ([`FrameRing::latest`]);
//!   [`FrameRing::wait_newer`] blocks (with a timeout) until a newer frame arrives.
//!
//! The stride-aware copy out of a GStreamer buffer happens exactly once, in
//! [`frame_from_sample`], on the streaming thread; consumers share `Arc<Frame>`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

/// One decoded frame: tightly packed RGB (`data.len() == width * height * 3`).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Presentation timestamp in ns (buffer PTS; DTS, then 0, when it has none).
    pub pts_ns: u64,
    pub width: u32,
    pub height: u32,
    /// Row-major RGB, 3 bytes per pixel, no row padding.
    pub data: Bytes,
    /// Arrival order within one source, starting at 0 (set by [`FrameRing::push`]).
    pub seq: u64,
    /// When the appsink callback produced this frame (for latency measurement).
    pub arrived: Instant,
}

impl Frame {
    /// RGB of pixel (x, y), or `None` outside the frame.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        let p = self.data.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }
}

/// Counters of a [`FrameRing`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RingCounters {
    /// Frames pushed since creation.
    pub received: u64,
    /// Frames evicted unread because the ring was full.
    pub dropped: u64,
    /// Frames currently held.
    pub len: usize,
}

struct Inner {
    frames: VecDeque<Arc<Frame>>,
    received: u64,
    dropped: u64,
    /// Arrival instants within the last second, for the fps estimate.
    arrivals: VecDeque<Instant>,
    /// Replay gate: frames with a later PTS wait in [`FrameRing::push`] (see [`FrameRing::hold`]).
    hold: Option<u64>,
    /// A push is waiting at the hold (with this frame's PTS).
    held: bool,
    held_pts: Option<u64>,
}

/// Bounded ring of recent frames, latest wins. Shared as `Arc<FrameRing>`.
pub struct FrameRing {
    capacity: usize,
    inner: Mutex<Inner>,
    newer: Condvar,
}

impl std::fmt::Debug for FrameRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRing").field("capacity", &self.capacity).field("counters", &self.counters()).finish()
    }
}

const FPS_WINDOW: Duration = Duration::from_secs(1);

impl FrameRing {
    /// A ring holding at most `capacity` frames (at least 1).
    pub fn new(capacity: usize) -> Self {
        FrameRing {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                frames: VecDeque::with_capacity(capacity.max(1)),
                received: 0,
                dropped: 0,
                arrivals: VecDeque::new(),
                hold: None,
                held: false,
                held_pts: None,
            }),
            newer: Condvar::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    // A poisoned lock only means another thread panicked while holding it; the
    // ring's data stays consistent (every mutation is a single push/pop), so go on.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a frame (its `seq` is overwritten with the arrival number); evicts and
    /// counts the oldest frame when full. Returns the assigned sequence number.
    /// With a hold set (see [`FrameRing::hold`]), a frame later than the hold waits here
    /// (back-pressure on the streaming thread) until the hold moves past it or is released.
    pub fn push(&self, mut frame: Frame) -> u64 {
        let mut g = self.lock();
        while g.hold.is_some_and(|h| frame.pts_ns > h) {
            g.held = true;
            g.held_pts = Some(frame.pts_ns);
            self.newer.notify_all();
            g = self.newer.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.held = false;
        g.held_pts = None;
        frame.seq = g.received;
        let seq = frame.seq;
        g.received += 1;
        if g.frames.len() >= self.capacity {
            g.frames.pop_front();
            g.dropped += 1;
        }
        g.frames.push_back(Arc::new(frame));
        let now = Instant::now();
        g.arrivals.push_back(now);
        while g.arrivals.front().is_some_and(|t| now.duration_since(*t) > FPS_WINDOW) {
            g.arrivals.pop_front();
        }
        drop(g);
        self.newer.notify_all();
        seq
    }

    /// Replay pacing: `Some(pts)` makes [`FrameRing::push`] block for frames with a PTS
    /// after `pts`, so a consumer slower than the decoder still sees every frame it asks
    /// for (files only: a live source must never be held). `None` releases every waiter.
    pub fn hold(&self, pts_ns: Option<u64>) {
        let mut g = self.lock();
        g.hold = pts_ns;
        // A producer still at the hold re-announces itself after re-checking the new one.
        g.held = false;
        drop(g);
        self.newer.notify_all();
    }

    /// The current hold.
    pub fn hold_value(&self) -> Option<u64> {
        self.lock().hold
    }

    /// PTS of the frame waiting at the hold, if one is.
    pub fn waiting_pts(&self) -> Option<u64> {
        let g = self.lock();
        g.held_pts.filter(|_| g.held)
    }

    /// Wait up to `timeout` for a frame with PTS ≥ `pts_ns` (or for the producer to stop at
    /// the hold) and return the held frame nearest to `pts_ns` (for replay: the frame a
    /// prompt names).
    pub fn wait_for_pts(&self, pts_ns: u64, timeout: Duration) -> Option<Arc<Frame>> {
        let g = self.lock();
        let reached = |g: &Inner| g.held || g.frames.back().is_some_and(|f| f.pts_ns >= pts_ns);
        let (g, _) = self.newer.wait_timeout_while(g, timeout, |g| !reached(g)).unwrap_or_else(|p| p.into_inner());
        g.frames.iter().min_by_key(|f| (f.pts_ns.abs_diff(pts_ns), f.pts_ns)).cloned()
    }

    /// The newest frame.
    pub fn latest(&self) -> Option<Arc<Frame>> {
        self.lock().frames.back().cloned()
    }

    /// The frame whose PTS is nearest to `pts_ns`, if within `tolerance_ns`
    /// (ties go to the earlier frame).
    pub fn get_at(&self, pts_ns: u64, tolerance_ns: u64) -> Option<Arc<Frame>> {
        let g = self.lock();
        g.frames
            .iter()
            .map(|f| (f.pts_ns.abs_diff(pts_ns), f))
            .filter(|(d, _)| *d <= tolerance_ns)
            .min_by_key(|(d, f)| (*d, f.pts_ns))
            .map(|(_, f)| f.clone())
    }

    /// Wait up to `timeout` for a frame with `seq > after` (`None`: any frame) and
    /// return the newest such frame.
    pub fn wait_newer(&self, after: Option<u64>, timeout: Duration) -> Option<Arc<Frame>> {
        let newer = |g: &Inner| g.frames.back().filter(|f| after.is_none_or(|a| f.seq > a)).cloned();
        let g = self.lock();
        let (g, _) =
            self.newer.wait_timeout_while(g, timeout, |g| newer(g).is_none()).unwrap_or_else(|p| p.into_inner());
        newer(&g)
    }

    /// All held frames, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Frame>> {
        self.lock().frames.iter().cloned().collect()
    }

    pub fn counters(&self) -> RingCounters {
        let g = self.lock();
        RingCounters { received: g.received, dropped: g.dropped, len: g.frames.len() }
    }

    /// Frames received during the last second (0 when the source has stalled).
    pub fn fps(&self) -> f64 {
        let g = self.lock();
        let now = Instant::now();
        g.arrivals.iter().filter(|t| now.duration_since(**t) <= FPS_WINDOW).count() as f64 / FPS_WINDOW.as_secs_f64()
    }
}

/// Copy an RGB sample out of an appsink into a tightly packed [`Frame`]
/// (stride-aware, one copy). `seq` is left 0; [`FrameRing::push`] assigns it.
pub fn frame_from_sample(sample: &gst::Sample) -> Result<Frame, String> {
    let caps = sample.caps().ok_or("sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| format!("caps {caps}: {e}"))?;
    if info.format() != gst_video::VideoFormat::Rgb {
        return Err(format!("expected RGB, got {:?}", info.format()));
    }
    let buffer = sample.buffer().ok_or("sample without buffer")?;
    let vframe = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|e| format!("map video frame: {e}"))?;
    let (w, h) = (info.width() as usize, info.height() as usize);
    let stride = *vframe.plane_stride().first().ok_or("no plane stride")? as usize;
    let src = vframe.plane_data(0).map_err(|e| format!("plane 0: {e}"))?;
    let row = w * 3;
    if stride < row || src.len() < stride * (h.max(1) - 1) + row {
        return Err(format!("plane too small: stride {stride}, len {}, {w}x{h}", src.len()));
    }
    let mut data = Vec::with_capacity(row * h);
    for y in 0..h {
        data.extend_from_slice(&src[y * stride..y * stride + row]);
    }
    let pts = buffer.pts().or(buffer.dts()).map(|t| t.nseconds()).unwrap_or(0);
    Ok(Frame {
        pts_ns: pts,
        width: w as u32,
        height: h as u32,
        data: Bytes::from(data),
        seq: 0,
        arrived: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pts_ns: u64) -> Frame {
        Frame {
            pts_ns,
            width: 2,
            height: 1,
            data: Bytes::from(vec![1, 2, 3, 4, 5, 6]),
            seq: 99,
            arrived: Instant::now(),
        }
    }

    #[test]
    fn ring_bounded_and_counts_drops_under_fast_producer() {
        let ring = Arc::new(FrameRing::new(4));
        let producer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    ring.push(frame(i * 1000));
                }
            })
        };
        let mut max_len = 0;
        let mut last_seq = None;
        while !producer.is_finished() {
            if let Some(f) = ring.wait_newer(last_seq, Duration::from_millis(50)) {
                assert!(last_seq.is_none_or(|s| f.seq > s), "seq must increase");
                last_seq = Some(f.seq);
            }
            max_len = max_len.max(ring.counters().len);
        }
        producer.join().expect("producer");
        let c = ring.counters();
        assert!(max_len <= 4 && c.len == 4);
        assert_eq!(c.received, 10_000);
        assert_eq!(c.dropped, 10_000 - 4);
        // Latest wins: the held frames are the last four, in order.
        let seqs: Vec<u64> = ring.snapshot().iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![9996, 9997, 9998, 9999]);
        assert_eq!(ring.latest().map(|f| f.pts_ns), Some(9_999_000));
    }

    #[test]
    fn get_at_picks_nearest_within_tolerance() {
        let ring = FrameRing::new(8);
        for pts in [0u64, 33_000_000, 66_000_000, 100_000_000] {
            ring.push(frame(pts));
        }
        let at = |p, tol| ring.get_at(p, tol).map(|f| f.pts_ns);
        assert_eq!(at(40_000_000, 20_000_000), Some(33_000_000));
        assert_eq!(at(60_000_000, 20_000_000), Some(66_000_000));
        assert_eq!(at(99_999_999, 0), None);
        assert_eq!(at(100_000_000, 0), Some(100_000_000));
        assert_eq!(at(200_000_000, 50_000_000), None);
        // Equidistant: the earlier frame.
        assert_eq!(at(49_500_000, 20_000_000), Some(33_000_000));
    }

    #[test]
    fn wait_newer_times_out_and_pixel_reads_rgb() {
        let ring = FrameRing::new(2);
        let t = Instant::now();
        assert!(ring.wait_newer(None, Duration::from_millis(30)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(30));
        let seq = ring.push(frame(5));
        assert_eq!(seq, 0);
        assert!(ring.wait_newer(Some(0), Duration::from_millis(10)).is_none());
        let f = ring.wait_newer(None, Duration::from_millis(10)).expect("frame");
        assert_eq!(f.pixel(1, 0), Some([4, 5, 6]));
        assert_eq!(f.pixel(2, 0), None);
    }
}
