//! `smgeo synth cvogl`: a synthetic benchmark written in CVOGL's exact format —
//! `<out>/<dataset>/{query,satellite}/*.jpg` and `<dataset>_{train,val,test}.pth`
//! (zip form, as `torch.save` writes) — plus `manifest.json` (seeds, sample config,
//! per-category counts). Each split is drawn from its own world (seed-derived), so the
//! test split is an unseen area.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{make_group, SampleConfig, SynthSample, World};
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
    /// Draw every split from this scene's world (`smgeo synth scene` folder) instead of
    /// per-split worlds: training data for a model meant for that area (the demo).
    #[arg(long)]
    pub scene: Option<PathBuf>,
    /// Sampling ranges (TOML, the fields of `SampleConfig`: altitude_m, pitch_deg,
    /// hfov_deg, gsd_m, ...); sizes follow the dataset.
    #[arg(long)]
    pub sample_config: Option<PathBuf>,
    /// Prompts per satellite chip (overrides the sample config's `queries_per_chip`):
    /// records of one chip share its satellite image, on different objects.
    #[arg(long)]
    pub queries_per_chip: Option<usize>,
}

impl CvoglArgs {
    /// A small dataset for tests and quick checks: `n_train` training records and one
    /// validation record of 1-km worlds, default sampling, 2 threads.
    pub fn small(out: &std::path::Path, n_train: usize, seed: u64, queries_per_chip: Option<usize>) -> Self {
        CvoglArgs {
            out: out.to_path_buf(),
            n_train,
            n_val: 1,
            n_test: 0,
            seed,
            dataset: "CVOGL_DroneAerial".into(),
            world_km: 1.0,
            threads: Some(2),
            jpeg_quality: 90,
            scene: None,
            sample_config: None,
            queries_per_chip,
        }
    }
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

/// Render chips `0..n` (per-index RNG streams; each chip with its
/// `cfg.queries_per_chip` prompts, [`make_group`]) on `threads` threads and hand each to
/// `f` on the thread that rendered it: only the chips in flight are held in memory, so a
/// split of any size can be written (the images go to disk inside `f`).
pub fn map_groups<R: Send>(
    world: &World,
    seed: u64,
    n: usize,
    cfg: &SampleConfig,
    threads: usize,
    f: impl Fn(usize, super::Result<Vec<SynthSample>>) -> R + Sync,
) -> Vec<R> {
    let threads = threads.max(1).min(n.max(1));
    let per = n.div_ceil(threads).max(1);
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let f = &f;
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (k, slot) in chunk.iter_mut().enumerate() {
                    let idx = t * per + k;
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(idx as u64);
                    *slot = Some(f(idx, make_group(world, &mut rng, cfg)));
                }
            });
        }
    });
    out.into_iter().map(|o| o.expect("every slot rendered")).collect()
}

pub(crate) fn save_jpeg(img: &image::RgbImage, path: &Path, q: u8) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(f), q);
    enc.encode_image(img).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// The world of a scene folder (needs the `geo` feature for the scene's CRS).
pub(crate) fn scene_world(dir: &Path) -> anyhow::Result<World> {
    #[cfg(feature = "geo")]
    {
        Ok(super::scene::SceneInfo::load(dir)?.world())
    }
    #[cfg(not(feature = "geo"))]
    {
        anyhow::bail!("--scene {} needs a build with the geo feature", dir.display())
    }
}

/// File name of a split's view records ([`super::cvogl::ViewRecord`], one JSON object
/// per line), in the dataset folder beside the split's `.pth`.
pub fn views_file_name(dataset: &str, split: &str) -> String {
    format!("{dataset}_{split}_views.jsonl")
}

pub fn run_cvogl(a: &CvoglArgs) -> anyhow::Result<serde_json::Value> {
    let cfg = match &a.sample_config {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            toml::from_str::<SampleConfig>(&t).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => SampleConfig::default(),
    };
    let geometry = crate::offline::cvogl::DatasetGeometry::for_dataset(&a.dataset)
        .ok_or_else(|| anyhow::anyhow!("unknown dataset {:?} (CVOGL_DroneAerial or CVOGL_SVI)", a.dataset))?;
    let cfg = SampleConfig {
        query_size: (geometry.query_hw.1, geometry.query_hw.0),
        chip_px: geometry.sat_hw.0,
        queries_per_chip: a.queries_per_chip.unwrap_or(cfg.queries_per_chip),
        ..cfg
    };
    cfg.validate()?;
    let dir = a.out.join(&a.dataset);
    for sub in ["query", "satellite"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let extent = (a.world_km * 1000.0, a.world_km * 1000.0);
    let mut manifest = serde_json::json!({"dataset": a.dataset, "seed": a.seed, "sample_config": cfg, "splits": {},
        "world_km": a.world_km, "jpeg_quality": a.jpeg_quality});
    let mut next_id = 0i64;
    let fixed = a.scene.as_deref().map(scene_world).transpose()?;
    if let Some(w) = &fixed {
        manifest["scene"] = serde_json::json!({"dir": a.scene, "world_seed": w.seed});
    }
    for (split, n) in [("train", a.n_train), ("val", a.n_val), ("test", a.n_test)] {
        let wseed = split_world_seed(a.seed, split);
        let generated;
        let world = match &fixed {
            Some(w) => w,
            None => {
                generated = World::generate(wseed, extent);
                &generated
            }
        };
        let sample_seed = a.seed ^ wseed;
        // Each worker writes its chips' JPEGs; only the records come back. Chip g holds
        // records first_id + g·k .. (k prompts, the last chip fewer when k does not
        // divide n), which share its satellite file.
        let first_id = next_id;
        let k_per = cfg.queries_per_chip;
        let n_chips = n.div_ceil(k_per);
        let written = map_groups(world, sample_seed, n_chips, &cfg, threads, |g, grp| -> anyhow::Result<_> {
            let grp = grp.map_err(|e| anyhow::anyhow!("{split} split, chip {g}: {e}"))?;
            let base = first_id + (g * k_per) as i64;
            let sf = format!("{base:06}_s.jpg");
            let take = k_per.min(n - g * k_per);
            let mut recs = Vec::with_capacity(take);
            for (j, s) in grp.into_iter().take(take).enumerate() {
                let id = base + j as i64;
                if j == 0 {
                    save_jpeg(&s.sat, &dir.join("satellite").join(&sf), a.jpeg_quality)?;
                }
                let qf = format!("{id:06}_q.jpg");
                save_jpeg(&s.query, &dir.join("query").join(&qf), a.jpeg_quality)?;
                let view = s.view_record(id);
                let rec = CvoglRecord {
                    id,
                    query_file: qf,
                    sat_file: sf.clone(),
                    field3: (2.0 * s.click.0, 2.0 * s.click.1),
                    click: s.click,
                    bbox: s.bbox,
                    polygon: s.polygon,
                    category: s.category,
                };
                recs.push((rec, view));
            }
            Ok(recs)
        });
        next_id += n as i64;
        let mut recs = Vec::with_capacity(n);
        let mut cats: std::collections::BTreeMap<String, usize> = Default::default();
        let mut same = 0usize;
        let mut views = String::new();
        for w in written {
            for (rec, view) in w? {
                *cats.entry(rec.category.clone()).or_default() += 1;
                same += usize::from(view.same_category_in_chip >= 1);
                views += &serde_json::to_string(&view)?;
                views.push('\n');
                recs.push(rec);
            }
        }
        let path = write_split(&a.out, &a.dataset, split, &recs)?;
        let views_path = dir.join(views_file_name(&a.dataset, split));
        std::fs::write(&views_path, views).map_err(|e| anyhow::anyhow!("writing {}: {e}", views_path.display()))?;
        manifest["splits"][split] = serde_json::json!({
            "n": recs.len(), "chips": n_chips, "world_seed": wseed, "sample_seed": sample_seed, "file": path, "categories": cats,
            "with_same_category_distractor": same, "views": views_path,
        });
        tracing::info!(split, n = recs.len(), "written");
    }
    let m = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(a.out.join("manifest.json"), m)?;
    Ok(manifest)
}

/// Mosaic compression on the command line.
#[cfg(feature = "geo")]
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressArg {
    Jpeg,
    Deflate,
}

/// `smgeo synth scene`: a georeferenced COG mosaic of a synthetic world + `scene.json`.
#[cfg(feature = "geo")]
#[derive(clap::Args, Debug, Clone)]
pub struct SceneArgs {
    /// Output folder (created): `mosaic.tif`, `scene.json`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Side of the square world in metres.
    #[arg(long, default_value_t = 1500.0)]
    pub extent_m: f64,
    /// Mosaic metres per pixel.
    #[arg(long, default_value_t = 0.5)]
    pub gsd: f64,
    /// Projected CRS in metres (EPSG code).
    #[arg(long, default_value_t = 32633)]
    pub epsg: u32,
    /// CRS easting / northing of the world's south-west corner.
    #[arg(long, default_value_t = 500_000.0)]
    pub origin_e: f64,
    #[arg(long, default_value_t = 5_300_000.0)]
    pub origin_n: f64,
    /// Ground height above mean sea level (m), written into the KLV of flights.
    #[arg(long, default_value_t = 0.0)]
    pub ground_msl_m: f64,
    #[arg(long, value_enum, default_value_t = CompressArg::Jpeg)]
    pub compress: CompressArg,
    #[arg(long, default_value_t = 90)]
    pub jpeg_quality: u8,
}

#[cfg(feature = "geo")]
pub fn run_scene(a: &SceneArgs) -> anyhow::Result<serde_json::Value> {
    use super::scene::{build_scene, SceneConfig};
    use crate::georef::Compression;
    let cfg = SceneConfig {
        seed: a.seed,
        extent_m: (a.extent_m, a.extent_m),
        gsd_m: a.gsd,
        epsg: a.epsg,
        origin_e: a.origin_e,
        origin_n: a.origin_n,
        ground_msl_m: a.ground_msl_m,
        compression: match a.compress {
            CompressArg::Jpeg => Compression::Jpeg { quality: a.jpeg_quality },
            CompressArg::Deflate => Compression::Deflate,
        },
    };
    let info = build_scene(&cfg, &a.out)?;
    Ok(serde_json::json!({
        "out": a.out,
        "mosaic": info.mosaic_path(),
        "size_px": info.size_px,
        "geotransform": info.geotransform,
        "epsg": info.config.epsg,
        "bounds_wgs84": info.bounds_wgs84,
        "objects": info.object_count,
        "categories": info.categories,
        "render_ms": info.render_ms,
        "write_ms": info.write_ms,
    }))
}

/// `smgeo synth flight`: a rendered drone flight (H.264 + ST 0601 KLV in MPEG-TS) over a
/// scene, with prompts and ground truth.
#[cfg(all(feature = "geo", feature = "gst"))]
#[derive(clap::Args, Debug, Clone)]
pub struct FlightArgs {
    /// Scene folder written by `smgeo synth scene`.
    #[arg(long)]
    pub scene: PathBuf,
    /// Output folder (created): flight.ts, flight.json, prompts.jsonl, truth.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = super::video::FlightKind::Straight)]
    pub kind: super::video::FlightKind,
    #[arg(long, default_value_t = 60.0)]
    pub duration_s: f64,
    #[arg(long, default_value_t = 15)]
    pub fps: u32,
    #[arg(long, default_value_t = 960)]
    pub width: u32,
    #[arg(long, default_value_t = 540)]
    pub height: u32,
    /// Number of prompts (clicks on objects) to write.
    #[arg(long, default_value_t = 6)]
    pub prompts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Height above ground (m).
    #[arg(long, default_value_t = 120.0)]
    pub altitude_m: f64,
    /// Camera pitch, degrees below the horizon (90 = nadir).
    #[arg(long, default_value_t = 60.0)]
    pub pitch_deg: f64,
    #[arg(long, default_value_t = 12.0)]
    pub speed_mps: f64,
    #[arg(long, default_value_t = 70.0)]
    pub hfov_deg: f64,
    /// Render threads (default: available cores, at most 4).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Telemetry errors of the KLV, as σ values `POS_M,ALT_M,HEADING_DEG,ATTITUDE_DEG,JITTER_DEG`
    /// (per-flight GNSS, altitude, heading and gimbal pitch/roll biases, per-frame attitude
    /// jitter), e.g. `3,5,2,0.5,0.1` for a small drone; default: exact KLV.
    #[arg(long, value_parser = parse_telemetry_error)]
    pub telemetry_error: Option<super::video::TelemetryError>,
}

#[cfg(all(feature = "geo", feature = "gst"))]
fn parse_telemetry_error(s: &str) -> Result<super::video::TelemetryError, String> {
    let v: Vec<f64> =
        s.split(',').map(|x| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}"))).collect::<Result<_, _>>()?;
    let [p, a, h, t, j] = v[..] else {
        return Err(format!(
            "need 5 comma-separated values POS_M,ALT_M,HEADING_DEG,ATTITUDE_DEG,JITTER_DEG, got {}",
            v.len()
        ));
    };
    Ok(super::video::TelemetryError {
        position_sigma_m: p,
        altitude_sigma_m: a,
        heading_sigma_deg: h,
        attitude_sigma_deg: t,
        jitter_deg: j,
    })
}

#[cfg(all(feature = "geo", feature = "gst"))]
pub fn run_flight(a: &FlightArgs) -> anyhow::Result<serde_json::Value> {
    use super::video::{build_flight, FlightSpec};
    let spec = FlightSpec {
        kind: a.kind,
        duration_s: a.duration_s,
        camera: super::FlightConfig {
            altitude_m: a.altitude_m,
            speed_mps: a.speed_mps,
            fps: a.fps as f64,
            pitch_deg: a.pitch_deg,
            hfov_deg: a.hfov_deg,
            width: a.width,
            height: a.height,
        },
        seed: a.seed,
        n_prompts: a.prompts,
        telemetry_error: a.telemetry_error.unwrap_or_default(),
        ..FlightSpec::default()
    };
    let s = build_flight(&a.scene, &spec, &a.out, a.threads)?;
    Ok(serde_json::to_value(&s)?)
}

/// `smgeo synth stream`: send a written flight over UDP as MPEG-TS (re-rendered).
#[cfg(all(feature = "geo", feature = "gst"))]
#[derive(clap::Args, Debug, Clone)]
pub struct StreamArgs {
    /// Flight folder written by `smgeo synth flight`.
    #[arg(long)]
    pub flight: PathBuf,
    /// Destination (UDP: unicast host or multicast group) or, with --rtsp, the
    /// address the RTSP server listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// UDP destination port, or the RTSP server's port with --rtsp.
    #[arg(long, default_value_t = 5600)]
    pub port: u16,
    /// Outgoing interface for a multicast group given as --host (e.g. eth0, lo).
    #[arg(long)]
    pub multicast_iface: Option<String>,
    /// Serve the flight's recording (flight.ts: H.264 + KLV) over RTSP at
    /// rtsp://HOST:PORT/flight instead of sending UDP; each client plays it from the
    /// start in real time. Runs until --duration-s or Ctrl-C.
    #[arg(long)]
    pub rtsp: bool,
    /// With --rtsp: `mp2t` sends the transport stream itself (RTP payload MP2T: video and
    /// KLV together; receive with source kind `rtsp_ts`), `h264` the video elementary
    /// stream only (source kind `rtsp`; no telemetry).
    #[arg(long, value_enum, default_value = "mp2t")]
    pub rtsp_payload: RtspPayload,
    /// With --rtsp: stop serving after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Send as fast as frames render instead of at the flight's frame rate.
    #[arg(long)]
    pub fast: bool,
    #[arg(long)]
    pub threads: Option<usize>,
}

/// RTP payload of `synth stream --rtsp`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtspPayload {
    Mp2t,
    H264,
}

#[cfg(all(feature = "geo", feature = "gst"))]
pub fn run_stream(a: &StreamArgs) -> anyhow::Result<serde_json::Value> {
    let t0 = std::time::Instant::now();
    if a.rtsp {
        return serve_rtsp(a);
    }
    let iface = a.multicast_iface.as_deref();
    let st = super::video::stream_flight_udp(&a.flight, &a.host, a.port, iface, !a.fast, None, a.threads)?;
    Ok(serde_json::json!({"host": a.host, "port": a.port, "frames": st.frames, "klv_units": st.klv_units,
        "seconds": t0.elapsed().as_secs_f64()}))
}

#[cfg(all(feature = "geo", feature = "gst"))]
fn serve_rtsp(a: &StreamArgs) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let ts = a.flight.join("flight.ts");
    let media = match a.rtsp_payload {
        RtspPayload::Mp2t => crate::ingest::RtspMedia::Mp2tFile { path: ts.clone() },
        RtspPayload::H264 => crate::ingest::RtspMedia::TsFile { path: ts.clone() },
    };
    let server = crate::ingest::RtspServer::start(&a.host, a.port, "/flight", &media)
        .with_context(|| format!("serving {} over RTSP", ts.display()))?;
    eprintln!("serving {} at {} (Ctrl-C to stop)", ts.display(), server.url());
    let t0 = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let limit = a.duration_s.map_or(std::time::Duration::MAX, std::time::Duration::from_secs_f64);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = tokio::time::sleep(limit.min(std::time::Duration::from_secs(1 << 40))) => {}
        }
        anyhow::Ok(())
    })?;
    let url = server.url();
    server.stop();
    let payload = format!("{:?}", a.rtsp_payload).to_lowercase();
    Ok(serde_json::json!({"rtsp": url, "payload": payload, "seconds": t0.elapsed().as_secs_f64()}))
}
