//! `smgeo synth cvogl`: a synthetic benchmark written in CVOGL's exact format —
//! `<out>/<dataset>/{query,satellite}/*.jpg` and `<dataset>_{train,val,test}.pth`
//! (zip form, as `torch.save` writes) — plus `manifest.json` (seeds, sample config,
//! per-category counts). Each split is drawn from its own world (seed-derived), so the
//! test split is an unseen area.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{make_sample, SampleConfig, SynthSample, World};
use crate::offline::cvogl::{write_split, CvoglRecord};

#[derive(clap::Args, Debug, Clone)]
pub struct CvoglArgs {
    /// Output data directory (the dataset goes into `<out>/<dataset>/`).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub n_train: usize,
    #[arg(long, default_value_t = 40)]
    pub n_val: usize,
    #[arg(long, default_value_t = 100)]
    pub n_test: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value = "CVOGL_DroneAerial")]
    pub dataset: String,
    /// Side of each split's world in km.
    #[arg(long, default_value_t = 2.0)]
    pub world_km: f64,
    /// Worker threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// JPEG quality of the written images.
    #[arg(long, default_value_t = 92)]
    pub jpeg_quality: u8,
}

/// World seed of a split: each split its own area.
pub fn split_world_seed(seed: u64, split: &str) -> u64 {
    let k = match split {
        "train" => 1,
        "val" => 2,
        _ => 3,
    };
    seed.wrapping_mul(0x9E37_79B9).wrapping_add(k)
}

/// Render samples `0..n` of a world with per-index RNG streams, on `threads` threads.
pub fn render_samples(
    world: &World,
    seed: u64,
    n: usize,
    cfg: &SampleConfig,
    threads: usize,
) -> Vec<super::Result<SynthSample>> {
    let threads = threads.max(1).min(n.max(1));
    let mut out: Vec<Option<super::Result<SynthSample>>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(n.div_ceil(threads).max(1)).enumerate() {
            let base = t * n.div_ceil(threads).max(1);
            s.spawn(move || {
                for (k, slot) in chunk.iter_mut().enumerate() {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream((base + k) as u64);
                    *slot = Some(make_sample(world, &mut rng, cfg));
                }
            });
        }
    });
    out.into_iter().map(|o| o.expect("every slot rendered")).collect()
}

fn save_jpeg(img: &image::RgbImage, path: &Path, q: u8) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(f), q);
    enc.encode_image(img).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

pub fn run_cvogl(a: &CvoglArgs) -> anyhow::Result<serde_json::Value> {
    let cfg = SampleConfig::default();
    let geometry = crate::offline::cvogl::DatasetGeometry::for_dataset(&a.dataset)
        .ok_or_else(|| anyhow::anyhow!("unknown dataset {:?} (CVOGL_DroneAerial or CVOGL_SVI)", a.dataset))?;
    let cfg =
        SampleConfig { query_size: (geometry.query_hw.1, geometry.query_hw.0), chip_px: geometry.sat_hw.0, ..cfg };
    let dir = a.out.join(&a.dataset);
    for sub in ["query", "satellite"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let extent = (a.world_km * 1000.0, a.world_km * 1000.0);
    let mut manifest = serde_json::json!({"dataset": a.dataset, "seed": a.seed, "sample_config": cfg, "splits": {}});
    let mut next_id = 0i64;
    for (split, n) in [("train", a.n_train), ("val", a.n_val), ("test", a.n_test)] {
        let wseed = split_world_seed(a.seed, split);
        let world = World::generate(wseed, extent);
        let samples = render_samples(&world, a.seed ^ wseed, n, &cfg, threads);
        let mut recs = Vec::with_capacity(n);
        let mut cats: std::collections::BTreeMap<String, usize> = Default::default();
        let mut same = 0usize;
        for s in samples {
            let s = s.map_err(|e| anyhow::anyhow!("{split} split: {e}"))?;
            let id = next_id;
            next_id += 1;
            let (qf, sf) = (format!("{id:06}_q.jpg"), format!("{id:06}_s.jpg"));
            save_jpeg(&s.query, &dir.join("query").join(&qf), a.jpeg_quality)?;
            save_jpeg(&s.sat, &dir.join("satellite").join(&sf), a.jpeg_quality)?;
            *cats.entry(s.category.clone()).or_default() += 1;
            same += usize::from(s.same_category_in_chip >= 1);
            recs.push(CvoglRecord {
                id,
                query_file: qf,
                sat_file: sf,
                field3: (2.0 * s.click.0, 2.0 * s.click.1),
                click: s.click,
                bbox: s.bbox,
                polygon: s.polygon,
                category: s.category.clone(),
            });
        }
        let path = write_split(&a.out, &a.dataset, split, &recs)?;
        manifest["splits"][split] = serde_json::json!({
            "n": recs.len(), "world_seed": wseed, "file": path, "categories": cats,
            "with_same_category_distractor": same,
        });
        tracing::info!(split, n = recs.len(), "written");
    }
    let m = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(a.out.join("manifest.json"), m)?;
    Ok(manifest)
}
