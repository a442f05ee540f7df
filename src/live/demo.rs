//! `smgeo demo`: the zero-setup main job. Every step is real and cached under
//! `.cache/demo` (a step reruns only when its output is missing):
//!
//! 1. a synthetic scene: a georeferenced COG mosaic (UTM) of a procedural world;
//! 2. a drone flight over it: H.264 + MISB ST 0601 KLV in MPEG-TS, prompts, WGS84 truth;
//! 3. a small model trained with the offline trainer on synthetic CVOGL samples of that
//!    scene (or `--checkpoint`);
//! 4. an MQTT broker: in-process (`rumqttd`) unless `--broker HOST:PORT`;
//! 5. the live pipeline (`smgeo run`'s code) on a loopback UDP stream of the flight;
//!    prompts go out over MQTT as the flight plays; each published target is printed
//!    with its error against the truth; a picture of the results on the mosaic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::config::{LiveConfig, ModelSection, MqttSection, StreamSection};
use super::engine::{ground_distance_m, TrackConfig};
use super::localiser::LocaliserConfig;
use super::replay::{geo_errors, read_jsonl, read_prompts, Truth};
use crate::georef::{ChipGrid, ChipRequest, CoveragePolicy, LonLat, MosaicSpec, Resampling};
use crate::ingest::SourceKind;
use crate::publish::Target;
use crate::synth::cvogl::SampleConfig;
use crate::synth::scene::{build_scene, SceneConfig, SceneInfo};
use crate::synth::video::{build_flight, FlightSpec};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Demo settings (scene, flight, training data, localiser).
    #[arg(long, default_value = "config/demo.toml")]
    pub config: PathBuf,
    /// Cache folder for the scene, flight, data and model.
    #[arg(long, default_value = ".cache/demo")]
    pub cache: PathBuf,
    /// Use this MQTT broker (`HOST:PORT`) instead of the in-process one.
    #[arg(long)]
    pub broker: Option<String>,
    /// Use this checkpoint folder (weights.safetensors + model.json) instead of training.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Training budget in minutes (overrides the training config).
    #[arg(long)]
    pub train_minutes: Option<f64>,
    /// Train again even when a cached model exists.
    #[arg(long)]
    pub retrain: bool,
}

/// `config/demo.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub scene: SceneConfig,
    pub flight: FlightSpec,
    pub data: DemoData,
    /// Training configuration file (relative to this file).
    pub train_config: PathBuf,
    pub localiser: LocaliserConfig,
    #[serde(default)]
    pub track: TrackConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoData {
    pub n_train: usize,
    pub n_val: usize,
    pub seed: u64,
    pub sample: SampleConfig,
}

impl DemoConfig {
    pub fn from_file(p: &Path) -> anyhow::Result<Self> {
        let t = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
        let mut c: DemoConfig = toml::from_str(&t).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        if c.train_config.is_relative() {
            c.train_config = p.parent().unwrap_or(Path::new(".")).join(&c.train_config);
        }
        c.scene.validate()?;
        c.flight.validate()?;
        c.data.sample.validate()?;
        c.localiser.validate()?;
        Ok(c)
    }
}

fn step(n: usize, what: &str) {
    eprintln!("\x1b[1m[demo {n}/5]\x1b[0m {what}");
}

/// Build (or reuse) the model checkpoint; returns its folder.
fn model_checkpoint(a: &DemoArgs, c: &DemoConfig, scene_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = &a.checkpoint {
        return Ok(p.clone());
    }
    let runs = a.cache.join("model");
    let best = runs.join("best");
    if best.join("weights.safetensors").exists() && !a.retrain {
        eprintln!("  cached model {}", best.display());
        return Ok(best);
    }
    let data = a.cache.join("cvogl");
    if !data.join("manifest.json").exists() {
        let sample_cfg = a.cache.join("sample_config.toml");
        std::fs::write(&sample_cfg, toml::to_string(&c.data.sample)?)?;
        let t = Instant::now();
        let args = crate::synth::cli::CvoglArgs {
            out: data.clone(),
            n_train: c.data.n_train,
            n_val: c.data.n_val,
            n_test: 0,
            seed: c.data.seed,
            dataset: "CVOGL_DroneAerial".into(),
            world_km: 2.0,
            threads: None,
            jpeg_quality: 92,
            scene: Some(scene_dir.to_path_buf()),
            sample_config: Some(sample_cfg),
            queries_per_chip: None,
        };
        crate::synth::cli::run_cvogl(&args)?;
        eprintln!("  {} training samples of the scene in {:.0} s", c.data.n_train, t.elapsed().as_secs_f64());
    }
    let mut config = crate::offline::train::TrainConfig::from_file(&c.train_config)?;
    if let Some(m) = a.train_minutes {
        config.max_minutes = m;
    }
    // `precision = "auto"`: bf16 mixed precision on CUDA and on a CPU with AVX512-BF16,
    // where it fits 1.4× the steps into the demo's wall-time budget; float32 elsewhere.
    if config.precision.train_kind(tch::Device::cuda_if_available()) == tch::Kind::BFloat16 {
        eprintln!("  training in bf16 mixed precision ({:?})", config.precision);
    }
    eprintln!("  training (budget {:.1} min; progress below)", config.max_minutes);
    let s = crate::offline::train::train(&crate::offline::train::TrainArgs {
        config,
        data,
        dataset: "CVOGL_DroneAerial".into(),
        out: runs,
        resume: false,
        progress: true,
    })?;
    eprintln!(
        "  trained {} steps in {:.1} min; best val acc@0.5 {:.1} % (epoch {:?})",
        s.steps,
        s.train_minutes,
        100.0 * s.best_val_acc50,
        s.best_epoch
    );
    Ok(best)
}

/// Write `live` (paths relative to the working directory, as the demo uses it) for
/// `smgeo run --config FILE` / `replay`, which resolve relative paths against the file's
/// folder: the paths are written absolute.
fn write_live_config(live: &LiveConfig, path: &Path) -> anyhow::Result<()> {
    let mut on_disk = live.clone();
    on_disk.rebase(&std::env::current_dir()?);
    std::fs::write(path, toml::to_string(&on_disk)?).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Results drawn on the mosaic: truth footprints green, result footprints yellow, a
/// line from each result to its truth.
fn draw_results(mosaic: &Path, targets: &[(String, Target)], truth: &[Truth], out: &Path) -> anyhow::Result<()> {
    let reader = MosaicSpec::from_path(mosaic).open()?;
    let b = reader.bounds_wgs84()?;
    let centre = LonLat { lon: (b[0] + b[2]) / 2.0, lat: (b[1] + b[3]) / 2.0 };
    let (w, _) = reader.size();
    let gt0 = reader.geotransform().0;
    let side = 1024usize;
    let gsd = w as f64 * gt0[1].abs() / side as f64;
    let req = ChipRequest {
        center: centre,
        gsd_m: Some(gsd),
        width: side,
        height: side,
        grid: ChipGrid::Mosaic,
        coverage: CoveragePolicy::Fill { value: 0, min_coverage: 0.0 },
        resampling: Resampling::Average,
    };
    let chip = reader.chip(&req)?;
    let mut img = RgbImage::from_raw(chip.width as u32, chip.height as u32, chip.pixels.clone())
        .ok_or_else(|| anyhow::anyhow!("chip buffer size"))?;
    let ct = crate::georef::CrsTransform::new(&chip.crs)?;
    let g = chip.geotransform.0;
    let px = |p: [f64; 2]| -> anyhow::Result<(f64, f64)> {
        let xy = ct.from_lonlat(&[LonLat { lon: p[0], lat: p[1] }])?[0];
        Ok(((xy.0 - g[0]) / g[1], (xy.1 - g[3]) / g[5]))
    };
    let line = |img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>| {
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for k in 0..=n {
            let t = k as f64 / n as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
                let (xi, yi) = (x as i64 + dx, y as i64 + dy);
                if xi >= 0 && yi >= 0 && (xi as u32) < img.width() && (yi as u32) < img.height() {
                    img.put_pixel(xi as u32, yi as u32, c);
                }
            }
        }
    };
    for t in truth {
        let pts: Vec<(f64, f64)> = t.polygon.iter().map(|p| px(*p)).collect::<anyhow::Result<_>>()?;
        for w in pts.windows(2) {
            line(&mut img, w[0], w[1], Rgb([40, 230, 60]));
        }
    }
    for (id, tg) in targets {
        let ring: Vec<(f64, f64)> =
            tg.properties.footprint.iter().map(|p| px([p.lon, p.lat])).collect::<anyhow::Result<_>>()?;
        for w in ring.windows(2) {
            line(&mut img, w[0], w[1], Rgb([255, 220, 0]));
        }
        if let Some(t) = truth.iter().find(|t| &t.prompt_id == id) {
            let c = tg.geometry.coordinates;
            line(&mut img, px([c.lon, c.lat])?, px([t.lon, t.lat])?, Rgb([255, 60, 60]));
        }
    }
    img.save(out).map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))
}

/// Run the demo; returns its report (also written to `<cache>/report.json`).
pub fn run(a: &DemoArgs) -> anyhow::Result<serde_json::Value> {
    let c = DemoConfig::from_file(&a.config)?;
    std::fs::create_dir_all(&a.cache)?;
    let t_all = Instant::now();

    step(1, "synthetic scene (georeferenced COG mosaic)");
    let scene_dir = a.cache.join("scene");
    if !scene_dir.join("scene.json").exists() {
        let info = build_scene(&c.scene, &scene_dir)?;
        eprintln!("  {} objects, {}×{} px mosaic", info.object_count, info.size_px.0, info.size_px.1);
    } else {
        eprintln!("  cached {}", scene_dir.display());
    }
    let scene = SceneInfo::load(&scene_dir)?;

    step(2, "drone flight (H.264 + MISB ST 0601 KLV in MPEG-TS, prompts, truth)");
    let flight_dir = a.cache.join("flight");
    if !flight_dir.join("flight.json").exists() {
        let s = build_flight(&scene_dir, &c.flight, &flight_dir, None)?;
        eprintln!("  {} frames, {} prompts in {:.0} s", s.frames, s.prompts, s.total_s);
    } else {
        eprintln!("  cached {}", flight_dir.display());
    }

    step(3, "model");
    let checkpoint = model_checkpoint(a, &c, &scene_dir)?;

    step(4, "MQTT broker");
    let (host, port) = match &a.broker {
        Some(b) => {
            let (h, p) = b.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("--broker wants HOST:PORT, got {b:?}"))?;
            (h.to_string(), p.parse::<u16>().map_err(|e| anyhow::anyhow!("--broker port: {e}"))?)
        }
        None => {
            let b = crate::publish::broker::start(0)?;
            eprintln!("  in-process broker on {}", b.addr);
            ("127.0.0.1".to_string(), b.addr.port())
        }
    };

    step(5, "live pipeline on a loopback UDP stream of the flight");
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let stream_id = "demo".to_string();
    let live = LiveConfig {
        device: "auto".into(),
        threads: None,
        model: ModelSection { checkpoint: Some(checkpoint.clone()), ..Default::default() },
        mosaic: scene.mosaic_path(),
        localiser: c.localiser.clone(),
        track: c.track.clone(),
        mqtt: MqttSection { host: host.clone(), port, spool_dir: Some(a.cache.join("spool")), ..Default::default() },
        streams: vec![StreamSection {
            id: stream_id.clone(),
            source: SourceKind::UdpTs { address: "127.0.0.1".into(), port: udp_port, multicast_iface: None },
            codec: Default::default(),
            ring_frames: 60,
            frame_tolerance_ms: 500,
            fallback_centre: None,
            stall_timeout_ms: 3000,
        }],
    };
    write_live_config(&live, &a.cache.join("live.toml"))?;
    let prompts = read_prompts(&flight_dir.join("prompts.jsonl"))?;
    let truth: Vec<Truth> = read_jsonl(&flight_dir.join("truth.jsonl"))?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut opts = rumqttc::MqttOptions::new(format!("smgeo-demo-{}", std::process::id()), &host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
    let (tx, rx) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
    let topics = crate::publish::Topics::for_stream(&stream_id)?;
    {
        let client = client.clone();
        let subs = [topics.targets(), topics.status()];
        rt.spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                        for s in &subs {
                            let _ = client.subscribe(s, rumqttc::QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (live, stop) = (live.clone(), stop.clone());
        std::thread::spawn(move || super::run::run_with_stop(&live, None, stop))
    };
    // Wait until the pipeline is up (its retained status arrives), then start the feed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((t, _)) if t == topics.status() => break,
            _ if Instant::now() > deadline => anyhow::bail!("the pipeline did not come up within 120 s"),
            _ if runner.is_finished() => anyhow::bail!("the pipeline stopped during start-up (see the log)"),
            _ => {}
        }
    }
    let ctl = Arc::new(crate::ingest::StreamControl::default());
    let feeder = {
        let (ts, ctl) = (flight_dir.join("flight.ts"), ctl.clone());
        std::thread::spawn(move || crate::ingest::stream_file_udp(&ts, "127.0.0.1", udp_port, Some(&ctl)))
    };
    let t_stream = Instant::now();
    eprintln!(
        "  streaming {} to udp://127.0.0.1:{udp_port}; {} prompts follow the flight",
        flight_dir.display(),
        prompts.len()
    );
    // Prompts go out when their frame is on air; they name no pts (the pipeline takes the
    // newest frame), as an operator's click on the live picture does.
    let mut sent = 0usize;
    let mut results: Vec<(String, Target)> = Vec::new();
    let mut errors: Vec<serde_json::Value> = Vec::new();
    let mut answered = std::collections::HashSet::new();
    let end =
        Duration::from_nanos(prompts.iter().filter_map(|p| p.pts_ns).max().unwrap_or(0)) + Duration::from_secs(120);
    while answered.len() < prompts.len() && t_stream.elapsed() < end {
        while let Some(p) = prompts.get(sent) {
            let due = Duration::from_nanos(p.pts_ns.unwrap_or(0));
            if t_stream.elapsed() < due {
                break;
            }
            let mut q = p.clone();
            q.pts_ns = None;
            let body = serde_json::to_vec(&q)?;
            rt.block_on(client.publish(topics.prompts(), rumqttc::QoS::AtLeastOnce, false, body))?;
            eprintln!("  → prompt {} click ({:.0}, {:.0}) at t = {:.1} s", p.id, p.x, p.y, due.as_secs_f64());
            sent += 1;
        }
        let Ok((topic, payload)) = rx.recv_timeout(Duration::from_millis(50)) else { continue };
        let v: serde_json::Value = match serde_json::from_slice(&payload) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if topic == topics.targets() {
            let t: Target = serde_json::from_value(v)?;
            let id = t.properties.prompt_id.clone();
            let c0 = t.geometry.coordinates;
            let err =
                truth.iter().find(|x| x.prompt_id == id).map(|x| ground_distance_m((x.lon, x.lat), (c0.lon, c0.lat)));
            eprintln!(
                "  ← target {id}: ({:.6}, {:.6}) score {:.2} latency {:.0} ms, error vs truth {}",
                c0.lon,
                c0.lat,
                t.properties.score,
                t.properties.latency_ms,
                err.map(|e| format!("{e:.1} m")).unwrap_or("–".into())
            );
            println!("{}", serde_json::to_string(&t)?);
            if answered.insert(id.clone()) {
                results.push((id, t));
            }
        } else if v["schema"] == "smgeo.error.v1" {
            eprintln!("  ! error for {}: {}", v["prompt_id"], v["reason"]);
            if let Some(id) = v["prompt_id"].as_str() {
                answered.insert(id.to_string());
            }
            errors.push(v);
        }
    }
    stop.store(true, Ordering::SeqCst);
    ctl.stop();
    let reports = runner.join().map_err(|_| anyhow::anyhow!("pipeline thread panicked"))??;
    let _ = feeder.join();
    let (geo, rows) = geo_errors(&results, &truth);
    let picture = a.cache.join("demo_result.png");
    if let Err(e) = draw_results(&scene.mosaic_path(), &results, &truth, &picture) {
        tracing::warn!(error = %format!("{e:#}"), "could not draw the result picture");
    }
    let report = serde_json::json!({
        "prompts": prompts.len(),
        "targets": results.len(),
        "errors": errors,
        "geo_error": geo,
        "per_prompt": rows,
        "pipeline": reports,
        "checkpoint": checkpoint,
        "picture": picture,
        "wall_s": t_all.elapsed().as_secs_f64(),
    });
    std::fs::write(a.cache.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    eprintln!(
        "  done: {}/{} prompts answered; median error {} (p90 {}), hit rate {}; picture {}",
        results.len(),
        prompts.len(),
        geo.median_m.map(|e| format!("{e:.1} m")).unwrap_or("–".into()),
        geo.p90_m.map(|e| format!("{e:.1} m")).unwrap_or("–".into()),
        geo.hit_rate.map(|h| format!("{:.0} %", 100.0 * h)).unwrap_or("–".into()),
        picture.display()
    );
    if let Some(t) = &geo.telemetry_click {
        eprintln!(
            "  telemetry alone (the click through the KLV frame corners): median {:.1} m (p90 {:.1} m) over {} prompts",
            t.median_m, t.p90_m, t.n
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shipped_demo_config_is_valid() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
        let c = super::DemoConfig::from_file(&p).unwrap();
        assert!(c.train_config.exists(), "{}", c.train_config.display());
        crate::offline::train::TrainConfig::from_file(&c.train_config).unwrap();
        assert_eq!(c.flight.camera.width, 960);
    }

    #[test]
    fn written_live_config_resolves_to_the_same_files_from_its_own_folder() {
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/live.toml");
        let mut live = crate::live::config::LiveConfig::from_file(&shipped).unwrap();
        live.mosaic = "some/scene/mosaic.tif".into();
        live.model.checkpoint = Some("some/model/best".into());
        live.mqtt.spool_dir = Some("some/spool".into());
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("live.toml");
        super::write_live_config(&live, &path).unwrap();
        let back = crate::live::config::LiveConfig::from_file(&path).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(back.mosaic, cwd.join("some/scene/mosaic.tif"));
        assert_eq!(back.model.checkpoint, Some(cwd.join("some/model/best")));
        assert_eq!(back.mqtt.spool_dir, Some(cwd.join("some/spool")));
        assert_eq!(back.localiser, live.localiser);
    }
}
