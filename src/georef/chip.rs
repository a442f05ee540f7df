//! Chips: the reference image the model sees, cut around a WGS84 centre.
//!
//! Input: [`ChipRequest`] (centre lon/lat in degrees, GSD in metres per pixel, size in
//! pixels, chip grid, coverage policy). Output: [`Chip`] = RGB u8 HWC pixels + the exact
//! chip→CRS [`GeoTransform`] + coverage fraction.
//!
//! Two paths:
//! - **Window read** (chip grid = mosaic CRS, mosaic north-up): one GDAL `RasterIO` of only
//!   the needed window with a floating-point source window; GDAL picks the overview level
//!   itself when the GSD is coarser than native. At native GSD (`gsd_m: None`) the chip is
//!   snapped to the mosaic pixel grid (centre moves < ½ px) so chip pixels *are* source pixels.
//! - **Reproject** (chip grid = local UTM in another CRS, or a rotated mosaic): nearest and
//!   bilinear run in-process ([`super::resample`]: one window read + per-pixel sampling);
//!   cubic and average use `gdalwarp` into memory with `-ovr AUTO` and an alpha band that
//!   gives the coverage.
//!
//! GSD meaning: grid metres on UTM-like projected grids, ground metres (geodesic, at the
//! centre) on geographic and Mercator grids; see [`super::transform::units_per_metre`].

use serde::{Deserialize, Serialize};

use super::error::{GeorefError, Result};
use super::gdalutil::{read_rgb, warp, ReadWindow, Resampling};
use super::mosaic::MosaicReader;
use super::transform::{crs_from_epsg, spatial_ref, units_per_metre, utm_epsg_for, CrsTransform};
use super::types::{Chip, Crs, GeoTransform, LonLat};

/// Largest chip side in pixels.
pub const MAX_CHIP_SIDE: usize = 16384;

/// The grid the chip is laid on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum ChipGrid {
    /// The mosaic's own CRS, north-up (fast window read when the mosaic is north-up).
    #[default]
    Mosaic,
    /// WGS84 / UTM zone of the centre, north-up (reprojects on the fly).
    LocalUtm,
}

/// What to do when the chip is partly outside the mosaic's data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum CoveragePolicy {
    /// Fill uncovered pixels with `value`; refuse below `min_coverage` (0..=1).
    Fill { value: u8, min_coverage: f64 },
    /// Refuse any chip that is not fully covered.
    Refuse,
}

impl Default for CoveragePolicy {
    fn default() -> Self {
        CoveragePolicy::Fill { value: 0, min_coverage: 0.0 }
    }
}

/// A chip to cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChipRequest {
    /// Chip centre, WGS84 degrees.
    pub center: LonLat,
    /// Metres per pixel; `None` = the mosaic's native resolution (no resampling).
    pub gsd_m: Option<f64>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Grid of the chip.
    pub grid: ChipGrid,
    /// Partly-outside policy.
    pub coverage: CoveragePolicy,
    /// Resampling when chip pixels are not source pixels.
    pub resampling: Resampling,
}

impl ChipRequest {
    /// A 1024×1024 chip at native resolution on the mosaic grid.
    pub fn new(center: LonLat) -> Self {
        ChipRequest {
            center,
            gsd_m: None,
            width: 1024,
            height: 1024,
            grid: ChipGrid::Mosaic,
            coverage: CoveragePolicy::default(),
            resampling: Resampling::Nearest,
        }
    }

    fn validate(&self) -> Result<()> {
        self.center.validate()?;
        if let Some(g) = self.gsd_m {
            if !(g.is_finite() && g > 0.0) {
                return Err(GeorefError::InvalidGsd(g));
            }
        }
        let ok = |s: usize| (1..=MAX_CHIP_SIDE).contains(&s);
        if !ok(self.width) || !ok(self.height) {
            return Err(GeorefError::InvalidSize { width: self.width, height: self.height });
        }
        if let CoveragePolicy::Fill { min_coverage, .. } = self.coverage {
            if !(0.0..=1.0).contains(&min_coverage) {
                return Err(GeorefError::Invalid(format!("min_coverage {min_coverage} not in 0..=1")));
            }
        }
        Ok(())
    }
}

impl MosaicReader {
    /// Cut a chip (see module docs for the paths taken and the GSD convention).
    pub fn chip(&self, req: &ChipRequest) -> Result<Chip> {
        req.validate()?;
        let chip = match req.grid {
            ChipGrid::Mosaic if self.gt.is_north_up() => self.chip_window(req)?,
            ChipGrid::Mosaic => self.chip_warp(req, self.crs.clone())?,
            ChipGrid::LocalUtm => {
                let utm = crs_from_epsg(utm_epsg_for(req.center)?)?;
                // A mosaic already on that UTM grid needs no warp: same chip, window read.
                if self.gt.is_north_up() && same_crs(&utm, &self.crs)? {
                    self.chip_window(req)?
                } else {
                    self.chip_warp(req, utm)?
                }
            }
        };
        self.check_coverage(req, chip)
    }

    fn check_coverage(&self, req: &ChipRequest, chip: Chip) -> Result<Chip> {
        if chip.coverage <= 0.0 {
            return Err(self.outside(req.center));
        }
        let required = match req.coverage {
            CoveragePolicy::Refuse => 1.0,
            CoveragePolicy::Fill { min_coverage, .. } => min_coverage,
        };
        // Refuse compares with a tolerance of one part per million pixels.
        if chip.coverage + 1e-6 < required {
            return Err(GeorefError::PartialCoverage {
                lon: req.center.lon,
                lat: req.center.lat,
                mosaic: self.name.clone(),
                coverage: chip.coverage,
                required,
            });
        }
        Ok(chip)
    }

    fn outside(&self, c: LonLat) -> GeorefError {
        let b = self.bounds_wgs84().unwrap_or([f64::NAN; 4]);
        GeorefError::OutsideCoverage {
            lon: c.lon,
            lat: c.lat,
            mosaic: self.name.clone(),
            west: b[0],
            south: b[1],
            east: b[2],
            north: b[3],
        }
    }

    fn fill_value(req: &ChipRequest) -> u8 {
        match req.coverage {
            CoveragePolicy::Fill { value, .. } => value,
            CoveragePolicy::Refuse => 0,
        }
    }

    /// Chip pixel size in CRS units (x, y) and the GSD in metres actually used.
    fn pixel_size(&self, req: &ChipRequest, crs: &Crs, cx: f64, cy: f64) -> Result<(f64, f64, f64)> {
        let (ux, uy) = units_per_metre(crs, cx, cy)?;
        match req.gsd_m {
            Some(g) => Ok((g * ux, g * uy, g)),
            None => {
                let (nx, ny) = self.gt.pixel_size();
                Ok((nx, ny, nx / ux))
            }
        }
    }

    fn chip_window(&self, req: &ChipRequest) -> Result<Chip> {
        let (w, h) = (req.width, req.height);
        let (cx, cy) = CrsTransform::new(&self.crs)?.from_lonlat(&[req.center])?[0];
        let (psx, psy, gsd) = self.pixel_size(req, &self.crs, cx, cy)?;
        let g = self.gt.0;
        let (mut ox, mut oy) = (cx - w as f64 / 2.0 * psx, cy + h as f64 / 2.0 * psy);
        if req.gsd_m.is_none() {
            ox = g[0] + ((ox - g[0]) / g[1]).round() * g[1];
            oy = g[3] + ((oy - g[3]) / g[5]).round() * g[5];
        }
        let gt = GeoTransform([ox, psx, 0.0, oy, 0.0, -psy]);
        // Chip pixel c has source x = sx0 + (c + t) * fx for t in [0, 1].
        let (fx, fy) = (psx / g[1], psy / -g[5]);
        let (sx0, sy0) = ((ox - g[0]) / g[1], (oy - g[3]) / g[5]);
        let fill = Self::fill_value(req);
        let mut pixels = vec![fill; w * h * 3];
        let cols = covered_range(sx0, fx, self.size.0, w);
        let rows = covered_range(sy0, fy, self.size.1, h);
        if let (Some((c0, c1)), Some((r0, r1))) = (cols, rows) {
            let src = clamp_window(
                [sx0 + c0 as f64 * fx, sy0 + r0 as f64 * fy, (c1 - c0) as f64 * fx, (r1 - r0) as f64 * fy],
                self.size,
            );
            let win = ReadWindow { src, dst: [c0, r0, c1 - c0, r1 - r0] };
            read_rgb(&self.ds, self.bands, &win, &mut pixels, w, req.resampling)?;
        }
        let coverage = self.footprint_coverage(&gt, w, h);
        Ok(Chip {
            pixels,
            width: w,
            height: h,
            geotransform: gt,
            crs: self.crs.clone(),
            coverage,
            fill,
            gsd_m: gsd,
            sources: self.files.clone(),
        })
    }

    /// Fraction of chip pixel centres inside some source footprint (same CRS, north-up).
    fn footprint_coverage(&self, gt: &GeoTransform, w: usize, h: usize) -> f64 {
        let (ox, psx, oy, psy) = (gt.0[0], gt.0[1], gt.0[3], -gt.0[5]);
        let mut covered = 0usize;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for r in 0..h {
            let y = oy - (r as f64 + 0.5) * psy;
            spans.clear();
            for f in &self.footprints {
                let [x0, y0, x1, y1] = f.bounds;
                if y < y0 || y >= y1 {
                    continue;
                }
                let a = ((x0 - ox) / psx - 0.5).ceil().clamp(0.0, w as f64) as usize;
                let b = ((x1 - ox) / psx - 0.5).ceil().clamp(0.0, w as f64) as usize;
                if b > a {
                    spans.push((a, b));
                }
            }
            covered += union_len(&mut spans);
        }
        covered as f64 / (w * h) as f64
    }

    fn chip_warp(&self, req: &ChipRequest, crs: Crs) -> Result<Chip> {
        let (w, h) = (req.width, req.height);
        let (cx, cy) = CrsTransform::new(&crs)?.from_lonlat(&[req.center])?[0];
        let (psx, psy, gsd) = match req.gsd_m {
            Some(_) => self.pixel_size(req, &crs, cx, cy)?,
            None => self.native_in(&crs, req.center, cx, cy)?,
        };
        let (x0, y1) = (cx - w as f64 / 2.0 * psx, cy + h as f64 / 2.0 * psy);
        if matches!(req.resampling, Resampling::Nearest | Resampling::Bilinear) {
            let gt = GeoTransform([x0, psx, 0.0, y1, 0.0, -psy]);
            return self.chip_resample(req, crs, gt, gsd);
        }
        let (x1, y0) = (x0 + w as f64 * psx, y1 - h as f64 * psy);
        let t_srs = match crs.epsg {
            Some(c) => format!("EPSG:{c}"),
            None => crs.wkt.clone(),
        };
        let mut args: Vec<String> =
            ["-of", "MEM", "-t_srs", &t_srs, "-r", req.resampling.gdal_name()].iter().map(|s| s.to_string()).collect();
        args.extend(["-te".into(), fmt(x0), fmt(y0), fmt(x1), fmt(y1)]);
        args.extend(["-ts".into(), w.to_string(), h.to_string(), "-ovr".into(), "AUTO".into()]);
        args.extend(["-dstalpha".into(), "-q".into(), "-wo".into(), "NUM_THREADS=ALL_CPUS".into()]);
        let out = warp(&[&self.ds], "", &args)?;
        let fill = Self::fill_value(req);
        let mut pixels = vec![fill; w * h * 3];
        let bands = if out.raster_count() >= 4 { [1, 2, 3] } else { [1, 1, 1] };
        let win = ReadWindow { src: [0.0, 0.0, w as f64, h as f64], dst: [0, 0, w, h] };
        read_rgb(&out, bands, &win, &mut pixels, w, Resampling::Nearest)?;
        let alpha = out
            .rasterband(out.raster_count())
            .and_then(|b| b.read_as::<u8>((0, 0), (w, h), (w, h), None))
            .map_err(|e| GeorefError::gdal("reading warp alpha", e))?;
        let mut covered = 0usize;
        for (i, &a) in alpha.data().iter().enumerate() {
            if a > 0 {
                covered += 1;
            } else {
                pixels[i * 3..i * 3 + 3].fill(fill);
            }
        }
        let gt = GeoTransform(out.geo_transform().map_err(|e| GeorefError::gdal("warp geotransform", e))?);
        Ok(Chip {
            pixels,
            width: w,
            height: h,
            geotransform: gt,
            crs,
            coverage: covered as f64 / (w * h) as f64,
            fill,
            gsd_m: gsd,
            sources: self.files.clone(),
        })
    }

    /// The mosaic's native resolution expressed in `crs` units at the centre.
    fn native_in(&self, crs: &Crs, c: LonLat, cx: f64, cy: f64) -> Result<(f64, f64, f64)> {
        let (mx, my) = CrsTransform::new(&self.crs)?.from_lonlat(&[c])?[0];
        let (nx, _) = self.gt.pixel_size();
        let (umx, _) = units_per_metre(&self.crs, mx, my)?;
        let gsd = nx / umx;
        let (ux, uy) = units_per_metre(crs, cx, cy)?;
        Ok((gsd * ux, gsd * uy, gsd))
    }
}

fn same_crs(a: &Crs, b: &Crs) -> Result<bool> {
    let (sa, sb) = (spatial_ref(a)?, spatial_ref(b)?);
    // SAFETY: both handles are valid for the duration of the call.
    Ok(unsafe { gdal_sys::OSRIsSame(sa.to_c_hsrs(), sb.to_c_hsrs()) } != 0)
}

fn fmt(v: f64) -> String {
    format!("{v:.10}")
}

/// Chip index range [c0, c1) whose pixel centres fall inside source [0, n): source
/// coordinate of chip pixel centre c is `s0 + (c + 0.5) * f`.
fn covered_range(s0: f64, f: f64, n: usize, chip: usize) -> Option<(usize, usize)> {
    let lo = ((-s0) / f - 0.5).ceil().max(0.0);
    let hi = ((n as f64 - s0) / f - 0.5).ceil().min(chip as f64);
    (hi > lo).then_some((lo as usize, hi as usize))
}

/// Keep a floating source window inside the raster (edges may overhang by < 1 chip pixel).
fn clamp_window(win: [f64; 4], size: (usize, usize)) -> [f64; 4] {
    let (w, h) = (size.0 as f64, size.1 as f64);
    let x0 = win[0].clamp(0.0, w);
    let y0 = win[1].clamp(0.0, h);
    let x1 = (win[0] + win[2]).clamp(0.0, w);
    let y1 = (win[1] + win[3]).clamp(0.0, h);
    [x0, y0, x1 - x0, y1 - y0]
}

/// Total length of the union of half-open spans.
fn union_len(spans: &mut [(usize, usize)]) -> usize {
    spans.sort_unstable();
    let (mut total, mut end) = (0usize, 0usize);
    for &(a, b) in spans.iter() {
        let a = a.max(end);
        if b > a {
            total += b - a;
            end = b;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_spans() {
        assert_eq!(union_len(&mut [(0, 5), (3, 8), (10, 12)]), 10);
        assert_eq!(union_len(&mut [(2, 4), (0, 10)]), 10);
        assert_eq!(covered_range(-10.0, 1.0, 100, 50), Some((10, 50)));
        assert_eq!(covered_range(90.0, 1.0, 100, 50), Some((0, 10)));
        assert_eq!(covered_range(200.0, 1.0, 100, 50), None);
    }
}
