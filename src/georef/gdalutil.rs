//! Thin safe wrappers over the GDAL C calls the `gdal` crate does not expose:
//! dataset-level `RasterIO` with a floating-point source window straight into an
//! interleaved RGB buffer, and the `gdal_translate` / `gdalwarp` library entry points.

use std::ffi::{c_int, c_void, CStr, CString};
use std::path::Path;

use gdal::cpl::CslStringList;
use gdal::{Dataset, Metadata};

use super::error::{GeorefError, Result};

/// GDAL's last error message (thread-local in GDAL), or a placeholder.
pub(crate) fn last_error() -> String {
    // SAFETY: CPLGetLastErrorMsg returns a pointer to a thread-local, NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(gdal_sys::CPLGetLastErrorMsg()) };
    let s = msg.to_string_lossy().trim().to_string();
    if s.is_empty() {
        "no message from GDAL".into()
    } else {
        s
    }
}

/// Resampling used when a chip pixel is not a source pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum Resampling {
    /// Nearest neighbour (keeps source values; default).
    #[default]
    Nearest,
    /// Bilinear.
    Bilinear,
    /// Cubic convolution.
    Cubic,
    /// Average (for strong downsampling).
    Average,
}

impl Resampling {
    fn rio(self) -> gdal_sys::GDALRIOResampleAlg::Type {
        use gdal_sys::GDALRIOResampleAlg::*;
        match self {
            Resampling::Nearest => GRIORA_NearestNeighbour,
            Resampling::Bilinear => GRIORA_Bilinear,
            Resampling::Cubic => GRIORA_Cubic,
            Resampling::Average => GRIORA_Average,
        }
    }

    /// The `-r` name gdalwarp / gdal_translate use.
    pub fn gdal_name(self) -> &'static str {
        match self {
            Resampling::Nearest => "near",
            Resampling::Bilinear => "bilinear",
            Resampling::Cubic => "cubic",
            Resampling::Average => "average",
        }
    }
}

/// A source window (floating point, source pixels) and where it lands in a chip buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadWindow {
    /// Source window x offset, y offset, width, height (pixels, fractional allowed).
    pub src: [f64; 4],
    /// Destination column, row, width, height inside the chip (pixels).
    pub dst: [usize; 4],
}

/// Read 3 bands (`bands`, 1-based) of `ds` into the HWC u8 buffer `buf` of row length `chip_w`.
pub(crate) fn read_rgb(
    ds: &Dataset,
    bands: [c_int; 3],
    w: &ReadWindow,
    buf: &mut [u8],
    chip_w: usize,
    resample: Resampling,
) -> Result<()> {
    let [sx, sy, sw, sh] = w.src;
    let [dc, dr, dw, dh] = w.dst;
    let (ix, iy) = (sx.floor(), sy.floor());
    let (iw, ih) = ((sx + sw).ceil() - ix, (sy + sh).ceil() - iy);
    let (rx, ry) = ds.raster_size();
    let err = |msg: String| GeorefError::Read {
        path: ds.description().unwrap_or_default(),
        x: ix as i64,
        y: iy as i64,
        width: iw.max(0.0) as usize,
        height: ih.max(0.0) as usize,
        msg,
    };
    let inside = ix >= 0.0 && iy >= 0.0 && ix + iw <= rx as f64 && iy + ih <= ry as f64;
    let end = ((dr + dh.saturating_sub(1)) * chip_w + dc + dw) * 3;
    if !inside || dw == 0 || dh == 0 || dc + dw > chip_w || end > buf.len() {
        return Err(err(format!("window outside raster {rx}x{ry} or buffer")));
    }
    let mut extra = gdal_sys::GDALRasterIOExtraArg {
        nVersion: 1,
        eResampleAlg: resample.rio(),
        pfnProgress: None,
        pProgressData: std::ptr::null_mut(),
        bFloatingPointWindowValidity: 1,
        dfXOff: sx,
        dfYOff: sy,
        dfXSize: sw,
        dfYSize: sh,
    };
    let mut bands = bands;
    let start = (dr * chip_w + dc) * 3;
    // SAFETY: the destination region [start, end) was checked to lie inside `buf`; GDAL
    // writes dw x dh pixels with pixel stride 3, line stride 3*chip_w, band stride 1; the
    // integer window was checked to lie inside the raster.
    let rc = unsafe {
        gdal_sys::GDALDatasetRasterIOEx(
            ds.c_dataset(),
            gdal_sys::GDALRWFlag::GF_Read,
            ix as c_int,
            iy as c_int,
            iw as c_int,
            ih as c_int,
            buf[start..].as_mut_ptr() as *mut c_void,
            dw as c_int,
            dh as c_int,
            gdal_sys::GDALDataType::GDT_Byte,
            3,
            bands.as_mut_ptr(),
            3,
            (3 * chip_w) as gdal_sys::GSpacing,
            1,
            &mut extra,
        )
    };
    if rc != gdal_sys::CPLErr::CE_None {
        return Err(err(last_error()));
    }
    Ok(())
}

fn argv(args: &[String]) -> Result<CslStringList> {
    let mut l = CslStringList::new();
    for a in args {
        l.add_string(a).map_err(|e| GeorefError::gdal("argument list", e))?;
    }
    Ok(l)
}

fn c_path(p: &str) -> Result<CString> {
    CString::new(p).map_err(|_| GeorefError::Invalid(format!("path {p:?} contains NUL")))
}

/// `gdal_translate` as a library call: `src` → `dst` with command-line style `args`.
pub(crate) fn translate(src: &Dataset, dst: &Path, args: &[String]) -> Result<Dataset> {
    let list = argv(args)?;
    let dst_s = dst.to_string_lossy().to_string();
    let c_dst = c_path(&dst_s)?;
    // SAFETY: options are created from a valid NUL-terminated argv and freed below; the
    // returned handle is owned by the new Dataset.
    unsafe {
        let opts = gdal_sys::GDALTranslateOptionsNew(list.as_ptr(), std::ptr::null_mut());
        if opts.is_null() {
            return Err(GeorefError::gdal("gdal_translate options", last_error()));
        }
        let mut usage: c_int = 0;
        let h = gdal_sys::GDALTranslate(c_dst.as_ptr(), src.c_dataset(), opts, &mut usage);
        gdal_sys::GDALTranslateOptionsFree(opts);
        if h.is_null() {
            return Err(GeorefError::Write { path: dst.to_path_buf(), msg: last_error() });
        }
        Ok(Dataset::from_c_dataset(h))
    }
}

/// `gdalwarp` as a library call: `srcs` → new dataset `dst` (e.g. `""` with `-of MEM`).
pub(crate) fn warp(srcs: &[&Dataset], dst: &str, args: &[String]) -> Result<Dataset> {
    let list = argv(args)?;
    let c_dst = c_path(dst)?;
    let mut handles: Vec<gdal_sys::GDALDatasetH> = srcs.iter().map(|d| d.c_dataset()).collect();
    // SAFETY: as in `translate`; source handles stay alive (borrowed) during the call.
    unsafe {
        let opts = gdal_sys::GDALWarpAppOptionsNew(list.as_ptr(), std::ptr::null_mut());
        if opts.is_null() {
            return Err(GeorefError::gdal("gdalwarp options", last_error()));
        }
        let mut usage: c_int = 0;
        let h = gdal_sys::GDALWarp(
            c_dst.as_ptr(),
            std::ptr::null_mut(),
            handles.len() as c_int,
            handles.as_mut_ptr(),
            opts,
            &mut usage,
        );
        gdal_sys::GDALWarpAppOptionsFree(opts);
        if h.is_null() {
            return Err(GeorefError::gdal("gdalwarp", last_error()));
        }
        Ok(Dataset::from_c_dataset(h))
    }
}
