//! A CVOGL split on disk (records + `query/` and `satellite/` images) and batching
//! into model tensors. Image problems (missing, unreadable, wrong size) are reported
//! with the record id; the caller decides to skip (counted) or stop.

use std::path::{Path, PathBuf};

use image::RgbImage;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use super::augment::{augment_query, augment_sat, augment_sat_boxes, AugmentConfig};
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
        self.load_group(&[i]).pop().unwrap_or_else(|| Err(OfflineError::Config("load: empty group".into())))
    }

    /// Read records `idx` that share one satellite image (a group of
    /// [`Dataset::chip_groups`]): the satellite image is read and resized once. One result
    /// per record, in order; a satellite image that fails fails every record of the group,
    /// each reported with its own id.
    pub fn load_group(&self, idx: &[usize]) -> Vec<Result<Sample>> {
        let Some(&i0) = idx.first() else { return vec![] };
        let r0 = &self.records[i0];
        let sat = self
            .read_image(r0.id, r0.sat_path(self.dir()), self.geometry.sat_hw, "satellite")
            .map(|img| resize_by(img, self.scale));
        idx.iter()
            .map(|&i| {
                let r = &self.records[i];
                if r.sat_file != r0.sat_file {
                    return Err(OfflineError::Sample {
                        id: r.id,
                        msg: format!("grouped with record {} but its satellite image differs", r0.id),
                    });
                }
                let (sat, sx, sy) = match &sat {
                    Ok(x) => x.clone(),
                    Err(e) => return Err(OfflineError::Sample { id: r.id, msg: strip_id(e) }),
                };
                let query = self.read_image(r.id, r.query_path(self.dir()), self.geometry.query_hw, "query")?;
                let (query, qx, qy) = resize_by(query, self.scale);
                Ok(Sample {
                    id: r.id,
                    query,
                    sat,
                    click: (r.click.0 * qx, r.click.1 * qy),
                    bbox: [r.bbox[0] * sx, r.bbox[1] * sy, r.bbox[2] * sx, r.bbox[3] * sy],
                    category: r.category.clone(),
                })
            })
            .collect()
    }

    fn read_image(&self, id: i64, p: PathBuf, hw: (u32, u32), what: &str) -> Result<RgbImage> {
        let img = image::open(&p)
            .map_err(|e| OfflineError::Sample { id, msg: format!("{what} image {}: {e}", p.display()) })?
            .to_rgb8();
        if (img.height(), img.width()) != hw {
            return Err(OfflineError::Sample {
                id,
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
    }

    /// Records `0..n` grouped by satellite image, groups in the order of their first
    /// record; a group larger than `max` (0: no limit) is cut into runs of at most `max`.
    /// Records that share no image are groups of one.
    pub fn chip_groups(&self, n: usize, max: usize) -> Vec<Vec<usize>> {
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, r) in self.records.iter().enumerate().take(n) {
            let g = *index.entry(r.sat_file.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        if max == 0 {
            return groups;
        }
        groups.into_iter().flat_map(|g| g.chunks(max).map(<[usize]>::to_vec).collect::<Vec<_>>()).collect()
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
    let (query, qx, qy) = resize_by(s.query, f);
    let (sat, sx, sy) = resize_by(s.sat, f);
    Sample {
        click: (s.click.0 * qx, s.click.1 * qy),
        bbox: [s.bbox[0] * sx, s.bbox[1] * sy, s.bbox[2] * sx, s.bbox[3] * sy],
        query,
        sat,
        ..s
    }
}

/// `img` resized by `f` (rounded sides; unchanged when `f` is 1) and the actual x and y
/// factors.
fn resize_by(img: RgbImage, f: f64) -> (RgbImage, f64, f64) {
    if (f - 1.0).abs() <= 1e-9 {
        return (img, 1.0, 1.0);
    }
    let (w, h) = ((img.width() as f64 * f).round().max(1.0) as u32, (img.height() as f64 * f).round().max(1.0) as u32);
    let out = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    (out, w as f64 / img.width() as f64, h as f64 / img.height() as f64)
}

/// The message of a per-sample error without its record id (it is reported again under
/// another record's id).
fn strip_id(e: &OfflineError) -> String {
    match e {
        OfflineError::Sample { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}

/// Apply training augmentation to a sample.
pub fn augment(s: Sample, cfg: &AugmentConfig, rng: &mut impl rand::Rng) -> Sample {
    let (sat, bbox) = augment_sat(&s.sat, s.bbox, cfg, rng);
    let (query, click) = augment_query(&s.query, s.click, cfg, rng);
    Sample { sat, bbox, query, click, ..s }
}

/// Augment samples that share one satellite image: the chip is transformed once (the
/// crop keeps every box) with `rng`, which then augments the first query; query `j > 0`
/// uses `rngs(j)`. A group of one is augmented exactly as [`augment`] does.
pub fn augment_group<R: rand::Rng>(
    group: Vec<Sample>,
    cfg: &AugmentConfig,
    rng: &mut R,
    mut rngs: impl FnMut(usize) -> R,
) -> Vec<Sample> {
    let Some(first) = group.first() else { return group };
    let boxes: Vec<_> = group.iter().map(|s| s.bbox).collect();
    let (sat, boxes) = augment_sat_boxes(&first.sat, &boxes, cfg, rng);
    group
        .into_iter()
        .zip(boxes)
        .enumerate()
        .map(|(j, (s, bbox))| {
            let (query, click) = if j == 0 {
                augment_query(&s.query, s.click, cfg, rng)
            } else {
                augment_query(&s.query, s.click, cfg, &mut rngs(j))
            };
            Sample { sat: sat.clone(), bbox, query, click, ..s }
        })
        .collect()
}

/// Model tensors for a batch.
#[derive(Debug)]
pub struct Batch {
    /// Queries (N, 4, Hq, Wq).
    pub query: Tensor,
    /// Satellite chips (G, 3, Hs, Ws), G ≤ N.
    pub sat: Tensor,
    /// Chip of each query (int64, N) when chips hold several queries; `None`: query i on
    /// chip i.
    pub ref_index: Option<Tensor>,
    pub boxes: Vec<[f32; 4]>,
    pub ids: Vec<i64>,
    pub categories: Vec<String>,
}

/// One sample per chip.
pub fn collate(samples: &[Sample], dev: Device) -> Result<Batch> {
    let groups: Vec<&[Sample]> = samples.chunks(1).collect();
    collate_groups(&groups, dev)
}

/// Groups of samples that share their chip (each group's chip is taken from its first
/// sample): every chip is uploaded once, with the index of each query's chip.
pub fn collate_groups(groups: &[&[Sample]], dev: Device) -> Result<Batch> {
    let n: usize = groups.iter().map(|g| g.len()).sum();
    let mut q = Vec::with_capacity(n);
    let mut s = Vec::with_capacity(groups.len());
    let mut index = Vec::with_capacity(n);
    let mut members = Vec::with_capacity(n);
    for g in groups.iter().filter(|g| !g.is_empty()) {
        let chip = &g[0].sat;
        let (sw, sh) = chip.dimensions();
        s.push(preprocess::to_input(chip.as_raw(), sw as i64, sh as i64, 3 * sw as usize, None)?);
        for x in g.iter() {
            let (qw, qh) = x.query.dimensions();
            let click = (x.click.0.clamp(0.0, qw as f64 - 1.0), x.click.1.clamp(0.0, qh as f64 - 1.0));
            q.push(preprocess::to_input(x.query.as_raw(), qw as i64, qh as i64, 3 * qw as usize, Some(click))?);
            index.push(s.len() as i64 - 1);
            members.push(x);
        }
    }
    let shared = members.len() > s.len();
    Ok(Batch {
        query: crate::model::upload(&Tensor::stack(&q, 0), dev),
        sat: crate::model::upload(&Tensor::stack(&s, 0), dev),
        ref_index: shared.then(|| Tensor::from_slice(&index).to_device(dev)),
        boxes: members.iter().map(|x| x.bbox.map(|v| v as f32)).collect(),
        ids: members.iter().map(|x| x.id).collect(),
        categories: members.iter().map(|x| x.category.clone()).collect(),
    })
}
