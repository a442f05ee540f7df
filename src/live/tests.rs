//! End-to-end tests of the live path on a synthetic scene and flight: replay from the
//! file, and `run` over a real UDP stream with a real mosquitto broker. The model is a
//! tiny randomly initialised one (what it finds is not the point here; that every prompt
//! is answered once, validly, and that faults are survived is).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{LiveConfig, ModelSection, MqttSection, StreamSection};
use super::engine::TrackConfig;
use super::localiser::{Localiser, LocaliserConfig};
use super::replay::{read_jsonl, ReplayArgs, Truth};
use crate::georef::{pixel_box_to_wgs84, GeoTransform, LonLat, MosaicSpec, PixelBox};
use crate::ingest::SourceKind;
use crate::model::ModelConfig;
use crate::synth::scene::{build_scene, SceneConfig, SceneInfo};
use crate::synth::video::{build_flight, FlightSpec};

/// Scene + flight + tiny checkpoint, built once per test process.
struct Fixture {
    _dir: tempfile::TempDir,
    scene: PathBuf,
    flight: PathBuf,
    checkpoint: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let scene = dir.path().join("scene");
        let cfg = SceneConfig { seed: 11, extent_m: (500.0, 500.0), gsd_m: 1.0, ..SceneConfig::default() };
        build_scene(&cfg, &scene).unwrap();
        let flight = dir.path().join("flight");
        let mut spec = FlightSpec { duration_s: 6.0, n_prompts: 3, seed: 3, ..FlightSpec::default() };
        spec.camera.width = 320;
        spec.camera.height = 180;
        spec.camera.fps = 5.0;
        spec.camera.altitude_m = 90.0;
        spec.camera.speed_mps = 8.0;
        build_flight(&scene, &spec, &flight, Some(2)).unwrap();
        let checkpoint = dir.path().join("ckpt");
        std::fs::create_dir_all(&checkpoint).unwrap();
        let m = tiny_model_config();
        std::fs::write(checkpoint.join("model.json"), serde_json::to_string(&m).unwrap()).unwrap();
        tch::manual_seed(0);
        let (vs, _) = crate::weights_cli::build(&m, tch::Device::Cpu).unwrap();
        crate::model::weights::write_safetensors(
            &crate::model::weights::state_dict(&vs),
            &Default::default(),
            &checkpoint.join("weights.safetensors"),
        )
        .unwrap();
        Fixture { _dir: dir, scene, flight, checkpoint }
    })
}

fn tiny_model_config() -> ModelConfig {
    ModelConfig::from_value(serde_json::json!({
        "preset": "paper", "embed_dim": 8, "num_heads": [2, 2, 4, 4], "head_feat_channels": 8,
        "input_scale": 0.25
    }))
    .unwrap()
}

/// The fixture's tiny model on the scene mosaic: 256 px chips at 1 m, 128 px queries, CPU.
fn tiny_localiser(f: &Fixture, scene: &SceneInfo) -> Localiser {
    let lc = LocaliserConfig { chip_px: 256, chip_gsd_m: 1.0, query_px: 128, ..Default::default() };
    let weights = f.checkpoint.join("weights.safetensors");
    Localiser::new(&tiny_model_config(), &weights, &MosaicSpec::from_path(scene.mosaic_path()), lc, tch::Device::Cpu)
        .unwrap()
}

fn live_config(f: &Fixture, streams: Vec<StreamSection>, mqtt_port: u16, spool: Option<PathBuf>) -> LiveConfig {
    LiveConfig {
        device: "cpu".into(),
        threads: Some(2),
        model: ModelSection { checkpoint: Some(f.checkpoint.clone()), ..Default::default() },
        mosaic: SceneInfo::load(&f.scene).unwrap().mosaic_path(),
        localiser: LocaliserConfig { chip_px: 256, chip_gsd_m: 1.0, query_px: 128, ..Default::default() },
        track: TrackConfig { interval_ms: 400, max_s: 30.0, max_tracks: 4, max_batch: 8 },
        mqtt: MqttSection { port: mqtt_port, spool_dir: spool, ..Default::default() },
        streams,
    }
}

fn write_config(cfg: &LiveConfig, path: &Path) {
    std::fs::write(path, toml::to_string(cfg).unwrap()).unwrap();
}

fn target_validator() -> jsonschema::Validator {
    crate::publish::testutil::validator(include_str!("../../schemas/target.schema.json"))
}

#[test]
fn replay_answers_every_prompt_once_with_valid_targets() {
    let f = fixture();
    let d = tempfile::tempdir().unwrap();
    let cfg_path = d.path().join("live.toml");
    write_config(&live_config(f, vec![], 1883, None), &cfg_path);
    let out = d.path().join("out");
    let a = ReplayArgs {
        flight: f.flight.join("flight.ts"),
        prompts: f.flight.join("prompts.jsonl"),
        truth: Some(f.flight.join("truth.jsonl")),
        config: cfg_path,
        out: Some(out.clone()),
        stream: "uav-test".into(),
        fallback_centre: None,
    };
    let s = super::replay::run(&a).unwrap();
    let prompts = super::replay::read_prompts(&a.prompts).unwrap();
    assert!(prompts.len() >= 2, "the flight should carry prompts");
    assert!(s.errors.is_empty(), "errors: {:?}", s.errors);
    assert_eq!(s.targets, prompts.len(), "one target per once prompt");
    assert!(s.klv_packets > 0, "KLV reached the timeline");
    let targets: Vec<serde_json::Value> = read_jsonl(&out.join("targets.jsonl")).unwrap();
    assert_eq!(targets.len(), prompts.len());
    let truth: Vec<Truth> = read_jsonl(&f.flight.join("truth.jsonl")).unwrap();
    let v = target_validator();
    let mut ids = std::collections::HashSet::new();
    for (t, p) in targets.iter().zip(&prompts) {
        crate::publish::testutil::assert_valid(&v, t);
        assert_eq!(t["properties"]["prompt_id"], p.id.as_str());
        assert_eq!(t["properties"]["stream"], "uav-test");
        assert!(ids.insert(t["properties"]["id"].as_str().unwrap().to_string()), "ids are unique");
        // The chip came from the KLV frame centre: the result lies within the chip,
        // so its distance to the frame centre is at most the chip's half-diagonal.
        let dist = t["properties"]["telemetry"]["distance_m"].as_f64().expect("KLV frame centre present");
        assert!(dist <= 256.0 * 1.0 * 0.75, "distance to the frame centre {dist} m");
        // The click through the (exact) KLV corners lands on the clicked object: within
        // the object's own extent of its centroid (the click is a point inside it).
        let tr = truth.iter().find(|x| x.prompt_id == p.id).expect("truth of the prompt");
        let c = &t["properties"]["telemetry"]["click"];
        let c = (c[0].as_f64().expect("telemetry click"), c[1].as_f64().unwrap());
        let reach = tr
            .polygon
            .iter()
            .map(|v| super::engine::ground_distance_m((tr.lon, tr.lat), (v[0], v[1])))
            .fold(0.0, f64::max);
        let e = super::engine::ground_distance_m((tr.lon, tr.lat), c);
        assert!(
            e <= reach + 1.0,
            "prompt {}: telemetry click {e:.1} m from the centroid, object reach {reach:.1} m",
            p.id
        );
        assert!(t["properties"]["telemetry"]["click_distance_m"].as_f64().is_some());
        assert!(t["properties"]["telemetry"].get("prior_sigma_m").is_none(), "prior off by default");
    }
    let geo = s.geo_error.expect("truth given");
    assert_eq!(geo.prompts, prompts.len());
    assert_eq!(geo.with_result, prompts.len());
    assert_eq!(geo.telemetry_click.as_ref().map(|t| t.n), Some(prompts.len()));
    assert!(out.join("report.json").exists());
}

/// The geometry chain without the model: the true object box, cut into the chip the
/// live path would use, through chip pixels → mosaic CRS → WGS84, lands within 0.5 m of
/// the truth computed from the synthetic world directly.
#[test]
fn true_box_through_the_chip_chain_is_within_half_a_metre() {
    let f = fixture();
    let scene = SceneInfo::load(&f.scene).unwrap();
    let world = scene.world();
    let truth: Vec<Truth> = read_jsonl(&f.flight.join("truth.jsonl")).unwrap();
    let mut loc = tiny_localiser(f, &scene);
    let frame = vec![128u8; 64 * 64 * 3];
    for t in &truth {
        let obj = world.objects.iter().find(|o| Some(o.id as u64) == t.object_id).expect("truth object in the world");
        // Object box in world metres → its centre in WGS84, straight from the scene.
        let b = obj.bbox;
        let want = scene.world_to_lonlat((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0).unwrap();
        // The chip the live path cuts around the object (snapped), via a localisation.
        let l = loc.localise(&frame, 64, 64, 64 * 3, (32.0, 32.0), LonLat { lon: t.lon, lat: t.lat }).unwrap();
        let gt = GeoTransform(l.chip_geotransform);
        let crs = crate::georef::transform::crs_from_user(&l.chip_crs).unwrap();
        // World box corners → CRS (the scene's own affine origin) → chip pixels.
        let geo = scene.geo().unwrap();
        let (x1, y1) = geo.world_to_crs((b[0], b[3]));
        let (x2, y2) = geo.world_to_crs((b[2], b[1]));
        let inv = |x: f64, y: f64| ((x - gt.0[0]) / gt.0[1], (y - gt.0[3]) / gt.0[5]);
        let (c1, r1) = inv(x1, y1);
        let (c2, r2) = inv(x2, y2);
        let pb = PixelBox { x1: c1, y1: r1, x2: c2, y2: r2 };
        let g = pixel_box_to_wgs84(&pb, &gt, &crs).unwrap();
        let err = super::engine::ground_distance_m((want.lon, want.lat), (g.center.lon, g.center.lat));
        assert!(err < 0.5, "object {}: chain error {err} m", obj.id);
    }
}

#[test]
fn run_over_udp_with_mosquitto_serves_prompts_and_survives_bad_ones() {
    use crate::publish::testutil::{Broker, Msg, Subscriber};
    use rumqttc::QoS;
    let f = fixture();
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let stream = StreamSection {
        id: "uav-e2e".into(),
        source: SourceKind::UdpTs { address: "127.0.0.1".into(), port, multicast_iface: None },
        codec: Default::default(),
        ring_frames: 30,
        frame_tolerance_ms: 500,
        fallback_centre: None,
        stall_timeout_ms: 2000,
    };
    let cfg = live_config(f, vec![stream], broker.port, Some(d.path().join("spool")));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut targets = rt.block_on(Subscriber::connect(broker.port, "t-targets", "smgeo/uav-e2e/targets", true));
    let mut status = rt.block_on(Subscriber::connect(broker.port, "t-status", "smgeo/uav-e2e/status", true));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || super::run::run_with_stop(&cfg, None, stop))
    };
    // Stream the recorded flight over loopback UDP, looping, until the test ends.
    let ctl = Arc::new(crate::ingest::StreamControl::default());
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (ts, ctl, done) = (f.flight.join("flight.ts"), ctl.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                crate::ingest::stream_file_udp(&ts, "127.0.0.1", port, Some(&ctl)).unwrap();
            }
        })
    };
    let is = |m: &Msg, k: &str, v: &str| m.json().get(k).and_then(|x| x.as_str()) == Some(v);
    let seen = rt.block_on(status.until(Duration::from_secs(90), |m| is(m, "source", "playing")));
    assert!(seen.last().is_some_and(|m| is(m, "source", "playing")), "source never reached playing: {seen:?}");
    let prompt_client = targets.client.clone();
    let publish = |payload: &[u8]| {
        rt.block_on(prompt_client.publish("smgeo/uav-e2e/prompts", QoS::AtLeastOnce, false, payload.to_vec())).unwrap()
    };
    // Two valid prompts (latest frame), one malformed, one outside the frame.
    publish(br#"{"id":"a","x":100,"y":90,"mode":"once"}"#);
    publish(br#"{"id":"bad","x":"left","mode":"once"}"#);
    publish(br#"{"id":"far","x":5000,"y":90,"mode":"once"}"#);
    publish(br#"{"id":"b","x":200,"y":60,"mode":"once"}"#);
    let mut n = 0;
    let got = rt.block_on(targets.until(Duration::from_secs(90), |_| {
        n += 1;
        n == 2
    }));
    assert_eq!(got.len(), 2, "one target per valid once prompt");
    let v = target_validator();
    for m in &got {
        crate::publish::testutil::assert_valid(&v, &m.json());
    }
    let ids: Vec<String> =
        got.iter().map(|m| m.json()["properties"]["prompt_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["a", "b"], "order kept");
    let mut errs = Vec::new();
    rt.block_on(status.until(Duration::from_secs(30), |m| {
        if is(m, "schema", "smgeo.error.v1") {
            errs.push(m.json()["prompt_id"].as_str().unwrap_or("").to_string());
        }
        errs.len() == 2
    }));
    assert!(errs.contains(&"bad".to_string()) && errs.contains(&"far".to_string()), "{errs:?}");
    // Source loss: stop the UDP feed for 5 s, resume; a later prompt is still served.
    ctl.pause();
    let lost = rt.block_on(status.until(Duration::from_secs(30), |m| is(m, "source", "reconnecting")));
    assert!(lost.last().is_some_and(|m| is(m, "source", "reconnecting")), "the stall was not reported");
    std::thread::sleep(Duration::from_secs(3));
    ctl.resume();
    let back = rt.block_on(status.until(Duration::from_secs(60), |m| is(m, "source", "playing")));
    assert!(back.last().is_some_and(|m| is(m, "source", "playing")), "source did not come back");
    publish(br#"{"id":"c","x":160,"y":90,"mode":"once"}"#);
    let got = rt.block_on(targets.until(Duration::from_secs(90), |_| true));
    assert_eq!(got.len(), 1, "served after the feed came back");
    assert_eq!(got[0].json()["properties"]["prompt_id"], "c");
    // Shutdown drains and publishes offline.
    stop.store(true, Ordering::SeqCst);
    let reports = runner.join().unwrap().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].targets, 3);
    assert!(reports[0].errors >= 1);
    let off = rt.block_on(status.until(Duration::from_secs(15), |m| is(m, "state", "offline")));
    assert!(off.last().is_some_and(|m| is(m, "state", "offline")), "offline status after shutdown");
    done.store(true, Ordering::SeqCst);
    ctl.stop();
    sender.join().unwrap();
    let _ = Instant::now();
}

/// The flight served over RTSP as MPEG-TS (payload MP2T): video and KLV arrive in one RTSP
/// session, so a prompt is answered with a chip placed from the KLV frame centre (no
/// fallback centre is configured; without telemetry the prompt would be an error).
#[test]
fn run_over_rtsp_mp2t_uses_the_klv_that_travels_with_the_video() {
    use crate::ingest::{RtspMedia, RtspServer};
    use crate::publish::testutil::{Broker, Msg, Subscriber};
    use rumqttc::QoS;
    let f = fixture();
    let broker = Broker::start();
    let server =
        RtspServer::start("127.0.0.1", 0, "/flight", &RtspMedia::Mp2tFile { path: f.flight.join("flight.ts") })
            .expect("rtsp server");
    let stream = StreamSection {
        id: "uav-rtsp".into(),
        source: SourceKind::RtspTs { location: server.url(), latency_ms: 100, tcp: true },
        codec: Default::default(),
        ring_frames: 30,
        frame_tolerance_ms: 500,
        fallback_centre: None,
        stall_timeout_ms: 2000,
    };
    let cfg = live_config(f, vec![stream], broker.port, None);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut targets = rt.block_on(Subscriber::connect(broker.port, "r-targets", "smgeo/uav-rtsp/targets", true));
    let mut status = rt.block_on(Subscriber::connect(broker.port, "r-status", "smgeo/uav-rtsp/status", true));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || super::run::run_with_stop(&cfg, None, stop))
    };
    let is = |m: &Msg, k: &str, v: &str| m.json().get(k).and_then(|x| x.as_str()) == Some(v);
    let seen = rt.block_on(status.until(Duration::from_secs(90), |m| is(m, "source", "playing")));
    assert!(seen.last().is_some_and(|m| is(m, "source", "playing")), "source never reached playing: {seen:?}");
    // Let some KLV arrive before prompting (the flight carries a packet per frame).
    std::thread::sleep(Duration::from_millis(1500));
    let client = targets.client.clone();
    rt.block_on(client.publish(
        "smgeo/uav-rtsp/prompts",
        QoS::AtLeastOnce,
        false,
        br#"{"id":"r1","x":160,"y":90,"mode":"once"}"#.to_vec(),
    ))
    .unwrap();
    let got = rt.block_on(targets.until(Duration::from_secs(90), |_| true));
    stop.store(true, Ordering::SeqCst);
    let reports = runner.join().unwrap().unwrap();
    server.stop();
    assert_eq!(got.len(), 1, "one target for the prompt; reports {reports:?}");
    let t = got[0].json();
    crate::publish::testutil::assert_valid(&target_validator(), &t);
    assert_eq!(t["properties"]["prompt_id"], "r1");
    let tel = &t["properties"]["telemetry"];
    assert!(tel["frame_center"].is_array(), "chip not placed from KLV: {t}");
    assert!(tel["distance_m"].as_f64().is_some_and(|d| d.is_finite() && d < 1000.0), "{t}");
}

/// A click whose ground position lies outside the mosaic is an error naming the place;
/// the localiser keeps working for the next prompt.
#[test]
fn ground_outside_the_mosaic_is_an_error_and_the_localiser_goes_on() {
    let f = fixture();
    let scene = SceneInfo::load(&f.scene).unwrap();
    let mut loc = tiny_localiser(f, &scene);
    let frame = vec![100u8; 96 * 64 * 3];
    let far = LonLat { lon: scene.bounds_wgs84[2] + 0.05, lat: scene.bounds_wgs84[3] + 0.05 };
    let e = loc.localise(&frame, 96, 64, 96 * 3, (40.0, 30.0), far).unwrap_err();
    assert!(matches!(e, super::localiser::LocaliseError::Chip { .. }), "{e}");
    let bad = loc.localise(&frame, 96, 64, 96 * 3, (96.0, 30.0), far).unwrap_err();
    assert!(matches!(bad, super::localiser::LocaliseError::ClickOutside { .. }), "{bad}");
    let b = scene.bounds_wgs84;
    let inside = LonLat { lon: (b[0] + b[2]) / 2.0, lat: (b[1] + b[3]) / 2.0 };
    let ok = loc.localise(&frame, 96, 64, 96 * 3, (40.0, 30.0), inside).unwrap();
    assert!(!ok.cached && ok.box_px[2] <= 64.0 + 1e-6, "box inside the 64 px model chip: {:?}", ok.box_px);
    // A second prompt on the same chip uses the cached satellite features.
    let again = loc.localise(&frame, 96, 64, 96 * 3, (10.0, 10.0), inside).unwrap();
    assert!(again.cached && again.times.reference_ms == 0.0);
    assert_eq!(loc.cache_stats(), (1, 2, 1));
}

/// Several clicks on one frame go through the model as one batch against the chip: the
/// same boxes and scores as one call per click; a click outside the frame fails alone.
#[test]
fn batched_clicks_match_one_call_per_click() {
    let f = fixture();
    let scene = SceneInfo::load(&f.scene).unwrap();
    let mut loc = tiny_localiser(f, &scene);
    let (w, h) = (160u32, 96u32);
    let frame: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37 + (i / (3 * w)) * 11) % 251) as u8).collect();
    let b = scene.bounds_wgs84;
    let inside = LonLat { lon: (b[0] + b[2]) / 2.0, lat: (b[1] + b[3]) / 2.0 };
    let clicks = [(20.0, 20.0), (150.0, 80.0), (500.0, 10.0), (80.0, 48.0)];
    let many = loc.localise_many(&frame, w, h, 3 * w as usize, &clicks, inside, &[]).unwrap();
    assert_eq!(many.len(), 4);
    assert!(matches!(many[2], Err(super::localiser::LocaliseError::ClickOutside { .. })));
    for (k, &c) in clicks.iter().enumerate().filter(|(k, _)| *k != 2) {
        let one = loc.localise(&frame, w, h, 3 * w as usize, c, inside).unwrap();
        let got = many[k].as_ref().unwrap();
        for j in 0..4 {
            assert!((got.box_px[j] - one.box_px[j]).abs() < 1e-3, "click {k}: {:?} vs {:?}", got.box_px, one.box_px);
        }
        assert!((got.score - one.score).abs() < 1e-5, "click {k}: {} vs {}", got.score, one.score);
        assert_eq!(got.query_crop, one.query_crop);
    }
    // The chip was read and encoded once, for the batch; the single calls hit the cache.
    assert_eq!(loc.cache_stats(), (3, 1, 1));
    // Different clicks see different crops, so the batch did not repeat one query.
    let crops: Vec<_> = [0, 1, 3].iter().map(|&k| many[k].as_ref().unwrap().query_crop).collect();
    assert!(crops[0] != crops[1] && crops[1] != crops[2]);
}

/// The telemetry prior: with a σ far below the cell size the argmax is the cell under the
/// prior point, wherever the point is; without a prior (or with σ = 0) the decode is
/// the model's own argmax; the score stays the model's at the chosen cell.
#[test]
fn telemetry_prior_picks_the_cell_under_the_prior_point() {
    let f = fixture();
    let scene = SceneInfo::load(&f.scene).unwrap();
    let (w, h) = (160u32, 96u32);
    let frame: Vec<u8> = (0..w * h * 3).map(|i| ((i * 31 + (i / (3 * w)) * 13) % 249) as u8).collect();
    let b = scene.bounds_wgs84;
    let inside = LonLat { lon: (b[0] + b[2]) / 2.0, lat: (b[1] + b[3]) / 2.0 };
    let mut plain = tiny_localiser(f, &scene);
    let free = plain.localise(&frame, w, h, 3 * w as usize, (80.0, 48.0), inside).unwrap();
    let lc = LocaliserConfig { chip_px: 256, chip_gsd_m: 1.0, query_px: 128, prior_sigma_m: 2.0, ..Default::default() };
    let weights = f.checkpoint.join("weights.safetensors");
    let mut loc = Localiser::new(
        &tiny_model_config(),
        &weights,
        &MosaicSpec::from_path(scene.mosaic_path()),
        lc,
        tch::Device::Cpu,
    )
    .unwrap();
    // No prior point: the same decode as without the prior.
    let none = loc.localise_many(&frame, w, h, 3 * w as usize, &[(80.0, 48.0)], inside, &[None]).unwrap();
    let none = none[0].as_ref().unwrap();
    assert_eq!((none.cell, none.box_px), (free.cell, free.box_px));
    // The model chip is 64 px at 4 m (256 px at 1 m, input_scale 0.25): a 2×2 grid of
    // 32 px cells. Put the prior at the centre of each cell in turn.
    let gt = GeoTransform(free.chip_geotransform);
    let crs = crate::georef::transform::crs_from_user(&free.chip_crs).unwrap();
    let ct = crate::georef::CrsTransform::new(&crs).unwrap();
    let mut seen = std::collections::HashSet::new();
    for (row, col) in [(0i64, 0i64), (0, 1), (1, 0), (1, 1)] {
        let (x, y) = gt.apply(col as f64 * 32.0 + 16.0, row as f64 * 32.0 + 16.0);
        let p = ct.to_lonlat(&[(x, y)]).unwrap()[0];
        let r = loc
            .localise_many(&frame, w, h, 3 * w as usize, &[(80.0, 48.0), (20.0, 20.0)], inside, &[Some(p), None])
            .unwrap();
        let got = r[0].as_ref().unwrap();
        assert_eq!(got.cell, (row, col), "prior at cell ({row}, {col})");
        assert!(got.score > 0.0 && got.score < 1.0);
        seen.insert(got.cell);
        // The click without a prior in the same batch keeps the model's own argmax.
        let other = r[1].as_ref().unwrap();
        let alone = plain.localise(&frame, w, h, 3 * w as usize, (20.0, 20.0), inside).unwrap();
        assert_eq!(other.cell, alone.cell);
    }
    assert_eq!(seen.len(), 4);
}

/// Three tracks due on one frame: the engine answers each, in track order, with the same
/// boxes whether it batches them (max_batch 8) or not (max_batch 1).
#[test]
fn engine_batches_tracks_due_on_one_frame() {
    use super::engine::Engine;
    use crate::ingest::Frame;
    use crate::publish::message::ModelInfo;
    use crate::publish::{Prompt, PromptMode};
    let f = fixture();
    let scene = SceneInfo::load(&f.scene).unwrap();
    let b = scene.bounds_wgs84;
    let centre = Some(((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0));
    let (w, h) = (160u32, 96u32);
    let frame = |pts_ns: u64| Frame {
        pts_ns,
        width: w,
        height: h,
        data: (0..w * h * 3).map(|i| ((i * 29 + (i / (3 * w)) * 7) % 253) as u8).collect::<Vec<u8>>().into(),
        seq: pts_ns / 1_000_000,
        arrived: Instant::now(),
    };
    let run = |max_batch: usize| {
        let loc = tiny_localiser(f, &scene);
        let model = ModelInfo { preset: "paper".into(), weights_sha256: "0".repeat(64) };
        let tc = TrackConfig { interval_ms: 100, max_s: 10.0, max_tracks: 4, max_batch };
        let mut e = Engine::new("s", loc, model, centre, tc);
        for (k, x) in [20.0, 80.0, 150.0].into_iter().enumerate() {
            let p = Prompt { id: format!("t{k}"), x, y: 40.0 + 10.0 * k as f64, pts_ns: None, mode: PromptMode::Track };
            e.handle_prompt(&p, &frame(0), None, Instant::now()).unwrap();
        }
        let out = e.update_tracks(&frame(200_000_000), None);
        assert_eq!(out.len(), 3);
        out.into_iter()
            .map(|r| {
                let o = r.unwrap();
                (o.target.properties.prompt_id.clone(), o.localisation.box_px)
            })
            .collect::<Vec<_>>()
    };
    let batched = run(8);
    let single = run(1);
    let ids: Vec<&str> = batched.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["t0", "t1", "t2"]);
    for (a, s) in batched.iter().zip(&single) {
        assert_eq!(a.0, s.0);
        for j in 0..4 {
            assert!((a.1[j] - s.1[j]).abs() < 1e-3, "{}: {:?} vs {:?}", a.0, a.1, s.1);
        }
    }
}

/// Broker killed mid-track and restarted: the targets produced while it was down wait in
/// the spool and arrive after the restart — none lost, none duplicated, in frame order.
#[test]
fn broker_restart_mid_track_loses_and_duplicates_nothing() {
    use crate::publish::testutil::{free_port, Broker, Subscriber};
    use rumqttc::QoS;
    let f = fixture();
    let persist = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_on(free_port(), Some(persist.path()));
    let d = tempfile::tempdir().unwrap();
    let b = SceneInfo::load(&f.scene).unwrap().bounds_wgs84;
    let stream = StreamSection {
        id: "uav-bk".into(),
        source: SourceKind::Test { width: 320, height: 180, fps: 10, num_buffers: None, live: true },
        codec: Default::default(),
        ring_frames: 10,
        frame_tolerance_ms: 500,
        fallback_centre: Some([(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0]),
        stall_timeout_ms: 2000,
    };
    let mut cfg = live_config(f, vec![stream], broker.port, Some(d.path().join("spool")));
    cfg.track = TrackConfig { interval_ms: 300, max_s: 120.0, max_tracks: 2, max_batch: 8 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut targets = rt.block_on(Subscriber::connect(broker.port, "t-bk", "smgeo/uav-bk/targets", false));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || super::run::run_with_stop(&cfg, None, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    let prompt = br#"{"id":"trk","x":160,"y":90,"mode":"track"}"#.to_vec();
    rt.block_on(targets.client.publish("smgeo/uav-bk/prompts", QoS::AtLeastOnce, false, prompt)).unwrap();
    let mut got = rt.block_on(targets.until(Duration::from_secs(60), |_| true));
    let mut n = 0;
    got.extend(rt.block_on(targets.until(Duration::from_secs(30), |_| {
        n += 1;
        n == 2
    })));
    assert!(got.len() >= 3, "track targets before the outage: {}", got.len());
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    // 3 s of outage at one target per 300 ms: at least 8 more (spooled ones included).
    let mut m = 0;
    got.extend(rt.block_on(targets.until(Duration::from_secs(60), |_| {
        m += 1;
        m == 12
    })));
    assert!(got.len() >= 15, "targets after the restart: {}", got.len() - 3);
    stop.store(true, Ordering::SeqCst);
    let reports = runner.join().unwrap().unwrap();
    let v: Vec<serde_json::Value> = got.iter().map(|m| m.json()).collect();
    let ids: std::collections::HashSet<&str> = v.iter().map(|t| t["properties"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), v.len(), "no duplicates");
    let pts: Vec<u64> = v.iter().map(|t| t["properties"]["pts_ns"].as_u64().unwrap()).collect();
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "frame order kept: {pts:?}");
    // No hole where the broker was down: consecutive results ≤ 1.5 s of frame time apart.
    let gap = pts.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let lost = targets.sessions_lost.load(Ordering::SeqCst);
    assert!(
        gap <= 1_500_000_000,
        "a gap of {} ms: targets lost in the outage ({pts:?}); the subscriber's broker session was lost on \
         {lost} reconnect(s) (then targets flushed before its new SUBACK never reach it)",
        gap / 1_000_000
    );
    assert!(reports[0].broker_reconnects >= 1, "{:?}", reports[0]);
}
