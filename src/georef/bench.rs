//! `smgeo bench chip`: time cutting a chip from a multi-file COG mosaic in-process (cold
//! and warm GDAL block cache) against the GDAL command-line tools doing the same chip
//! (`gdal_translate -srcwin` for the window case, `gdalwarp` for the local-UTM case).
//!
//! "Cold" = freshly opened reader, so GDAL's block cache holds nothing of it (the OS page
//! cache may still hold the files). "Warm" = the same chip again on the same reader.
//! Times are wall-clock milliseconds. Without `--mosaic`, a synthetic 2×2 COG mosaic
//! (4096×4096 px RGB, Web Mercator, 0.45 grid m ≈ 0.3 ground m near 48°N) is generated in a temporary folder and removed after.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use gdal::raster::Buffer;
use gdal::spatial_ref::SpatialRef;
use gdal::DriverManager;
use serde::{Deserialize, Serialize};

use super::chip::{ChipGrid, ChipRequest};
use super::error::{GeorefError, Result};
use super::mosaic::{MosaicReader, MosaicSpec};
use super::transform::CrsTransform;
use super::types::{Chip, LonLat};
use super::writer::{build_mosaic, BuildOptions};

/// Options of [`bench_chip`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchChipOptions {
    /// Mosaic to use; `None` generates a synthetic multi-file COG mosaic.
    pub mosaic: Option<PathBuf>,
    /// Chip centre; `None` = the mosaic's centre (a file corner for the synthetic one).
    pub center: Option<LonLat>,
    /// Chip side in pixels.
    pub size: usize,
    /// Warm repetitions per case.
    pub iterations: usize,
}

impl Default for BenchChipOptions {
    fn default() -> Self {
        BenchChipOptions { mosaic: None, center: None, size: 1024, iterations: 20 }
    }
}

/// Run the chip benchmark; returns a JSON report (see module docs).
pub fn bench_chip(opts: &BenchChipOptions) -> Result<serde_json::Value> {
    if opts.size == 0 || opts.iterations == 0 {
        return Err(GeorefError::Invalid("bench size and iterations must be > 0".into()));
    }
    let tmp = TempDir::new()?;
    let mosaic = match &opts.mosaic {
        Some(m) => m.clone(),
        None => synth_mosaic(&tmp.0)?,
    };
    let spec = MosaicSpec::from_path(&mosaic);
    let probe = spec.open()?;
    let center = match opts.center {
        Some(c) => c,
        None => mosaic_center(&probe)?,
    };
    let mut cases = Vec::new();
    for grid in [ChipGrid::Mosaic, ChipGrid::LocalUtm] {
        let req = ChipRequest { width: opts.size, height: opts.size, grid, ..ChipRequest::new(center) };
        cases.push(run_case(&spec, &mosaic, &req, opts.iterations, &tmp.0)?);
    }
    Ok(serde_json::json!({
        "bench": "chip",
        "mosaic": mosaic,
        "files": probe.footprints().len(),
        "center": center,
        "size_px": opts.size,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "gdal": gdal::version::version_info("RELEASE_NAME"),
        "cases": cases,
        "notes": "cold = first chip on a freshly opened reader (empty GDAL block cache; OS page \
                  cache may be warm); warm = same chip again; reference = whole CLI process run",
    }))
}

fn run_case(
    spec: &MosaicSpec,
    mosaic: &Path,
    req: &ChipRequest,
    iters: usize,
    tmp: &Path,
) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    let reader = spec.open()?;
    let open_ms = ms(t0);
    let t1 = Instant::now();
    let chip = reader.chip(req)?;
    let cold_ms = ms(t1);
    let mut warm = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(reader.chip(req)?);
        warm.push(ms(t));
    }
    warm.sort_by(|a, b| a.total_cmp(b));
    let warm_p50 = warm[warm.len() / 2];
    let (tool, mut cli) = (tool_name(req), Vec::new());
    for i in 0..3 {
        cli.push(run_tool(&reader, &chip, req, mosaic, &tmp.join(format!("ref{i}.tif")))?);
    }
    cli.sort_by(|a, b| a.total_cmp(b));
    let cli_p50 = cli[1];
    Ok(serde_json::json!({
        "grid": req.grid,
        "open_ms": open_ms,
        "cold_chip_ms": cold_ms,
        "warm_chip_ms": { "min": warm[0], "p50": warm_p50, "p90": warm[(warm.len() - 1) * 9 / 10], "n": warm.len() },
        "coverage": chip.coverage,
        "reference_tool": tool,
        "reference_ms": { "min": cli[0], "p50": cli_p50, "runs": cli.len() },
        "speedup_warm_vs_tool": cli_p50 / warm_p50,
        "aim": { "warm_ms_max": 30.0, "speedup_min": 5.0, "met": warm_p50 <= 30.0 && cli_p50 / warm_p50 >= 5.0 },
    }))
}

fn tool_name(req: &ChipRequest) -> &'static str {
    match req.grid {
        ChipGrid::Mosaic => "gdal_translate -srcwin",
        ChipGrid::LocalUtm => "gdalwarp",
    }
}

/// Time the command-line tool producing the same chip (whole process run).
fn run_tool(reader: &MosaicReader, chip: &Chip, req: &ChipRequest, mosaic: &Path, out: &Path) -> Result<f64> {
    let mut cmd = match req.grid {
        ChipGrid::Mosaic => {
            let (x, y) = reader.geotransform().invert()?.apply(chip.geotransform.0[0], chip.geotransform.0[3]);
            let mut c = Command::new("gdal_translate");
            c.args(["-q", "-srcwin"]).args([x.round(), y.round()].map(|v| v.to_string()));
            c.args([chip.width.to_string(), chip.height.to_string()]);
            c
        }
        ChipGrid::LocalUtm => {
            let g = chip.geotransform.0;
            let (x1, y0) = (g[0] + g[1] * chip.width as f64, g[3] + g[5] * chip.height as f64);
            let mut c = Command::new("gdalwarp");
            c.args(["-q", "-overwrite", "-r", "near", "-t_srs", &format!("EPSG:{}", chip.crs.epsg.unwrap_or(4326))]);
            c.arg("-te").args([g[0], y0, x1, g[3]].map(|v| format!("{v:.10}")));
            c.arg("-ts").args([chip.width.to_string(), chip.height.to_string()]);
            c
        }
    };
    cmd.arg(mosaic).arg(out);
    let t = Instant::now();
    let st = cmd.output().map_err(|e| GeorefError::gdal(tool_name(req), e))?;
    let elapsed = ms(t);
    if !st.status.success() {
        return Err(GeorefError::gdal(tool_name(req), String::from_utf8_lossy(&st.stderr)));
    }
    Ok(elapsed)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn mosaic_center(r: &MosaicReader) -> Result<LonLat> {
    let b = r.bounds();
    let c = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    Ok(CrsTransform::new(r.crs())?.to_lonlat(&[c])?[0])
}

/// 4096×4096 RGB source in Web Mercator (EPSG:3857) at 0.45 grid m, tiled into 2×2 COGs; returns the VRT path.
fn synth_mosaic(dir: &Path) -> Result<PathBuf> {
    let n = 4096usize;
    let src = dir.join("synth_src.tif");
    let werr = |e: gdal::errors::GdalError| GeorefError::Write { path: src.clone(), msg: e.to_string() };
    {
        let drv = DriverManager::get_driver_by_name("GTiff").map_err(werr)?;
        let mut ds = drv.create_with_band_type::<u8, _>(&src, n, n, 3).map_err(werr)?;
        ds.set_geo_transform(&[1287000.0, 0.45, 0.0, 6134000.0, 0.0, -0.45]).map_err(werr)?;
        ds.set_spatial_ref(&SpatialRef::from_epsg(3857).map_err(werr)?).map_err(werr)?;
        for b in 0..3usize {
            let data: Vec<u8> = (0..n * n)
                .map(|i| {
                    let (x, y) = (i % n, i / n);
                    ((x * (b + 1) + y * (3 - b) + (x / 64) * (y / 64)) % 256) as u8
                })
                .collect();
            let mut buf = Buffer::new((n, n), data);
            ds.rasterband(b + 1).map_err(werr)?.write((0, 0), (n, n), &mut buf).map_err(werr)?;
        }
    }
    let opts = BuildOptions { tile_px: n / 2, ..Default::default() };
    let rep = build_mosaic(&MosaicSpec::from_path(&src), &dir.join("cog"), &opts)?;
    Ok(rep.vrt)
}

/// A temporary folder removed on drop (the main crate has `tempfile` only for tests).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("smgeo-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|source| GeorefError::Io { path: p.clone(), source })?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::georef::testutil::{write_grid, GT_UTM};

    /// Small run on a small mosaic: the report has both cases and sane numbers.
    #[test]
    fn bench_report_shape() {
        let dir = tempfile::tempdir().unwrap();
        write_grid(dir.path(), 32632, GT_UTM, (256, 256), (2, 2));
        let vrt = dir.path().join("m.vrt");
        let files: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
        assert!(Command::new("gdalbuildvrt").arg("-q").arg(&vrt).args(&files).status().unwrap().success());
        let opts = BenchChipOptions { mosaic: Some(vrt), size: 64, iterations: 3, ..Default::default() };
        let rep = bench_chip(&opts).unwrap();
        let cases = rep["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for c in cases {
            assert!(c["warm_chip_ms"]["p50"].as_f64().unwrap() > 0.0);
            assert!(c["reference_ms"]["p50"].as_f64().unwrap() > 0.0);
            assert_eq!(c["coverage"], 1.0);
        }
        assert!(bench_chip(&BenchChipOptions { size: 0, ..opts }).is_err());
    }
}
