//! Telemetry timeline: decoded ST 0601 packets keyed by PTS and by precision time stamp,
//! queried "telemetry at time t" to join KLV with video frames.
//!
//! Inputs: [`Packet`]s in arrival order, each with a PTS in 90 kHz ticks (the caller
//! unwraps 33-bit PTS with [`super::ts::PtsUnwrap`] for streams longer than 26.5 h; for
//! KLV without PTS the caller passes the video clock, see [`super::ts::KlvUnit`]) and its
//! tag 2 time (microseconds since 1970). Each sample stores the merged state after
//! report-on-change: every tag seen so far on this timeline, this packet's values where
//! present ([`ReportOnChange`] semantics, merged in arrival order).
//!
//! Queries: nearest sample, latest at-or-before, or the bracketing pair, each limited by a
//! maximum gap (in the key's unit) so stale telemetry is never returned silently.
//! Memory is bounded: the oldest samples are dropped beyond `capacity`.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

use super::st0601::{decode_packet, tag, Packet, ReportOnChange};
use super::tags::{Tag, TagValue};
use super::ts::KlvUnit;
use super::Result;

/// A WGS84 position. Heights in metres: `msl_m` above mean sea level, `hae_m` above the
/// ellipsoid, each when the telemetry carries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPosition {
    pub lat_deg: f64,
    pub lon_deg: f64,
    pub msl_m: Option<f64>,
    pub hae_m: Option<f64>,
}

/// The merged telemetry state at one packet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryState {
    tags: BTreeMap<u32, Tag>,
}

impl TelemetryState {
    /// All tags, by number.
    pub fn tags(&self) -> &BTreeMap<u32, Tag> {
        &self.tags
    }

    pub fn get(&self, tag: u32) -> Option<&Tag> {
        self.tags.get(&tag)
    }

    /// A numeric tag's value in its unit (None when absent or a sentinel).
    pub fn f64(&self, tag: u32) -> Option<f64> {
        self.tags.get(&tag)?.value.as_f64()
    }

    /// Tag 2, microseconds since 1970.
    pub fn timestamp_us(&self) -> Option<u64> {
        match self.get(tag::PRECISION_TIME_STAMP)?.value {
            TagValue::UInt(u) => Some(u),
            _ => None,
        }
    }

    /// Frame centre (tags 23/24; MSL elevation 25, HAE 78).
    pub fn frame_centre(&self) -> Option<GeoPosition> {
        self.position(tag::FRAME_CENTER_LATITUDE, tag::FRAME_CENTER_LONGITUDE, tag::FRAME_CENTER_ELEVATION, &[78])
    }

    /// Sensor position (tags 13/14; MSL 15, HAE 104 extended else 75).
    pub fn sensor_position(&self) -> Option<GeoPosition> {
        self.position(
            tag::SENSOR_LATITUDE,
            tag::SENSOR_LONGITUDE,
            tag::SENSOR_TRUE_ALTITUDE,
            &[104, tag::SENSOR_ELLIPSOID_HEIGHT],
        )
    }

    fn position(&self, lat: u32, lon: u32, msl: u32, hae: &[u32]) -> Option<GeoPosition> {
        Some(GeoPosition {
            lat_deg: self.f64(lat)?,
            lon_deg: self.f64(lon)?,
            msl_m: self.f64(msl),
            hae_m: hae.iter().find_map(|&t| self.f64(t)),
        })
    }

    /// Platform heading, pitch, roll in degrees; pitch and roll prefer the full-range
    /// tags 90/91 over 6/7.
    pub fn platform_attitude(&self) -> Option<(f64, f64, f64)> {
        let pitch = self.f64(tag::PLATFORM_PITCH_FULL).or_else(|| self.f64(tag::PLATFORM_PITCH))?;
        let roll = self.f64(tag::PLATFORM_ROLL_FULL).or_else(|| self.f64(tag::PLATFORM_ROLL))?;
        Some((self.f64(tag::PLATFORM_HEADING)?, pitch, roll))
    }

    /// Image corners as (lat, lon) degrees, points 1..4: the full tags 82-89, else frame
    /// centre plus the offsets 26-33.
    pub fn corners(&self) -> Option<[(f64, f64); 4]> {
        let full = |i: u32| Some((self.f64(82 + 2 * i)?, self.f64(83 + 2 * i)?));
        if let (Some(a), Some(b), Some(c), Some(d)) = (full(0), full(1), full(2), full(3)) {
            return Some([a, b, c, d]);
        }
        let fc = self.frame_centre()?;
        let off = |i: u32| Some((fc.lat_deg + self.f64(26 + 2 * i)?, fc.lon_deg + self.f64(27 + 2 * i)?));
        Some([off(0)?, off(1)?, off(2)?, off(3)?])
    }
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// 90 kHz ticks, when known.
    pub pts: Option<u64>,
    /// Tag 2 of the packet, microseconds.
    pub time_us: Option<u64>,
    /// Merged state (report-on-change applied).
    pub state: TelemetryState,
}

/// Samples on both sides of a query time (each within the maximum gap).
#[derive(Debug, Clone, Copy)]
pub struct Bracket<'a> {
    pub before: Option<&'a Sample>,
    pub after: Option<&'a Sample>,
}

/// Telemetry of one KLV stream.
#[derive(Debug, Clone)]
pub struct Timeline {
    samples: BTreeMap<u64, Sample>,
    by_pts: BTreeMap<u64, u64>,
    by_time: BTreeMap<u64, u64>,
    roc: ReportOnChange,
    next_seq: u64,
    capacity: usize,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl Timeline {
    /// A timeline keeping at most `capacity` samples (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: BTreeMap::new(),
            by_pts: BTreeMap::new(),
            by_time: BTreeMap::new(),
            roc: ReportOnChange::new(),
            next_seq: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Adds a packet (arrival order defines report-on-change merging).
    pub fn insert(&mut self, pts: Option<u64>, packet: &Packet) {
        let merged = self.roc.apply(packet);
        let state = TelemetryState { tags: merged.into_iter().map(|t| (t.tag, t)).collect() };
        let time_us = packet.timestamp_us();
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(p) = pts {
            self.by_pts.insert(p, seq);
        }
        if let Some(t) = time_us {
            self.by_time.insert(t, seq);
        }
        self.samples.insert(seq, Sample { pts, time_us, state });
        while self.samples.len() > self.capacity {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        let Some((seq, s)) = self.samples.pop_first() else {
            return;
        };
        if let Some(p) = s.pts {
            if self.by_pts.get(&p) == Some(&seq) {
                self.by_pts.remove(&p);
            }
        }
        if let Some(t) = s.time_us {
            if self.by_time.get(&t) == Some(&seq) {
                self.by_time.remove(&t);
            }
        }
    }

    /// Decodes a demultiplexed unit and adds it at [`KlvUnit::clock`]. A rejected packet
    /// (checksum, key, structure) is returned as the error for the caller to count.
    pub fn insert_unit(&mut self, unit: &KlvUnit) -> Result<()> {
        let packet = decode_packet(&unit.bytes)?;
        self.insert(unit.clock(), &packet);
        Ok(())
    }

    /// The most recently inserted sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.last_key_value().map(|(_, s)| s)
    }

    /// The sample whose PTS is nearest to `pts`, if within `max_gap` ticks.
    pub fn nearest_pts(&self, pts: u64, max_gap: u64) -> Option<&Sample> {
        self.nearest(&self.by_pts, pts, max_gap)
    }

    /// The sample whose tag 2 time is nearest to `time_us`, if within `max_gap_us`.
    pub fn nearest_time(&self, time_us: u64, max_gap_us: u64) -> Option<&Sample> {
        self.nearest(&self.by_time, time_us, max_gap_us)
    }

    /// The latest sample with PTS <= `pts`, if within `max_gap` ticks.
    pub fn at_or_before_pts(&self, pts: u64, max_gap: u64) -> Option<&Sample> {
        self.bracket(&self.by_pts, pts, max_gap).before
    }

    /// The samples with PTS <= `pts` and > `pts`, each within `max_gap` ticks.
    pub fn bracket_pts(&self, pts: u64, max_gap: u64) -> Bracket<'_> {
        self.bracket(&self.by_pts, pts, max_gap)
    }

    /// The samples with time <= `time_us` and > `time_us`, each within `max_gap_us`.
    pub fn bracket_time(&self, time_us: u64, max_gap_us: u64) -> Bracket<'_> {
        self.bracket(&self.by_time, time_us, max_gap_us)
    }

    fn bracket(&self, index: &BTreeMap<u64, u64>, t: u64, max_gap: u64) -> Bracket<'_> {
        let within = |(&k, seq): (&u64, &u64)| (k.abs_diff(t) <= max_gap).then_some(*seq);
        let before = index.range(..=t).next_back().and_then(within);
        let after = index.range((Excluded(t), Unbounded)).next().and_then(within);
        Bracket { before: before.and_then(|s| self.samples.get(&s)), after: after.and_then(|s| self.samples.get(&s)) }
    }

    fn nearest(&self, index: &BTreeMap<u64, u64>, t: u64, max_gap: u64) -> Option<&Sample> {
        let before = index.range((Unbounded, Included(t))).next_back();
        let after = index.range((Excluded(t), Unbounded)).next();
        let best = match (before, after) {
            (Some(b), Some(a)) if a.0 - t < t - b.0 => a,
            (Some(b), _) => b,
            (None, Some(a)) => a,
            (None, None) => return None,
        };
        (best.0.abs_diff(t) <= max_gap).then(|| self.samples.get(best.1))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(time: u64, tags: &[(u32, f64)]) -> Packet {
        let mut all = vec![Tag::new(2, TagValue::UInt(time))];
        all.extend(tags.iter().map(|&(t, v)| Tag::new(t, TagValue::Float(v))));
        Packet { tags: all, checksum: 0 }
    }

    fn timeline() -> Timeline {
        let mut tl = Timeline::new(100);
        tl.insert(Some(1000), &packet(10_000, &[(23, 48.0), (24, 11.0), (25, 500.0)]));
        tl.insert(Some(4000), &packet(43_333, &[(23, 48.1)])); // 24, 25 omitted
        tl.insert(Some(7000), &packet(76_667, &[(24, 11.2)]));
        tl
    }

    #[test]
    fn report_on_change_is_applied() {
        let tl = timeline();
        let s = tl.nearest_pts(4000, 0).unwrap();
        let fc = s.state.frame_centre().unwrap();
        assert_eq!((fc.lat_deg, fc.lon_deg, fc.msl_m), (48.1, 11.0, Some(500.0)));
        assert_eq!(s.state.timestamp_us(), Some(43_333));
        let last = tl.nearest_pts(7000, 0).unwrap().state.frame_centre().unwrap();
        assert_eq!((last.lat_deg, last.lon_deg), (48.1, 11.2));
    }

    #[test]
    fn nearest_and_bracketing_with_max_gap() {
        let tl = timeline();
        assert_eq!(tl.nearest_pts(2400, 3000).unwrap().pts, Some(1000));
        assert_eq!(tl.nearest_pts(2600, 3000).unwrap().pts, Some(4000));
        assert!(tl.nearest_pts(20_000, 3000).is_none());
        assert!(tl.nearest_pts(0, 999).is_none());
        assert_eq!(tl.at_or_before_pts(6999, 3000).unwrap().pts, Some(4000));
        assert!(tl.at_or_before_pts(500, 3000).is_none());
        let b = tl.bracket_pts(5000, 3000);
        assert_eq!((b.before.unwrap().pts, b.after.unwrap().pts), (Some(4000), Some(7000)));
        let b = tl.bracket_pts(5000, 1500);
        assert!(b.before.is_some() && b.after.is_none());
        assert_eq!(tl.nearest_time(40_000, 5_000).unwrap().pts, Some(4000));
        let b = tl.bracket_time(76_667, 0);
        assert_eq!(b.before.unwrap().time_us, Some(76_667));
    }

    #[test]
    fn capacity_evicts_oldest_but_keeps_merged_state() {
        let mut tl = Timeline::new(2);
        tl.insert(Some(1), &packet(1, &[(13, 1.0), (14, 2.0)]));
        tl.insert(Some(2), &packet(2, &[(13, 1.5)]));
        tl.insert(Some(3), &packet(3, &[]));
        assert_eq!(tl.len(), 2);
        assert!(tl.nearest_pts(1, 0).is_none());
        let s = &tl.nearest_pts(3, 0).unwrap().state;
        assert_eq!((s.f64(13), s.f64(14)), (Some(1.5), Some(2.0)));
        assert!(tl.nearest_time(1, 0).is_none());
    }

    #[test]
    fn getters_use_full_range_and_offset_corners() {
        let p = packet(
            1,
            &[(5, 90.0), (6, 1.0), (7, 2.0), (91, 2.5), (23, 10.0), (24, 20.0)]
                .into_iter()
                .chain((26..=33).map(|t| (t, 0.01 * (t - 25) as f64)))
                .collect::<Vec<_>>(),
        );
        let mut tl = Timeline::default();
        tl.insert(None, &p);
        let s = &tl.nearest_time(1, 0).unwrap().state;
        assert_eq!(s.platform_attitude(), Some((90.0, 1.0, 2.5)));
        let c = s.corners().unwrap();
        assert!((c[0].0 - 10.01).abs() < 1e-12 && (c[3].1 - 20.08).abs() < 1e-12);
        assert!(s.sensor_position().is_none());
    }
}
