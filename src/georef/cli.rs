//! `smgeo mosaic build|info|chip`: the command-line face of the georef stage.
//! `info` and `chip` print JSON on stdout; positions are `LON,LAT` in WGS84 degrees.

use std::path::PathBuf;

use anyhow::Context;

use super::chip::{ChipGrid, ChipRequest, CoveragePolicy};
use super::gdalutil::Resampling;
use super::mosaic::MosaicSpec;
use super::types::LonLat;
use super::writer::{build_mosaic, write_chip, BuildOptions, Compression};

/// Tile compression on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// Lossless DEFLATE.
    Deflate,
    /// Lossy JPEG (3-band 8-bit imagery).
    Jpeg,
}

/// `smgeo mosaic ...` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MosaicCmd {
    /// Tile imagery into COGs (256-px blocks, overviews) plus an index.vrt.
    Build {
        /// Source rasters or directories of them.
        #[arg(required = true, value_hint = clap::ValueHint::AnyPath)]
        inputs: Vec<PathBuf>,
        /// Output directory (created).
        #[arg(long, short, value_hint = clap::ValueHint::DirPath)]
        out: PathBuf,
        /// Tile side in pixels (one COG per tile).
        #[arg(long, default_value_t = 4096)]
        tile_px: usize,
        /// Compression.
        #[arg(long, value_enum, default_value_t = CompressArg::Deflate)]
        compress: CompressArg,
        /// JPEG quality 1..=100.
        #[arg(long, default_value_t = 85)]
        jpeg_quality: u8,
        /// Reproject to this CRS first (e.g. EPSG:32632).
        #[arg(long)]
        t_srs: Option<String>,
        /// Resampling for reprojection and overviews.
        #[arg(long, value_enum, default_value_t = Resampling::Bilinear)]
        resampling: Resampling,
    },
    /// Show extent (CRS and WGS84), CRS, resolution, overviews and coverage gaps as JSON.
    Info {
        /// Mosaic files (GeoTIFF/COG/VRT) or directories.
        #[arg(required = true, value_hint = clap::ValueHint::AnyPath)]
        inputs: Vec<PathBuf>,
    },
    /// Cut a georeferenced chip around a WGS84 position and write it as GeoTIFF.
    Chip {
        /// Mosaic files or directories (repeatable).
        #[arg(long, required = true, env = "SMGEO_MOSAIC", value_delimiter = ',')]
        mosaic: Vec<PathBuf>,
        /// Centre as LON,LAT in WGS84 degrees.
        #[arg(long, allow_hyphen_values = true)]
        center: String,
        /// Ground sample distance in metres per pixel (default: the mosaic's native resolution).
        #[arg(long)]
        gsd: Option<f64>,
        /// Chip size: N (square) or WxH pixels.
        #[arg(long, default_value = "1024")]
        size: String,
        /// Chip grid: the mosaic's CRS or the local UTM zone.
        #[arg(long, value_enum, default_value_t = ChipGrid::Mosaic)]
        grid: ChipGrid,
        /// Resampling when chip pixels are not source pixels.
        #[arg(long, value_enum, default_value_t = Resampling::Nearest)]
        resampling: Resampling,
        /// Refuse chips that are not fully covered (default: fill and report coverage).
        #[arg(long)]
        refuse_partial: bool,
        /// Fill value for uncovered pixels.
        #[arg(long, default_value_t = 0)]
        fill: u8,
        /// Minimum covered fraction (0..=1) accepted when filling.
        #[arg(long, default_value_t = 0.0)]
        min_coverage: f64,
        /// Output GeoTIFF.
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        out: PathBuf,
    },
}

/// Parse `N` or `WxH` into (width, height) pixels.
pub fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |v: &str| v.trim().parse::<usize>().with_context(|| format!("bad chip size {s:?}: expected N or WxH"));
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((parse(w)?, parse(h)?)),
        None => {
            let n = parse(s)?;
            Ok((n, n))
        }
    }
}

/// Run one `smgeo mosaic` subcommand.
pub fn run(cmd: &MosaicCmd) -> anyhow::Result<()> {
    match cmd {
        MosaicCmd::Build { inputs, out, tile_px, compress, jpeg_quality, t_srs, resampling } => {
            let compression = match compress {
                CompressArg::Deflate => Compression::Deflate,
                CompressArg::Jpeg => Compression::Jpeg { quality: *jpeg_quality },
            };
            let opts = BuildOptions { tile_px: *tile_px, compression, t_srs: t_srs.clone(), resampling: *resampling };
            let rep = build_mosaic(&MosaicSpec { paths: inputs.clone() }, out, &opts)?;
            println!("{}", serde_json::to_string_pretty(&rep)?);
        }
        MosaicCmd::Info { inputs } => {
            let reader = MosaicSpec { paths: inputs.clone() }.open()?;
            println!("{}", serde_json::to_string_pretty(&reader.info()?)?);
        }
        MosaicCmd::Chip { mosaic, center, gsd, size, grid, resampling, refuse_partial, fill, min_coverage, out } => {
            let (width, height) = parse_size(size)?;
            let coverage = if *refuse_partial {
                CoveragePolicy::Refuse
            } else {
                CoveragePolicy::Fill { value: *fill, min_coverage: *min_coverage }
            };
            let req = ChipRequest {
                center: LonLat::parse(center)?,
                gsd_m: *gsd,
                width,
                height,
                grid: *grid,
                coverage,
                resampling: *resampling,
            };
            let chip = MosaicSpec { paths: mosaic.clone() }.open()?.chip(&req)?;
            write_chip(&chip, out)?;
            let mut meta = serde_json::to_value(&chip)?;
            meta["out"] = serde_json::json!(out);
            println!("{}", serde_json::to_string_pretty(&meta)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::georef::testutil::{write_grid, GT_UTM};
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: MosaicCmd,
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), (1024, 1024));
        assert_eq!(parse_size("640x480").unwrap(), (640, 480));
        assert!(parse_size("big").is_err());
    }

    #[test]
    fn chip_command_writes_georeferenced_tif() {
        let dir = tempfile::tempdir().unwrap();
        write_grid(dir.path(), 32632, GT_UTM, (200, 200), (2, 1));
        let out = dir.path().join("chip.out.tif");
        let m = dir.path().display().to_string();
        let o = out.display().to_string();
        let args = [
            "x",
            "chip",
            "--mosaic",
            &m,
            "--center",
            "11.5570,48.1843",
            "--gsd",
            "0.5",
            "--size",
            "64x32",
            "--out",
            &o,
        ];
        run(&Top::try_parse_from(args).unwrap().cmd).unwrap();
        let r = MosaicSpec::from_path(&out).open().unwrap();
        assert_eq!(r.size(), (64, 32));
        let bad = ["x", "chip", "--mosaic", &m, "--center", "11.5570,48.1843", "--gsd", "0", "--out", &o];
        assert!(run(&Top::try_parse_from(bad).unwrap().cmd).is_err());
        let info = Top::try_parse_from(["x", "info", &m]).unwrap();
        run(&info.cmd).unwrap();
    }
}
