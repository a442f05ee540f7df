//! Value types shared by the georef stage.
//!
//! Conventions (used everywhere in this module):
//! - [`LonLat`]: WGS84 (EPSG:4326) degrees, **longitude first**, whatever order GDAL/EPSG
//!   would use for the axis (we always set GDAL's traditional GIS order).
//! - [`GeoTransform`]: GDAL's affine six-tuple mapping *pixel corner* coordinates to CRS
//!   coordinates: `X = g0 + col*g1 + row*g2`, `Y = g3 + col*g4 + row*g5`. Pixel (0, 0)'s
//!   top-left corner is at `(g0, g3)`; the centre of pixel (c, r) is at `(c + 0.5, r + 0.5)`.
//!   CRS units are those of the CRS (metres for UTM/Web Mercator, degrees for EPSG:4326).
//! - [`PixelBox`]: chip pixel coordinates in that same corner convention, x right, y down.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::error::{GeorefError, Result};

/// A WGS84 position in degrees, longitude first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LonLat {
    /// Longitude in degrees east, -180..180.
    pub lon: f64,
    /// Latitude in degrees north, -90..90.
    pub lat: f64,
}

impl LonLat {
    /// A position from longitude and latitude in degrees.
    pub fn new(lon: f64, lat: f64) -> Self {
        LonLat { lon, lat }
    }

    /// Check that the position is finite and within the WGS84 range.
    pub fn validate(&self) -> Result<()> {
        let ok = self.lon.is_finite()
            && self.lat.is_finite()
            && (-180.0..=180.0).contains(&self.lon)
            && (-90.0..=90.0).contains(&self.lat);
        if ok {
            Ok(())
        } else {
            Err(GeorefError::Invalid(format!(
                "position lon {} lat {} is not a WGS84 position in degrees",
                self.lon, self.lat
            )))
        }
    }

    /// Parse `"LON,LAT"` (degrees, lon first), as used on the command line.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || GeorefError::Invalid(format!("expected LON,LAT in degrees, got {s:?}"));
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let lon = a.trim().parse::<f64>().map_err(|_| bad())?;
        let lat = b.trim().parse::<f64>().map_err(|_| bad())?;
        let p = LonLat { lon, lat };
        p.validate()?;
        Ok(p)
    }

    /// As a `geo` point (x = lon, y = lat).
    pub fn to_point(self) -> geo::Point<f64> {
        geo::Point::new(self.lon, self.lat)
    }
}

/// GDAL affine geotransform (see module docs for the pixel-corner convention).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoTransform(pub [f64; 6]);

impl GeoTransform {
    /// Pixel (col, row) in corner convention → CRS (x, y).
    pub fn apply(&self, col: f64, row: f64) -> (f64, f64) {
        let g = &self.0;
        (g[0] + col * g[1] + row * g[2], g[3] + col * g[4] + row * g[5])
    }

    /// The inverse transform (CRS → pixel); error when the matrix is singular.
    pub fn invert(&self) -> Result<GeoTransform> {
        let g = &self.0;
        let det = g[1] * g[5] - g[2] * g[4];
        if !det.is_finite() || det.abs() < 1e-300 || g.iter().any(|v| !v.is_finite()) {
            return Err(GeorefError::DegenerateTransform(self.0));
        }
        let (a, b, d, e) = (g[5] / det, -g[2] / det, -g[4] / det, g[1] / det);
        Ok(GeoTransform([-(a * g[0] + b * g[3]), a, b, -(d * g[0] + e * g[3]), d, e]))
    }

    /// True when there is no rotation/shear term and y decreases downwards.
    pub fn is_north_up(&self) -> bool {
        self.0[2] == 0.0 && self.0[4] == 0.0 && self.0[1] > 0.0 && self.0[5] < 0.0
    }

    /// The pixel size (|g1|, |g5|) in CRS units per pixel (meaningful when north-up).
    pub fn pixel_size(&self) -> (f64, f64) {
        (self.0[1].abs(), self.0[5].abs())
    }
}

/// A coordinate reference system as WKT plus the EPSG code when one is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crs {
    /// OGC WKT (as GDAL writes it).
    pub wkt: String,
    /// EPSG code, when GDAL identifies one.
    pub epsg: Option<u32>,
}

impl Crs {
    /// Short human-readable label: `EPSG:32632` or the CRS name.
    pub fn label(&self) -> String {
        match self.epsg {
            Some(c) => format!("EPSG:{c}"),
            None => {
                let name = self.wkt.split('"').nth(1).unwrap_or("unnamed CRS").to_string();
                name
            }
        }
    }
}

/// An axis-aligned box in chip pixels, corner convention (see module docs), x right, y down.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelBox {
    /// Left edge (pixels).
    pub x1: f64,
    /// Top edge (pixels).
    pub y1: f64,
    /// Right edge (pixels).
    pub x2: f64,
    /// Bottom edge (pixels).
    pub y2: f64,
}

impl PixelBox {
    /// Box centre in pixels.
    pub fn center(&self) -> (f64, f64) {
        ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)
    }

    /// Error unless all edges are finite and x1 <= x2, y1 <= y2.
    pub fn validate(&self) -> Result<()> {
        let v = [self.x1, self.y1, self.x2, self.y2];
        if v.iter().all(|c| c.is_finite()) && self.x1 <= self.x2 && self.y1 <= self.y2 {
            Ok(())
        } else {
            Err(GeorefError::Invalid(format!("pixel box {self:?} needs finite edges with x1<=x2, y1<=y2")))
        }
    }
}

/// A pixel box turned into WGS84.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeoResult {
    /// Image of the box centre pixel (not the mean of the corners).
    pub center: LonLat,
    /// Closed ring: top-left, bottom-left, bottom-right, top-right, top-left (counter-clockwise
    /// on the map for a north-up chip, as RFC 7946 asks of exterior rings).
    pub ring: [LonLat; 5],
    /// Geodesic (WGS84 ellipsoid) distance between the midpoints of the left and right edges, metres.
    pub width_m: f64,
    /// Geodesic distance between the midpoints of the top and bottom edges, metres.
    pub height_m: f64,
}

/// A georeferenced chip cut from a mosaic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chip {
    /// RGB, interleaved (HWC), row-major, `width * height * 3` bytes.
    #[serde(skip)]
    pub pixels: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Chip pixel (corner convention) → chip CRS.
    pub geotransform: GeoTransform,
    /// CRS of the chip grid.
    pub crs: Crs,
    /// Fraction (0..=1) of chip pixels that hold mosaic data; others hold the fill value.
    pub coverage: f64,
    /// Value written into uncovered pixels (all three channels).
    pub fill: u8,
    /// Ground sample distance requested or used, metres per pixel.
    pub gsd_m: f64,
    /// Source files the mosaic was made of.
    pub sources: Vec<PathBuf>,
}

impl Chip {
    /// The RGB value at chip pixel (col, row), if inside.
    pub fn rgb(&self, col: usize, row: usize) -> Option<[u8; 3]> {
        if col >= self.width || row >= self.height {
            return None;
        }
        let i = (row * self.width + col) * 3;
        Some([self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]])
    }

    /// A box in this chip's pixels → WGS84 (see [`super::transform::pixel_box_to_wgs84`]).
    pub fn box_to_wgs84(&self, b: &PixelBox) -> Result<GeoResult> {
        super::transform::pixel_box_to_wgs84(b, &self.geotransform, &self.crs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geotransform_inverse_round_trips() {
        let gt = GeoTransform([500000.0, 0.3, 0.01, 5.3e6, 0.02, -0.3]);
        let inv = gt.invert().unwrap();
        let (x, y) = gt.apply(123.25, 456.75);
        let (c, r) = inv.apply(x, y);
        assert!((c - 123.25).abs() < 1e-7 && (r - 456.75).abs() < 1e-7, "{c} {r}");
        assert!(GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]).invert().is_err());
    }

    #[test]
    fn corner_convention() {
        let gt = GeoTransform([100.0, 2.0, 0.0, 50.0, 0.0, -2.0]);
        assert_eq!(gt.apply(0.0, 0.0), (100.0, 50.0));
        assert_eq!(gt.apply(0.5, 0.5), (101.0, 49.0)); // centre of pixel (0,0)
        assert!(gt.is_north_up());
    }

    #[test]
    fn parse_lonlat() {
        assert_eq!(LonLat::parse("11.5, 48.1").unwrap(), LonLat::new(11.5, 48.1));
        assert!(LonLat::parse("48.1").is_err());
        assert!(LonLat::parse("200,1").is_err());
        assert!(LonLat::parse("x,1").is_err());
    }
}
