//! Mosaics: one or many rasters (GeoTIFF, COG, VRT; any CRS GDAL knows) read as one.
//!
//! [`MosaicSpec`] is plain data (paths), `Clone + Send + Sync`, shareable between threads.
//! [`MosaicSpec::open`] validates every source (opens, has a geotransform and a CRS GDAL
//! understands, all in one CRS) and yields a [`MosaicReader`] that owns the GDAL handles:
//! `Send` (move it into the worker thread) but not `Sync`; open one per thread.
//! Several files are joined into an in-memory VRT (later files win where they overlap).
//! Source footprints are kept so chips can report real coverage, gaps included.

use std::path::{Path, PathBuf};

use gdal::spatial_ref::SpatialRef;
use gdal::Dataset;
use serde::{Deserialize, Serialize};

use super::error::{GeorefError, Result};
use super::transform::{crs_from_srs, spatial_ref, CrsTransform};
use super::types::{Crs, GeoTransform, LonLat};

/// Which rasters make up a mosaic: files (GeoTIFF/COG/VRT) and/or directories of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MosaicSpec {
    /// Raster files or directories (a directory contributes its `*.tif`, `*.tiff`, `*.vrt`).
    pub paths: Vec<PathBuf>,
}

/// A source raster's footprint in the mosaic CRS: `[xmin, ymin, xmax, ymax]`, CRS units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    /// The source file.
    pub path: PathBuf,
    /// Axis-aligned bounds in the mosaic CRS.
    pub bounds: [f64; 4],
}

/// An opened mosaic; owns GDAL handles (`Send`, not `Sync`).
pub struct MosaicReader {
    pub(crate) ds: Dataset,
    pub(crate) name: String,
    pub(crate) crs: Crs,
    pub(crate) gt: GeoTransform,
    pub(crate) size: (usize, usize),
    pub(crate) bands: [i32; 3],
    pub(crate) files: Vec<PathBuf>,
    pub(crate) footprints: Vec<Footprint>,
}

impl MosaicSpec {
    /// A mosaic of one file or directory.
    pub fn from_path(p: impl Into<PathBuf>) -> Self {
        MosaicSpec { paths: vec![p.into()] }
    }

    /// Expand directories into their raster files (sorted); error on an empty directory.
    pub fn resolve_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for p in &self.paths {
            if p.is_dir() {
                let mut found = list_rasters(p)?;
                if found.is_empty() {
                    return Err(GeorefError::EmptyDirectory(p.clone()));
                }
                out.append(&mut found);
            } else {
                out.push(p.clone());
            }
        }
        if out.is_empty() {
            return Err(GeorefError::NoSources);
        }
        Ok(out)
    }

    /// Open and validate every source; join several into one in-memory VRT.
    pub fn open(&self) -> Result<MosaicReader> {
        let files = self.resolve_files()?;
        let mut opened = Vec::with_capacity(files.len());
        for f in &files {
            opened.push(open_source(f)?);
        }
        check_same_crs(&opened)?;
        let footprints = collect_footprints(&opened)?;
        let name = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        let (ds, crs) = if opened.len() == 1 {
            let o = opened.pop().ok_or(GeorefError::NoSources)?;
            (o.ds, o.crs)
        } else {
            let crs = opened[0].crs.clone();
            let dss: Vec<&Dataset> = opened.iter().map(|o| &o.ds).collect();
            let vrt = gdal::programs::raster::build_vrt(None, &dss, None)
                .map_err(|e| GeorefError::gdal(format!("building VRT of {name}"), e))?;
            (vrt, crs)
        };
        MosaicReader::from_parts(ds, name, crs, files, footprints)
    }
}

fn list_rasters(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| GeorefError::Io { path: dir.to_path_buf(), source };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if path.is_file() && matches!(ext.as_str(), "tif" | "tiff" | "vrt") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

pub(crate) struct Opened {
    pub path: PathBuf,
    pub ds: Dataset,
    pub crs: Crs,
    pub gt: GeoTransform,
}

/// Open one raster and check it is georeferenced with a CRS GDAL understands.
pub(crate) fn open_source(path: &Path) -> Result<Opened> {
    let ds = Dataset::open(path).map_err(|e| GeorefError::Open { path: path.to_path_buf(), msg: e.to_string() })?;
    let no_geo = |what: &str| GeorefError::NoGeoreference { path: path.to_path_buf(), what: what.into() };
    if ds.raster_count() == 0 {
        return Err(GeorefError::Open { path: path.to_path_buf(), msg: "no raster bands".into() });
    }
    let gt = ds.geo_transform().map_err(|_| no_geo("no geotransform"))?;
    if gt == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0] {
        return Err(no_geo("identity geotransform (pixel coordinates only)"));
    }
    GeoTransform(gt).invert()?;
    let wkt = ds.projection();
    if wkt.trim().is_empty() {
        return Err(no_geo("no coordinate reference system"));
    }
    let srs =
        SpatialRef::from_wkt(&wkt).map_err(|e| GeorefError::UnknownCrs { crs: wkt.clone(), msg: e.to_string() })?;
    let crs = crs_from_srs(&srs, &wkt)?;
    // A CRS PROJ cannot relate to WGS84 is as good as unknown for us.
    CrsTransform::new(&crs).map_err(|e| GeorefError::UnknownCrs {
        crs: format!("{} (of {})", crs.label(), path.display()),
        msg: format!("cannot relate it to WGS84: {e}"),
    })?;
    Ok(Opened { path: path.to_path_buf(), ds, crs, gt: GeoTransform(gt) })
}

fn check_same_crs(opened: &[Opened]) -> Result<()> {
    let first = match opened.first() {
        Some(f) => f,
        None => return Err(GeorefError::NoSources),
    };
    let a = spatial_ref(&first.crs)?;
    for o in &opened[1..] {
        let b = spatial_ref(&o.crs)?;
        // SAFETY: both handles are valid for the duration of the call.
        let same = unsafe { gdal_sys::OSRIsSame(a.to_c_hsrs(), b.to_c_hsrs()) } != 0;
        if !same {
            return Err(GeorefError::MixedCrs {
                first: first.path.clone(),
                first_crs: first.crs.label(),
                other: o.path.clone(),
                other_crs: o.crs.label(),
            });
        }
    }
    Ok(())
}

/// Axis-aligned bounds `[xmin, ymin, xmax, ymax]` of a raster of `size` under `gt`.
pub(crate) fn bounds_of(gt: &GeoTransform, size: (usize, usize)) -> [f64; 4] {
    let (w, h) = (size.0 as f64, size.1 as f64);
    let c = [gt.apply(0.0, 0.0), gt.apply(w, 0.0), gt.apply(0.0, h), gt.apply(w, h)];
    let xs = c.iter().map(|p| p.0);
    let ys = c.iter().map(|p| p.1);
    [
        xs.clone().fold(f64::INFINITY, f64::min),
        ys.clone().fold(f64::INFINITY, f64::min),
        xs.fold(f64::NEG_INFINITY, f64::max),
        ys.fold(f64::NEG_INFINITY, f64::max),
    ]
}

fn collect_footprints(opened: &[Opened]) -> Result<Vec<Footprint>> {
    let mut out = Vec::new();
    for o in opened {
        let is_vrt = o.ds.driver().short_name() == "VRT";
        let inner = if is_vrt { vrt_member_footprints(o) } else { Vec::new() };
        if inner.is_empty() {
            out.push(Footprint { path: o.path.clone(), bounds: bounds_of(&o.gt, o.ds.raster_size()) });
        } else {
            out.extend(inner);
        }
    }
    Ok(out)
}

/// Footprints of a VRT's member files (best effort: members that fail to open are skipped,
/// and the caller falls back to the VRT's own extent when none open).
fn vrt_member_footprints(o: &Opened) -> Vec<Footprint> {
    // SAFETY: GDALGetFileList returns a CSL string list that we own and free.
    let files: Vec<PathBuf> = unsafe {
        let list = gdal_sys::GDALGetFileList(o.ds.c_dataset());
        let mut v = Vec::new();
        let mut i = 0;
        while !list.is_null() && !(*list.add(i)).is_null() {
            let s = std::ffi::CStr::from_ptr(*list.add(i)).to_string_lossy().to_string();
            v.push(PathBuf::from(s));
            i += 1;
        }
        gdal_sys::CSLDestroy(list);
        v
    };
    files
        .into_iter()
        .filter(|f| f.canonicalize().ok() != o.path.canonicalize().ok())
        .filter_map(|f| {
            let m = open_source(&f).ok()?;
            Some(Footprint { bounds: bounds_of(&m.gt, m.ds.raster_size()), path: f })
        })
        .collect()
}

impl MosaicReader {
    fn from_parts(
        ds: Dataset,
        name: String,
        crs: Crs,
        files: Vec<PathBuf>,
        footprints: Vec<Footprint>,
    ) -> Result<Self> {
        let gt = GeoTransform(ds.geo_transform().map_err(|e| GeorefError::gdal("mosaic geotransform", e))?);
        let bands = if ds.raster_count() >= 3 { [1, 2, 3] } else { [1, 1, 1] };
        let size = ds.raster_size();
        Ok(MosaicReader { ds, name, crs, gt, size, bands, files, footprints })
    }

    /// The mosaic's CRS.
    pub fn crs(&self) -> &Crs {
        &self.crs
    }

    /// Mosaic pixel (corner convention) → mosaic CRS.
    pub fn geotransform(&self) -> GeoTransform {
        self.gt
    }

    /// Size in pixels (width, height).
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    /// The source files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Source footprints in the mosaic CRS.
    pub fn footprints(&self) -> &[Footprint] {
        &self.footprints
    }

    /// Display name (the source paths).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bounds `[xmin, ymin, xmax, ymax]` in the mosaic CRS.
    pub fn bounds(&self) -> [f64; 4] {
        bounds_of(&self.gt, self.size)
    }

    /// WGS84 bounds `[west, south, east, north]` in degrees (edges densified, 21 points each).
    pub fn bounds_wgs84(&self) -> Result<[f64; 4]> {
        let b = self.bounds();
        let n = 20;
        let mut pts = Vec::with_capacity(4 * (n + 1));
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let x = b[0] + t * (b[2] - b[0]);
            let y = b[1] + t * (b[3] - b[1]);
            pts.extend([(x, b[1]), (x, b[3]), (b[0], y), (b[2], y)]);
        }
        let ll = CrsTransform::new(&self.crs)?.to_lonlat(&pts)?;
        let fold = |f: fn(&LonLat) -> f64, init: f64, op: fn(f64, f64) -> f64| ll.iter().map(f).fold(init, op);
        Ok([
            fold(|p| p.lon, f64::INFINITY, f64::min),
            fold(|p| p.lat, f64::INFINITY, f64::min),
            fold(|p| p.lon, f64::NEG_INFINITY, f64::max),
            fold(|p| p.lat, f64::NEG_INFINITY, f64::max),
        ])
    }

    /// Overview sizes (width, height) of band 1, finest first.
    pub fn overviews(&self) -> Result<Vec<(usize, usize)>> {
        let band = self.ds.rasterband(1).map_err(|e| GeorefError::gdal("band 1", e))?;
        let n = band.overview_count().map_err(|e| GeorefError::gdal("overview count", e))?;
        let mut v = Vec::new();
        for i in 0..n.max(0) as usize {
            let o = band.overview(i).map_err(|e| GeorefError::gdal("overview", e))?;
            v.push(o.size());
        }
        Ok(v)
    }

    /// Fraction of the mosaic's bounding box covered by source footprints (256×256 samples).
    pub fn coverage_fraction(&self) -> f64 {
        let b = self.bounds();
        let n = 256;
        let mut hit = 0usize;
        for j in 0..n {
            let y = b[1] + (j as f64 + 0.5) / n as f64 * (b[3] - b[1]);
            for i in 0..n {
                let x = b[0] + (i as f64 + 0.5) / n as f64 * (b[2] - b[0]);
                if self
                    .footprints
                    .iter()
                    .any(|f| x >= f.bounds[0] && x < f.bounds[2] && y >= f.bounds[1] && y < f.bounds[3])
                {
                    hit += 1;
                }
            }
        }
        hit as f64 / (n * n) as f64
    }

    /// A JSON description: files, CRS, size, resolution, extent (CRS and WGS84), overviews,
    /// coverage (fraction of the bounding box with data; < 1 means gaps).
    pub fn info(&self) -> Result<serde_json::Value> {
        let (px, py) = self.gt.pixel_size();
        let cov = self.coverage_fraction();
        Ok(serde_json::json!({
            "files": self.files,
            "crs": { "label": self.crs.label(), "epsg": self.crs.epsg, "wkt": self.crs.wkt },
            "size_px": [self.size.0, self.size.1],
            "bands": self.ds.raster_count(),
            "geotransform": self.gt.0,
            "resolution_crs_units": [px, py],
            "extent_crs": self.bounds(),
            "extent_wgs84_lon_lat": self.bounds_wgs84()?,
            "overviews_px": self.overviews()?,
            "footprints": self.footprints,
            "coverage_fraction": cov,
            "has_gaps": cov < 1.0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::georef::testutil::{write_grid, write_tile, GT_3857, GT_UTM};
    use gdal::DriverManager;

    fn open_err(p: &Path) -> GeorefError {
        match MosaicSpec::from_path(p).open() {
            Ok(_) => panic!("{} opened", p.display()),
            Err(e) => e,
        }
    }

    #[test]
    fn raster_without_georeferencing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain.tif");
        let drv = DriverManager::get_driver_by_name("GTiff").unwrap();
        drop(drv.create_with_band_type::<u8, _>(&p, 8, 8, 3).unwrap());
        assert!(matches!(open_err(&p), GeorefError::NoGeoreference { .. }));
        // A geotransform but no CRS.
        let q = write_tile(&dir.path().join("nocrs.tif"), None, GT_UTM, (0, 0), (8, 8));
        let e = open_err(&q);
        assert!(matches!(e, GeorefError::NoGeoreference { .. }), "{e}");
        assert!(e.to_string().contains("nocrs.tif"), "{e}");
    }

    #[test]
    fn unknown_crs() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tile(&dir.path().join("local.tif"), None, GT_UTM, (0, 0), (8, 8));
        {
            let mut ds = Dataset::open_ex(
                &p,
                gdal::DatasetOptions { open_flags: gdal::GdalOpenFlags::GDAL_OF_UPDATE, ..Default::default() },
            )
            .unwrap();
            ds.set_projection(r#"LOCAL_CS["site grid",UNIT["metre",1]]"#).unwrap();
        }
        let e = open_err(&p);
        assert!(matches!(e, GeorefError::UnknownCrs { .. }), "{e}");
    }

    #[test]
    fn corrupt_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.tif");
        std::fs::write(&junk, b"II*\0 this is not a tiff at all").unwrap();
        assert!(matches!(open_err(&junk), GeorefError::Open { .. }));
        let p = write_tile(&dir.path().join("t.tif"), Some(32632), GT_UTM, (0, 0), (300, 300));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        // Either opening or reading must fail with an error (which one depends on where
        // GDAL placed the directory); never a panic.
        match MosaicSpec::from_path(&p).open() {
            Err(e) => assert!(matches!(e, GeorefError::Open { .. }), "{e}"),
            Ok(r) => {
                let c = crate::georef::chip::ChipRequest::new(LonLat::new(11.5563, 48.1847));
                let req = crate::georef::chip::ChipRequest { width: 300, height: 300, ..c };
                let e = r.chip(&req).unwrap_err();
                assert!(matches!(e, GeorefError::Read { .. }), "{e}");
            }
        }
        let missing = dir.path().join("missing.tif");
        assert!(matches!(open_err(&missing), GeorefError::Open { .. }));
    }

    #[test]
    fn empty_directory_and_mixed_crs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(open_err(dir.path()), GeorefError::EmptyDirectory(_)));
        assert!(matches!(MosaicSpec { paths: vec![] }.open(), Err(GeorefError::NoSources)));
        write_tile(&dir.path().join("a.tif"), Some(32632), GT_UTM, (0, 0), (8, 8));
        write_tile(&dir.path().join("b.tif"), Some(3857), GT_3857, (0, 0), (8, 8));
        assert!(matches!(open_err(dir.path()), GeorefError::MixedCrs { .. }));
    }

    #[test]
    fn info_reports_extent_overviews_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        write_grid(dir.path(), 32632, GT_UTM, (200, 100), (2, 1));
        let r = MosaicSpec::from_path(dir.path()).open().unwrap();
        let info = r.info().unwrap();
        assert_eq!(info["crs"]["epsg"], 32632);
        assert_eq!(info["size_px"], serde_json::json!([200, 100]));
        assert_eq!(info["extent_crs"], serde_json::json!([690000.0, 5339950.0, 690100.0, 5340000.0]));
        let w = info["extent_wgs84_lon_lat"].as_array().unwrap();
        assert!((w[0].as_f64().unwrap() - 11.5563).abs() < 1e-3, "{w:?}");
        assert!((w[1].as_f64().unwrap() - 48.184).abs() < 1e-2, "{w:?}");
        assert_eq!(info["has_gaps"], false);
        assert_eq!(info["overviews_px"], serde_json::json!([]));
    }
}
