//! `smgeo eval`: deterministic evaluation of a model on a CVOGL split — pixel-IoU
//! acc@0.25 / acc@0.5 / mIoU (DetGeo's definition), the release's cell-local metric
//! (labelled as such), breakdowns by category and box size — written as JSON and a
//! Markdown report with PNG bar charts and example pictures.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde::Serialize;
use tch::{Device, Kind};

use super::dataset::{collate, Dataset, Sample};
use super::metrics::{release_cell_local_iou, EvalAccumulator, EvalSample, EvalSummary, MapDims};
use super::plot;
use super::{OfflineError, Result};
use crate::model::{decode, loss, Smgeo, Trace};
use crate::synth::cli::views_file_name;
use crate::synth::cvogl::ViewRecord;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch: usize,
    /// Evaluate at most this many samples (0 = all).
    pub limit: usize,
    pub device: Device,
    /// Keep this many samples' pictures for the report.
    pub examples: usize,
}

/// One evaluated sample, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: i64,
    pub category: String,
    pub pred_box: [f64; 4],
    pub gt_box: [f64; 4],
    pub score: f32,
    pub pixel_iou: f64,
    #[serde(skip)]
    pub picture: Option<RgbImage>,
}

/// Evaluate `model` on `ds`. Samples whose images fail to load are counted in the
/// summary's `skipped` (never silently dropped).
pub fn evaluate(model: &Smgeo, ds: &Dataset, o: &EvalOptions) -> Result<(EvalSummaryWithSkips, Vec<Prediction>)> {
    let n = if o.limit > 0 { o.limit.min(ds.len()) } else { ds.len() };
    let hw = ds.sat_hw_scaled();
    // Size buckets of the original chip (boxes are scored in the model's input pixels).
    let mut acc = EvalAccumulator::with_thresholds(hw, super::metrics::SizeThresholds::default().scaled(ds.scale));
    let mut preds = Vec::with_capacity(n);
    let mut skipped = Vec::new();
    // (predicted cell, true cell) by record id, for the prompt-split measure.
    let mut cells_by_id: std::collections::HashMap<i64, ((usize, usize), (usize, usize))> = Default::default();
    let tags = view_tags_or_warn(ds);
    let mut i = 0;
    while i < n {
        let samples = ds.next_batch(&mut i, n, o.batch, &mut skipped);
        if samples.is_empty() {
            continue;
        }
        let b = collate(&samples, o.device)?;
        let out = tch::no_grad(|| model.forward_t(&b.query, &b.sat, false, &mut Trace::off()))?;
        let sat_hw = (b.sat.size()[2], b.sat.size()[3]);
        let hs = out.heatmap.size();
        let dims = MapDims { h: hs[2] as usize, w: hs[3] as usize };
        let tg = loss::build_targets(&b.boxes, sat_hw, (hs[2], hs[3]));
        let hm: Vec<f32> = Vec::try_from(out.heatmap.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?;
        let bb: Vec<f32> = Vec::try_from(out.bbox.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?;
        let thm: Vec<f32> = Vec::try_from(tg.heatmap.flatten(0, -1))?;
        let tbb: Vec<f32> = Vec::try_from(tg.bbox.flatten(0, -1))?;
        let dets = decode(&out.heatmap, &out.bbox, sat_hw);
        let cells = dims.h * dims.w;
        for (k, (s, d)) in samples.iter().zip(&dets).enumerate() {
            let (h1, b1) = (&hm[k * cells..(k + 1) * cells], &bb[k * 4 * cells..(k + 1) * 4 * cells]);
            let (h2, b2) = (&thm[k * cells..(k + 1) * cells], &tbb[k * 4 * cells..(k + 1) * 4 * cells]);
            let cl = release_cell_local_iou(h1, b1, h2, b2, dims)?;
            let pred_box = d.box_xyxy.map(|v| v as f64);
            cells_by_id.insert(s.id, ((d.cell.0 as usize, d.cell.1 as usize), cl.gt_cell));
            let iou = acc.push(&EvalSample {
                pred_box,
                gt_box: s.bbox,
                category: &s.category,
                pred_cell: (d.cell.0 as usize, d.cell.1 as usize),
                gt_cell: cl.gt_cell,
                cell_local_iou: Some(cl.iou),
                tags: tags.get(&s.id).map_or(&[], |t| t.as_slice()),
            });
            let picture = (preds.len() < o.examples).then(|| example_picture(s, pred_box, &out.heatmap.get(k as i64)));
            preds.push(Prediction {
                id: s.id,
                category: s.category.clone(),
                pred_box,
                gt_box: s.bbox,
                score: d.score,
                pixel_iou: iou,
                picture,
            });
        }
    }
    let groups: Vec<Vec<((usize, usize), (usize, usize))>> = ds
        .chip_groups(n, 0)
        .iter()
        .map(|g| g.iter().filter_map(|&k| cells_by_id.get(&ds.records[k].id).copied()).collect())
        .collect();
    let prompt_split = prompt_split(&groups);
    Ok((EvalSummaryWithSkips { summary: acc.summary(), skipped, prompt_split }, preds))
}

/// Breakdown tags by record id from a synthetic split's view records
/// ([`crate::synth::cvogl::ViewRecord`], `<dataset>_<split>_views.jsonl` beside the
/// split's `.pth`, written by `smgeo synth cvogl`): the target's size in the chip over its
/// size in the query, the camera pitch and heading, and the same-category objects in
/// the chip. Empty when the file is absent (real CVOGL); a malformed line is an error
/// naming the file and line.
pub fn view_tags(ds: &Dataset) -> Result<std::collections::HashMap<i64, Vec<(&'static str, String)>>> {
    let path = ds.dir().join(views_file_name(&ds.name, &ds.split));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(OfflineError::Io { path, source: e }),
    };
    let mut out = std::collections::HashMap::new();
    for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: ViewRecord = serde_json::from_str(line).map_err(|e| OfflineError::BadInput {
            what: "view records",
            reason: format!("{} line {}: {e}", path.display(), k + 1),
        })?;
        out.insert(v.id, view_buckets(&v));
    }
    Ok(out)
}

/// [`view_tags`], or none with a warning when the file is unreadable: the view breakdown
/// is an extra, and a damaged file should not cost the evaluation.
fn view_tags_or_warn(ds: &Dataset) -> std::collections::HashMap<i64, Vec<(&'static str, String)>> {
    view_tags(ds).unwrap_or_else(|e| {
        tracing::warn!("no breakdown by view: {e}");
        Default::default()
    })
}

/// The buckets of one view record (see [`view_tags`]).
pub fn view_buckets(v: &ViewRecord) -> Vec<(&'static str, String)> {
    let ratio = match v.chip_over_query {
        r if r <= 0.0 => "unknown",
        r if r < 1.0 => "0–1",
        r if r < 2.0 => "1–2",
        r if r < 4.0 => "2–4",
        _ => "4+",
    };
    let pitch = match v.pitch_deg {
        p if p < 60.0 => "<60°",
        p if p < 75.0 => "60–75°",
        _ => "75–90°",
    };
    let quadrant = ["N", "E", "S", "W"][(((v.heading_deg.rem_euclid(360.0) + 45.0) / 90.0) as usize) % 4];
    let same = match v.same_category_in_chip {
        0 => "0",
        1..=2 => "1–2",
        3..=5 => "3–5",
        _ => "6+",
    };
    vec![
        ("chip_over_query", ratio.to_owned()),
        ("pitch", pitch.to_owned()),
        ("heading", quadrant.to_owned()),
        ("same_category_in_chip", same.to_owned()),
    ]
}

/// Does the prompt change the answer? Over pairs of prompts on one satellite chip whose
/// targets lie in different cells, the share whose predicted cells differ too. A
/// query-blind model scores 0 (one answer per chip, whatever the prompt); a model that
/// follows the prompt scores near 1. It does not say the answers are right (centre-cell
/// accuracy does): it tells a model that ignores the prompt from one that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PromptSplit {
    /// Prompt pairs on a shared chip with targets in different cells.
    pub pairs: usize,
    /// Share of those pairs answered in different cells.
    pub split: f64,
}

/// [`PromptSplit`] of chips given as lists of (predicted cell, true cell); None without
/// a qualifying pair (e.g. one prompt per chip).
pub fn prompt_split(chips: &[Vec<((usize, usize), (usize, usize))>]) -> Option<PromptSplit> {
    let (mut pairs, mut split) = (0usize, 0usize);
    for c in chips {
        for a in 0..c.len() {
            for b in a + 1..c.len() {
                if c[a].1 != c[b].1 {
                    pairs += 1;
                    split += usize::from(c[a].0 != c[b].0);
                }
            }
        }
    }
    (pairs > 0).then(|| PromptSplit { pairs, split: split as f64 / pairs as f64 })
}

/// The metrics plus the samples that could not be evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummaryWithSkips {
    #[serde(flatten)]
    pub summary: EvalSummary,
    pub skipped: Vec<String>,
    /// Whether different prompts on one chip get different answers (data with several
    /// prompts per chip only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_split: Option<PromptSplit>,
}

impl std::ops::Deref for EvalSummaryWithSkips {
    type Target = EvalSummary;
    fn deref(&self) -> &EvalSummary {
        &self.summary
    }
}

/// Query with the click (left), satellite with true (green) and predicted (yellow)
/// boxes (middle), heatmap (right, upscaled).
fn example_picture(s: &Sample, pred: [f64; 4], heatmap: &tch::Tensor) -> RgbImage {
    let sat = image::imageops::resize(&s.sat, 512, 512, image::imageops::FilterType::Triangle);
    let f = 512.0 / s.sat.width() as f64;
    let mut pic = crate::predict::compose(&s.query, s.click, &sat);
    let ox = (s.query.width() + 8) as i64;
    let sc = |b: [f64; 4]| [(b[0] * f) as i64 + ox, (b[1] * f) as i64, (b[2] * f) as i64 + ox, (b[3] * f) as i64];
    crate::predict::draw_rect(&mut pic, sc(s.bbox), Rgb([40, 220, 40]), 2);
    crate::predict::draw_rect(&mut pic, sc(pred), Rgb([255, 220, 0]), 2);
    let hm = heatmap.sigmoid().squeeze_dim(0).to_device(Device::Cpu);
    let (hh, hw) = (hm.size()[0], hm.size()[1]);
    let vals: Vec<f32> = Vec::try_from(hm.flatten(0, -1)).unwrap_or_default();
    let mx = vals.iter().cloned().fold(1e-6f32, f32::max);
    let heat = RgbImage::from_fn(hw as u32, hh as u32, |x, y| {
        let v = (vals.get((y as i64 * hw + x as i64) as usize).copied().unwrap_or(0.0) / mx * 255.0) as u8;
        Rgb([v, v / 2, 255 - v])
    });
    let heat = image::imageops::resize(&heat, 256, 256, image::imageops::FilterType::Nearest);
    let mut full = RgbImage::from_pixel(pic.width() + 8 + 256, pic.height().max(256), Rgb([24, 24, 24]));
    image::imageops::overlay(&mut full, &pic, 0, 0);
    image::imageops::overlay(&mut full, &heat, (pic.width() + 8) as i64, 0);
    full
}

/// Write `metrics.json`, `predictions.json`, `report.md`, charts and examples to `dir`.
pub fn write_report(dir: &Path, title: &str, s: &EvalSummaryWithSkips, preds: &[Prediction]) -> Result<PathBuf> {
    let io = |e: std::io::Error| OfflineError::Io { path: dir.into(), source: e };
    std::fs::create_dir_all(dir.join("examples")).map_err(io)?;
    let js = |r: serde_json::Result<String>| r.map_err(|e| OfflineError::Config(e.to_string()));
    std::fs::write(dir.join("metrics.json"), js(serde_json::to_string_pretty(s))?).map_err(io)?;
    std::fs::write(dir.join("predictions.json"), js(serde_json::to_string_pretty(preds))?).map_err(io)?;
    let o = &s.summary.overall;
    let mut md = format!("# {title}\n\n{} samples evaluated, {} skipped.\n\n", o.count, s.skipped.len());
    md += "| group | n | acc@0.25 | acc@0.5 | mIoU | release cell-local acc@0.5 | same cell |\n|---|---|---|---|---|---|---|\n";
    let row = |name: &str, g: &super::metrics::GroupSummary| {
        let rel = g.release_cell_local_iou.map(|r| format!("{:.2}", 100.0 * r.acc_at_0_5)).unwrap_or("–".into());
        format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {rel} | {:.2} |\n",
            g.count,
            100.0 * g.pixel_iou.acc_at_0_25,
            100.0 * g.pixel_iou.acc_at_0_5,
            100.0 * g.pixel_iou.miou,
            100.0 * g.accu_c
        )
    };
    md += &row("**all**", o);
    for (k, g) in &s.summary.by_category {
        md += &row(k, g);
    }
    for (k, g) in &s.summary.by_size {
        md += &row(&format!("size: {k}"), g);
    }
    for (view, buckets) in &s.summary.by_view {
        for (k, g) in buckets {
            md += &row(&format!("{view}: {k}"), g);
        }
    }
    if let Some(p) = &s.prompt_split {
        md += &format!(
            "\nPrompt split: {:.1} % of {} prompt pairs on a shared chip with targets in different cells were \
             answered in different cells (0 = the model ignores the prompt).\n",
            100.0 * p.split,
            p.pairs
        );
    }
    if !s.summary.by_view.is_empty() {
        md += "\nView rows (synthetic data): chip_over_query is the target's size in the satellite \
               chip over its size in the drone query (both in the written images' pixels); pitch \
               is the camera's angle below the horizon; heading the quadrant the camera faces; \
               same_category_in_chip the other objects of the target's category in the chip.\n";
    }
    md += "\nPixel IoU (DetGeo's definition) is the metric to compare; the release cell-local \
           metric ignores where the box is (SMGEO_SPEC §8.1) and is shown only for comparison \
           with the release's published numbers. Percentages.\n\n";
    let cats: Vec<(String, f64)> =
        s.summary.by_category.iter().map(|(k, g)| (k.clone(), g.pixel_iou.acc_at_0_5)).collect();
    let sizes: Vec<(String, f64)> =
        s.summary.by_size.iter().map(|(k, g)| (k.to_string(), g.pixel_iou.acc_at_0_5)).collect();
    for (file, label, data) in
        [("by_category.png", "acc@0.5 by category", &cats), ("by_size.png", "acc@0.5 by box size", &sizes)]
    {
        plot::bar_chart(label, data).save(dir.join(file)).map_err(|e| OfflineError::Config(e.to_string()))?;
        md += &format!("![{label}]({file})\n\n");
    }
    md +=
        "## Examples\n\nQuery with the click; satellite with the true (green) and predicted (yellow) box; heatmap.\n\n";
    for p in preds.iter().filter(|p| p.picture.is_some()) {
        let f = format!("examples/{}.png", p.id);
        if let Some(pic) = &p.picture {
            pic.save(dir.join(&f)).map_err(|e| OfflineError::Config(e.to_string()))?;
        }
        md += &format!(
            "- id {} ({}), IoU {:.2}, score {:.2}\n\n  ![{}]({f})\n\n",
            p.id, p.category, p.pixel_iou, p.score, p.id
        );
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(io)?;
    Ok(path)
}

/// The trivial baseline: a box of the training split's mean size at the image centre.
pub fn centre_baseline(train: &Dataset, test: &Dataset, limit: usize) -> EvalSummaryWithSkips {
    let n = train.records.len().max(1) as f64;
    let mw = train.records.iter().map(|r| r.bbox[2] - r.bbox[0]).sum::<f64>() / n;
    let mh = train.records.iter().map(|r| r.bbox[3] - r.bbox[1]).sum::<f64>() / n;
    let (h, w) = (test.geometry.sat_hw.0 as f64, test.geometry.sat_hw.1 as f64);
    let pred = [(w - mw) / 2.0, (h - mh) / 2.0, (w + mw) / 2.0, (h + mh) / 2.0];
    let mut acc = EvalAccumulator::new((h, w));
    let take = if limit > 0 { limit.min(test.records.len()) } else { test.records.len() };
    let tags = view_tags_or_warn(test);
    for r in &test.records[..take] {
        let cell = |x: f64, y: f64| ((y / 32.0) as usize, (x / 32.0) as usize);
        acc.push(&EvalSample {
            pred_box: pred,
            gt_box: r.bbox,
            category: &r.category,
            pred_cell: cell(w / 2.0, h / 2.0),
            gt_cell: cell((r.bbox[0] + r.bbox[2]) / 2.0, (r.bbox[1] + r.bbox[3]) / 2.0),
            cell_local_iou: None,
            tags: tags.get(&r.id).map_or(&[], |t| t.as_slice()),
        });
    }
    EvalSummaryWithSkips { summary: acc.summary(), skipped: vec![], prompt_split: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_split_counts_pairs_with_different_targets() {
        let (a, b, c) = ((0, 0), (1, 2), (3, 3));
        // (predicted, true). Chip 1: targets in cells a, b, c answered a, a, c: pair (0,1)
        // got one answer, (0,2) and (1,2) two — 2 of 3. Chip 2: both targets in cell b, so
        // no pair counts. Chip 3: a single prompt.
        let chips = vec![vec![(a, a), (a, b), (c, c)], vec![(a, b), (c, b)], vec![(b, b)]];
        let p = prompt_split(&chips).unwrap();
        assert_eq!(p.pairs, 3);
        assert!((p.split - 2.0 / 3.0).abs() < 1e-12);
        // Query-blind: one answer per chip → 0.
        let blind = vec![vec![(a, a), (a, b), (a, c)]];
        assert_eq!(prompt_split(&blind).unwrap(), PromptSplit { pairs: 3, split: 0.0 });
        assert_eq!(prompt_split(&[vec![(a, a)], vec![]]), None);
    }
}
