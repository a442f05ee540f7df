//! A CVOGL split on disk (records + `query/` and `satellite/` images) and batching
//! into model tensors. Image problems (missing, unreadable, wrong size) are reported
//! with the record id; the caller decides to skip (counted) or stop.

use std::path::{Path, PathBuf};

use image::RgbImage;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use super::augment::{augment_query, augment_sat, AugmentConfig};
use super::cvogl::{CvoglRecord, CvoglSplit, DatasetGeometry, LoadOptions, LoadReport};
use super::{OfflineError, Result};
use crate::model::preprocess;

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub split: String,
    pub records: Vec<CvoglRecord>,
    pub report: LoadReport,
    pub geometry: DatasetGeometry,
    /// sha256 of the annotation file.
    pub hash: String,
    /// Resize factor applied on load (the model's `input_scale`); boxes and clicks follow.
    pub scale: f64,
}

/// One loaded (and possibly augmented) sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: i64,
    pub query: RgbImage,
    pub sat: RgbImage,
    pub click: (f64, f64),
    pub bbox: [f64; 4],
    pub category: String,
}

impl Dataset {
    pub fn open(root: &Path, name: &str, split: &str, strict: bool) -> Result<Self> {
        let (records, report) = CvoglSplit::load_with(root, name, split, &LoadOptions { strict, geometry: None })?;
        let bytes =
            std::fs::read(&report.path).map_err(|e| OfflineError::Io { path: report.path.clone(), source: e })?;
        let hash = format!("{:x}", Sha256::digest(&bytes));
        Ok(Dataset {
            name: name.into(),
            split: split.into(),
            geometry: report.geometry,
            records,
            report,
            hash,
            scale: 1.0,
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn dir(&self) -> &Path {
        &self.report.dataset_dir
    }

    /// Read the images of record `i`, checking their sizes.
    pub fn load(&self, i: usize) -> Result<Sample> {
        let r = &self.records[i];
        let read = |p: PathBuf, hw: (u32, u32), what: &str| -> Result<RgbImage> {
            let img = image::open(&p)
                .map_err(|e| OfflineError::Sample { id: r.id, msg: format!("{what} image {}: {e}", p.display()) })?
                .to_rgb8();
            if (img.height(), img.width()) != hw {
                return Err(OfflineError::Sample {
                    id: r.id,
                    msg: format!(
                        "{what} image {} is {}×{}, expected {}×{}",
                        p.display(),
                        img.width(),
                        img.height(),
                        hw.1,
                        hw.0
                    ),
                });
            }
            Ok(img)
        };
        let query = read(r.query_path(self.dir()), self.geometry.query_hw, "query")?;
        let sat = read(r.sat_path(self.dir()), self.geometry.sat_hw, "satellite")?;
        let s = Sample { id: r.id, query, sat, click: r.click, bbox: r.bbox, category: r.category.clone() };
        Ok(self.to_model_scale(s))
    }

    /// The next batch of up to `size` loadable samples among records `*next..end`, in
    /// order, advancing `*next`; a sample that fails to load is reported in `skipped`
    /// (never silently dropped). Empty only when the range is exhausted or every sample
    /// in the attempted window failed.
    pub fn next_batch(&self, next: &mut usize, end: usize, size: usize, skipped: &mut Vec<String>) -> Vec<Sample> {
        let mut samples = Vec::with_capacity(size.max(1));
        while samples.len() < size.max(1) && *next < end {
            match self.load(*next) {
                Ok(s) => samples.push(s),
                Err(e) => skipped.push(e.to_string()),
            }
            *next += 1;
        }
        samples
    }

    /// A full-size sample (files of this dataset, or drawn like them) at the model's
    /// `scale`.
    pub fn to_model_scale(&self, s: Sample) -> Sample {
        if (self.scale - 1.0).abs() > 1e-9 {
            rescale(s, self.scale)
        } else {
            s
        }
    }

    /// Satellite (height, width) the model sees.
    pub fn sat_hw_scaled(&self) -> (f64, f64) {
        let (h, w) = self.geometry.sat_hw;
        ((h as f64 * self.scale).round(), (w as f64 * self.scale).round())
    }
}

/// Resize both images by `f` (rounded sides), moving the box and the click with them.
pub fn rescale(s: Sample, f: f64) -> Sample {
    let rs = |img: &RgbImage| {
        let (w, h) =
            ((img.width() as f64 * f).round().max(1.0) as u32, (img.height() as f64 * f).round().max(1.0) as u32);
        (
            image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle),
            w as f64 / img.width() as f64,
            h as f64 / img.height() as f64,
        )
    };
    let (query, qx, qy) = rs(&s.query);
    let (sat, sx, sy) = rs(&s.sat);
    Sample {
        click: (s.click.0 * qx, s.click.1 * qy),
        bbox: [s.bbox[0] * sx, s.bbox[1] * sy, s.bbox[2] * sx, s.bbox[3] * sy],
        query,
        sat,
        ..s
    }
}

/// Apply training augmentation to a sample.
pub fn augment(s: Sample, cfg: &AugmentConfig, rng: &mut impl rand::Rng) -> Sample {
    let (sat, bbox) = augment_sat(&s.sat, s.bbox, cfg, rng);
    let (query, click) = augment_query(&s.query, s.click, cfg, rng);
    Sample { sat, bbox, query, click, ..s }
}

/// Model tensors for a batch.
#[derive(Debug)]
pub struct Batch {
    pub query: Tensor,
    pub sat: Tensor,
    pub boxes: Vec<[f32; 4]>,
    pub ids: Vec<i64>,
    pub categories: Vec<String>,
}

pub fn collate(samples: &[Sample], dev: Device) -> Result<Batch> {
    let mut q = Vec::with_capacity(samples.len());
    let mut s = Vec::with_capacity(samples.len());
    for x in samples {
        let (qw, qh) = x.query.dimensions();
        let (sw, sh) = x.sat.dimensions();
        let click = (x.click.0.clamp(0.0, qw as f64 - 1.0), x.click.1.clamp(0.0, qh as f64 - 1.0));
        q.push(preprocess::to_input(x.query.as_raw(), qw as i64, qh as i64, 3 * qw as usize, Some(click))?);
        s.push(preprocess::to_input(x.sat.as_raw(), sw as i64, sh as i64, 3 * sw as usize, None)?);
    }
    Ok(Batch {
        query: crate::model::upload(&Tensor::stack(&q, 0), dev),
        sat: crate::model::upload(&Tensor::stack(&s, 0), dev),
        boxes: samples.iter().map(|x| x.bbox.map(|v| v as f32)).collect(),
        ids: samples.iter().map(|x| x.id).collect(),
        categories: samples.iter().map(|x| x.category.clone()).collect(),
    })
}
