//! The MISB ST 0601.17 tag table: number, name, unit and value format of each tag, and
//! the decoded value types.
//!
//! Formats (ST 0601 §6 "Conversions"):
//! - `UMap { len, min, max }`: unsigned `len`-byte integer `u`, value = `min + u * (max -
//!   min) / (2^(8 len) - 1)`. Quantisation step = `(max - min) / (2^(8 len) - 1)`.
//! - `SMap { len, max }`: two's-complement `len`-byte integer `s`, value = `s * max /
//!   (2^(8 len - 1) - 1)`; `s = -2^(8 len - 1)` (0x80..00) is the "out of range" sentinel.
//! - `Imapb { min, max, len }`: ST 1201 IMAPB over `[min, max]`, any length on decode,
//!   `len` bytes on encode.
//! - `Uint`/`Int { len }`: plain big-endian integers, 1..=`len` bytes accepted.
//! - `Flags { len }`: a bit field, decoded as the list of set bit positions (bit 0 = LSB).
//! - `OidList`: a list of BER-OID integers. `FrameRate`: BER-OID numerator, optional
//!   BER-OID denominator (default 1).
//! - `LocalSet` (nested sets: security 48, RVT 73, VMTI 74, ...) and `Bytes` (other
//!   packs) are kept raw; their contents are not interpreted here.

use super::imapb::ImapbValue;

/// How a tag's value is laid out (see module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Uint { len: usize },
    Int { len: usize },
    Text,
    UMap { len: usize, min: f64, max: f64 },
    SMap { len: usize, max: f64 },
    Imapb { min: f64, max: f64, len: usize },
    Flags { len: usize },
    OidList,
    FrameRate,
    LocalSet,
    Bytes,
}

/// One row of the tag table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TagSpec {
    pub tag: u32,
    pub name: &'static str,
    pub unit: &'static str,
    pub format: Format,
}

/// A value that is not a number: ST 0601 "out of range" sentinels and ST 1201 specials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sentinel {
    /// ST 0601 reserved integer (e.g. 0x8000 for an int16 angle): out of range / error.
    OutOfRange,
    PosInfinity,
    NegInfinity,
    NaN,
    /// An ST 1201 reserved or user-defined special pattern.
    Reserved,
}

impl Sentinel {
    /// Short machine name used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Sentinel::OutOfRange => "out_of_range",
            Sentinel::PosInfinity => "+inf",
            Sentinel::NegInfinity => "-inf",
            Sentinel::NaN => "nan",
            Sentinel::Reserved => "reserved",
        }
    }
}

impl From<ImapbValue> for TagValue {
    fn from(v: ImapbValue) -> Self {
        match v {
            ImapbValue::Finite(x) => TagValue::Float(x),
            ImapbValue::PosInfinity => TagValue::Sentinel(Sentinel::PosInfinity),
            ImapbValue::NegInfinity => TagValue::Sentinel(Sentinel::NegInfinity),
            ImapbValue::NaN => TagValue::Sentinel(Sentinel::NaN),
            ImapbValue::Reserved(_) => TagValue::Sentinel(Sentinel::Reserved),
        }
    }
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    /// Scaled value in the tag's unit.
    Float(f64),
    UInt(u64),
    Int(i64),
    Text(String),
    /// Set bit positions (flags) or BER-OID items (lists).
    List(Vec<u64>),
    Rational {
        num: u64,
        den: u64,
    },
    /// Nested local set or pack kept as raw bytes; also the value of unknown tags.
    Bytes(Vec<u8>),
    Sentinel(Sentinel),
    /// A known tag whose bytes do not fit its format (e.g. wrong length); raw bytes kept.
    Malformed(Vec<u8>),
}

impl TagValue {
    /// The value as a float, for numeric values.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            TagValue::Float(x) => Some(x),
            TagValue::UInt(u) => Some(u as f64),
            TagValue::Int(i) => Some(i as f64),
            _ => None,
        }
    }
}

/// A tag with its number, name, unit and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub tag: u32,
    pub name: &'static str,
    pub unit: &'static str,
    pub value: TagValue,
}

impl Tag {
    /// A tag with name and unit filled from the table ("Unknown tag" when absent).
    pub fn new(tag: u32, value: TagValue) -> Self {
        let (name, unit) = spec(tag).map_or(("Unknown tag", ""), |s| (s.name, s.unit));
        Tag { tag, name, unit, value }
    }
}

/// The table row of `tag`, if ST 0601.17 defines it.
pub fn spec(tag: u32) -> Option<&'static TagSpec> {
    TAGS.binary_search_by_key(&tag, |s| s.tag).ok().map(|i| &TAGS[i])
}

/// The ST 0601 name of an enumerated value (tags 34, 63, 77, 125, 126).
pub fn enum_label(tag: u32, value: u64) -> Option<&'static str> {
    let labels: &[&str] = match tag {
        34 => &["Detector Off", "No Icing Detected", "Icing Detected"],
        63 => &[
            "Ultranarrow",
            "Narrow",
            "Medium",
            "Wide",
            "Ultrawide",
            "Narrow Medium",
            "2x Ultranarrow",
            "4x Ultranarrow",
            "Continuous Zoom",
        ],
        77 => &["Other", "Operational", "Training", "Exercise", "Maintenance", "Test"],
        125 => &[
            "Active",
            "Pre-flight",
            "Pre-flight-taxiing",
            "Run-up",
            "Take-off",
            "Ingress",
            "Manual operation",
            "Automated-orbit",
            "Transitioning",
            "Egress",
            "Landing",
            "Landed-taxiing",
            "Landed-Parked",
        ],
        126 => &[
            "Off",
            "Home Position",
            "Uncontrolled",
            "Manual Control",
            "Calibrating",
            "Auto - Holding Position",
            "Auto - Tracking",
        ],
        _ => return None,
    };
    labels.get(usize::try_from(value).ok()?).copied()
}

use Format::*;

const fn t(tag: u32, name: &'static str, unit: &'static str, format: Format) -> TagSpec {
    TagSpec { tag, name, unit, format }
}

const ALT: Format = UMap { len: 2, min: -900.0, max: 19000.0 };
const HEADING: Format = UMap { len: 2, min: 0.0, max: 360.0 };
const LAT: Format = SMap { len: 4, max: 90.0 };
const LON: Format = SMap { len: 4, max: 180.0 };
const OFFSET: Format = SMap { len: 2, max: 0.075 };
const PRESSURE: Format = UMap { len: 2, min: 0.0, max: 5000.0 };
const HAE_EXT: Format = Imapb { min: -900.0, max: 40000.0, len: 3 };
const RATE: Format = Imapb { min: -1000.0, max: 1000.0, len: 3 };

/// ST 0601.17 tags, sorted by number.
#[rustfmt::skip]
pub static TAGS: &[TagSpec] = &[
    t(1, "Checksum", "", Uint { len: 2 }),
    t(2, "Precision Time Stamp", "us", Uint { len: 8 }),
    t(3, "Mission ID", "", Text),
    t(4, "Platform Tail Number", "", Text),
    t(5, "Platform Heading Angle", "deg", HEADING),
    t(6, "Platform Pitch Angle", "deg", SMap { len: 2, max: 20.0 }),
    t(7, "Platform Roll Angle", "deg", SMap { len: 2, max: 50.0 }),
    t(8, "Platform True Airspeed", "m/s", Uint { len: 1 }),
    t(9, "Platform Indicated Airspeed", "m/s", Uint { len: 1 }),
    t(10, "Platform Designation", "", Text),
    t(11, "Image Source Sensor", "", Text),
    t(12, "Image Coordinate System", "", Text),
    t(13, "Sensor Latitude", "deg", LAT),
    t(14, "Sensor Longitude", "deg", LON),
    t(15, "Sensor True Altitude", "m", ALT),
    t(16, "Sensor Horizontal Field of View", "deg", UMap { len: 2, min: 0.0, max: 180.0 }),
    t(17, "Sensor Vertical Field of View", "deg", UMap { len: 2, min: 0.0, max: 180.0 }),
    t(18, "Sensor Relative Azimuth Angle", "deg", UMap { len: 4, min: 0.0, max: 360.0 }),
    t(19, "Sensor Relative Elevation Angle", "deg", SMap { len: 4, max: 180.0 }),
    t(20, "Sensor Relative Roll Angle", "deg", UMap { len: 4, min: 0.0, max: 360.0 }),
    t(21, "Slant Range", "m", UMap { len: 4, min: 0.0, max: 5_000_000.0 }),
    t(22, "Target Width", "m", UMap { len: 2, min: 0.0, max: 10_000.0 }),
    t(23, "Frame Center Latitude", "deg", LAT),
    t(24, "Frame Center Longitude", "deg", LON),
    t(25, "Frame Center Elevation", "m", ALT),
    t(26, "Offset Corner Latitude Point 1", "deg", OFFSET),
    t(27, "Offset Corner Longitude Point 1", "deg", OFFSET),
    t(28, "Offset Corner Latitude Point 2", "deg", OFFSET),
    t(29, "Offset Corner Longitude Point 2", "deg", OFFSET),
    t(30, "Offset Corner Latitude Point 3", "deg", OFFSET),
    t(31, "Offset Corner Longitude Point 3", "deg", OFFSET),
    t(32, "Offset Corner Latitude Point 4", "deg", OFFSET),
    t(33, "Offset Corner Longitude Point 4", "deg", OFFSET),
    t(34, "Icing Detected", "enum", Uint { len: 1 }),
    t(35, "Wind Direction", "deg", HEADING),
    t(36, "Wind Speed", "m/s", UMap { len: 1, min: 0.0, max: 100.0 }),
    t(37, "Static Pressure", "mbar", PRESSURE),
    t(38, "Density Altitude", "m", ALT),
    t(39, "Outside Air Temperature", "degC", Int { len: 1 }),
    t(40, "Target Location Latitude", "deg", LAT),
    t(41, "Target Location Longitude", "deg", LON),
    t(42, "Target Location Elevation", "m", ALT),
    t(43, "Target Track Gate Width", "pixels", UMap { len: 1, min: 0.0, max: 510.0 }),
    t(44, "Target Track Gate Height", "pixels", UMap { len: 1, min: 0.0, max: 510.0 }),
    t(45, "Target Error Estimate - CE90", "m", UMap { len: 2, min: 0.0, max: 4095.0 }),
    t(46, "Target Error Estimate - LE90", "m", UMap { len: 2, min: 0.0, max: 4095.0 }),
    t(47, "Generic Flag Data", "flags", Flags { len: 1 }),
    t(48, "Security Local Set", "", LocalSet),
    t(49, "Differential Pressure", "mbar", PRESSURE),
    t(50, "Platform Angle of Attack", "deg", SMap { len: 2, max: 20.0 }),
    t(51, "Platform Vertical Speed", "m/s", SMap { len: 2, max: 180.0 }),
    t(52, "Platform Sideslip Angle", "deg", SMap { len: 2, max: 20.0 }),
    t(53, "Airfield Barometric Pressure", "mbar", PRESSURE),
    t(54, "Airfield Elevation", "m", ALT),
    t(55, "Relative Humidity", "%", UMap { len: 1, min: 0.0, max: 100.0 }),
    t(56, "Platform Ground Speed", "m/s", Uint { len: 1 }),
    t(57, "Ground Range", "m", UMap { len: 4, min: 0.0, max: 5_000_000.0 }),
    t(58, "Platform Fuel Remaining", "kg", UMap { len: 2, min: 0.0, max: 10_000.0 }),
    t(59, "Platform Call Sign", "", Text),
    t(60, "Weapon Load", "", Uint { len: 2 }),
    t(61, "Weapon Fired", "", Uint { len: 1 }),
    t(62, "Laser PRF Code", "", Uint { len: 2 }),
    t(63, "Sensor Field of View Name", "enum", Uint { len: 1 }),
    t(64, "Platform Magnetic Heading", "deg", HEADING),
    t(65, "UAS Datalink LS Version Number", "", Uint { len: 1 }),
    t(67, "Alternate Platform Latitude", "deg", LAT),
    t(68, "Alternate Platform Longitude", "deg", LON),
    t(69, "Alternate Platform Altitude", "m", ALT),
    t(70, "Alternate Platform Name", "", Text),
    t(71, "Alternate Platform Heading", "deg", HEADING),
    t(72, "Event Start Time - UTC", "us", Uint { len: 8 }),
    t(73, "RVT Local Set", "", LocalSet),
    t(74, "VMTI Local Set", "", LocalSet),
    t(75, "Sensor Ellipsoid Height", "m", ALT),
    t(76, "Alternate Platform Ellipsoid Height", "m", ALT),
    t(77, "Operational Mode", "enum", Uint { len: 1 }),
    t(78, "Frame Center Height Above Ellipsoid", "m", ALT),
    t(79, "Sensor North Velocity", "m/s", SMap { len: 2, max: 327.0 }),
    t(80, "Sensor East Velocity", "m/s", SMap { len: 2, max: 327.0 }),
    t(81, "Image Horizon Pixel Pack", "", Bytes),
    t(82, "Corner Latitude Point 1 (Full)", "deg", LAT),
    t(83, "Corner Longitude Point 1 (Full)", "deg", LON),
    t(84, "Corner Latitude Point 2 (Full)", "deg", LAT),
    t(85, "Corner Longitude Point 2 (Full)", "deg", LON),
    t(86, "Corner Latitude Point 3 (Full)", "deg", LAT),
    t(87, "Corner Longitude Point 3 (Full)", "deg", LON),
    t(88, "Corner Latitude Point 4 (Full)", "deg", LAT),
    t(89, "Corner Longitude Point 4 (Full)", "deg", LON),
    t(90, "Platform Pitch Angle (Full)", "deg", SMap { len: 4, max: 90.0 }),
    t(91, "Platform Roll Angle (Full)", "deg", SMap { len: 4, max: 90.0 }),
    t(92, "Platform Angle of Attack (Full)", "deg", SMap { len: 4, max: 90.0 }),
    t(93, "Platform Sideslip Angle (Full)", "deg", SMap { len: 4, max: 180.0 }),
    t(94, "MIIS Core Identifier", "", Bytes),
    t(95, "SAR Motion Imagery Local Set", "", LocalSet),
    t(96, "Target Width Extended", "m", Imapb { min: 0.0, max: 1_500_000.0, len: 3 }),
    t(97, "Range Image Local Set", "", LocalSet),
    t(98, "Geo-Registration Local Set", "", LocalSet),
    t(99, "Composite Imaging Local Set", "", LocalSet),
    t(100, "Segment Local Set", "", LocalSet),
    t(101, "Amend Local Set", "", LocalSet),
    t(102, "SDCC-FLP", "", Bytes),
    t(103, "Density Altitude Extended", "m", HAE_EXT),
    t(104, "Sensor Ellipsoid Height Extended", "m", HAE_EXT),
    t(105, "Alternate Platform Ellipsoid Height Extended", "m", HAE_EXT,),
    t(106, "Stream Designator", "", Text),
    t(107, "Operational Base", "", Text),
    t(108, "Broadcast Source", "", Text),
    t(109, "Range To Recovery Location", "km", Imapb { min: 0.0, max: 21_000.0, len: 3 }),
    t(110, "Time Airborne", "s", Uint { len: 4 }),
    t(111, "Propulsion Unit Speed", "rpm", Uint { len: 4 }),
    t(112, "Platform Course Angle", "deg", Imapb { min: 0.0, max: 360.0, len: 2 }),
    t(113, "Altitude Above Ground Level", "m", HAE_EXT),
    t(114, "Radar Altimeter", "m", HAE_EXT),
    t(115, "Control Command", "", Bytes),
    t(116, "Control Command Verification List", "", OidList),
    t(117, "Sensor Azimuth Rate", "deg/s", RATE),
    t(118, "Sensor Elevation Rate", "deg/s", RATE),
    t(119, "Sensor Roll Rate", "deg/s", RATE),
    t(120, "On-board MI Storage Percent Full", "%", Imapb { min: 0.0, max: 100.0, len: 2 }),
    t(121, "Active Wavelength List", "", OidList),
    t(122, "Country Codes", "", Bytes),
    t(123, "Number of NAVSATs in View", "", Uint { len: 1 }),
    t(124, "Positioning Method Source", "flags", Flags { len: 1 }),
    t(125, "Platform Status", "enum", Uint { len: 1 }),
    t(126, "Sensor Control Mode", "enum", Uint { len: 1 }),
    t(127, "Sensor Frame Rate Pack", "Hz", FrameRate),
    t(128, "Wavelengths List", "", Bytes),
    t(129, "Target ID", "", Text),
    t(130, "Airbase Locations", "", Bytes),
    t(131, "Take-off Time", "us", Uint { len: 8 }),
    t(132, "Transmission Frequency", "MHz", Imapb { min: 1.0, max: 99_999.0, len: 3 }),
    t(133, "On-board MI Storage Capacity", "GB", Uint { len: 4 }),
    t(134, "Zoom Percentage", "%", Imapb { min: 0.0, max: 100.0, len: 2 }),
    t(135, "Communications Method", "", Text),
    t(136, "Leap Seconds", "s", Int { len: 4 }),
    t(137, "Correction Offset", "us", Int { len: 8 }),
    t(138, "Payload List", "", Bytes),
    t(139, "Active Payloads", "flags", Flags { len: 8 }),
    t(140, "Weapons Stores", "", Bytes),
    t(141, "Waypoint List", "", Bytes),
    t(142, "View Domain", "", Bytes),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sorted_and_unique() {
        assert!(TAGS.windows(2).all(|w| w[0].tag < w[1].tag));
        assert_eq!(spec(13).unwrap().name, "Sensor Latitude");
        assert_eq!(spec(104).unwrap().format, HAE_EXT);
        assert!(spec(66).is_none() && spec(500).is_none());
        assert_eq!(Tag::new(999, TagValue::UInt(1)).name, "Unknown tag");
    }
}
