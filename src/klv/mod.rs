//! MISB ST 0601 (UAS Datalink Local Set) telemetry: decode, encode, demultiplex, join.
//!
//! Pure Rust, no GStreamer: everything here works on byte slices and is safe to feed with
//! hostile input (every declared length is checked against the bytes actually present, no
//! allocation is sized from a declared length, and nothing panics on bad data).
//!
//! Data flow:
//! ```text
//! MPEG-TS bytes ──ts::TsDemux──▶ KlvUnit {pid, pts (90 kHz), one KLV packet}
//!                                   │
//!                                   ▼ st0601::decode_packet (checksum verified)
//!                                Packet {tags: [Tag {tag, name, unit, value}]}
//!                                   │
//!                                   ▼ timeline::Timeline (report-on-change merge)
//!                                telemetry at PTS t / at precision time t
//! ```
//!
//! Modules:
//! - [`ber`]: BER short/long-form lengths and BER-OID tag numbers (ST 0601 §6, X.690).
//! - [`imapb`]: MISB ST 1201 IMAPB float ↔ integer mapping and its special values.
//! - [`tags`]: the ST 0601.17 tag table (number, name, unit, encoding) and [`tags::TagValue`];
//!   [`codec`] turns one tag's bytes into a value and back.
//! - [`st0601`]: the 16-byte Universal Key, the tag 1 checksum, packet decode/encode and
//!   the report-on-change cache [`st0601::ReportOnChange`].
//! - [`ts`]: a minimal MPEG-TS demultiplexer (PAT, PMT, PES, PTS) that finds asynchronous
//!   (stream_type 0x06 + "KLVA") and synchronous (stream_type 0x15, metadata AU cells) KLV.
//!   [`mpeg`] holds the CRC-32, PTS field and PTS unwrap helpers.
//! - [`timeline`]: telemetry keyed by PTS and by precision time stamp, nearest/bracketing
//!   queries with a maximum gap.
//! - [`json`]: one JSON object per packet, and [`json::dump_ts`] behind `smgeo klv dump`.
//! - [`cli`]: the clap arguments of `smgeo klv dump`.
//!
//! Units: angles in degrees, distances/heights in metres, speeds in m/s, time stamps in
//! microseconds since 1970-01-01 (MISB precision time, UTC without leap seconds), PTS in
//! 90 kHz ticks. Scalings follow MISB ST 0601.17 and ST 1201.4; the golden test checks them
//! against the KWIVER decode of a real sample (tests/fixtures/klv, BSD licence).

pub mod ber;
pub mod cli;
pub mod codec;
pub mod imapb;
pub mod json;
pub mod mpeg;
pub mod st0601;
pub mod tags;
pub mod timeline;
pub mod ts;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod golden_tests;

use std::path::PathBuf;

/// Errors of the KLV stage. Each variant says where and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum KlvError {
    /// Input ended before a field was complete.
    #[error("truncated {what}: need {needed} bytes, {available} available")]
    Truncated { what: &'static str, needed: usize, available: usize },
    /// A BER length or BER-OID is malformed (too many bytes, overflow, indefinite form).
    #[error("bad BER {what}: {reason}")]
    BadBer { what: &'static str, reason: &'static str },
    /// The 16-byte key is not the ST 0601 UAS Datalink Local Set key.
    #[error("not an ST 0601 packet: key {got}")]
    WrongKey { got: String },
    /// Tag 1 is missing or not the last item of the packet.
    #[error("checksum tag 1 missing or not last (packet of {len} bytes)")]
    MissingChecksum { len: usize },
    /// The checksum in tag 1 differs from the one computed over the packet.
    #[error("checksum mismatch: packet says {expected:#06x}, computed {computed:#06x}")]
    Checksum { expected: u16, computed: u16 },
    /// A value cannot be encoded in its tag's format.
    #[error("tag {tag} ({name}): cannot encode {reason}")]
    Encode { tag: u32, name: &'static str, reason: String },
    /// Bytes follow the packet's declared end.
    #[error("{extra} bytes after the end of the KLV packet")]
    Trailing { extra: usize },
    /// A packet would be longer than BER can express or than we accept.
    #[error("packet too large: {len} bytes")]
    TooLarge { len: usize },
    /// IMAPB parameters invalid (min >= max, length 0 or > 8).
    #[error("bad IMAPB parameters: min {min}, max {max}, length {len}")]
    BadImapb { min: f64, max: f64, len: usize },
    /// File could not be read or written.
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the JSON output failed.
    #[error("writing JSON output: {0}")]
    Output(#[source] std::io::Error),
}

/// Result alias of the KLV stage.
pub type Result<T> = std::result::Result<T, KlvError>;

/// Borrow `n` bytes at `pos` of `data`, or report what was being read.
pub(crate) fn take<'a>(data: &'a [u8], pos: usize, n: usize, what: &'static str) -> Result<&'a [u8]> {
    let available = data.len().saturating_sub(pos);
    if n > available {
        return Err(KlvError::Truncated { what, needed: n, available });
    }
    Ok(&data[pos..pos + n])
}
