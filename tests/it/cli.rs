//! The binary end to end: `weights init/inspect/forward`, `predict`, error exits.

use std::process::Command;

use crate::common::fixture;

fn smgeo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smgeo"))
}

#[test]
fn weights_forward_reproduces_golden_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let st = smgeo()
        .args(["weights", "forward", "--config"])
        .arg(fixture("golden/tiny_config.json"))
        .arg("--weights")
        .arg(fixture("golden/tiny_weights.safetensors"))
        .arg("--inputs")
        .arg(fixture("golden/tiny_io.safetensors"))
        .arg("--out")
        .arg(&out)
        .args(["--device", "cpu"])
        .status()
        .unwrap();
    assert!(st.success());
    let ours = smgeo::model::weights::read_safetensors(&out).unwrap();
    let gold = crate::common::load("golden/tiny_io.safetensors");
    crate::common::assert_close("out.heatmap", &ours["out.heatmap"], &gold["out.heatmap"], 1e-4, 1e-4);
    assert!(ours["moe.sat_s2b0.topk_idx"].equal(&gold["moe.sat_s2b0.topk_idx"]));
}

#[test]
fn inspect_reports_fit_and_misfit() {
    let out = smgeo()
        .args(["weights", "inspect", "--config"])
        .arg(fixture("golden/tiny_config.json"))
        .arg(fixture("golden/tiny_weights.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["against_model"]["fits"], true);
    assert_eq!(v["elements_unique"], 378_579 + 64 + 2); // + BN running stats + the two num_batches_tracked
    let out = smgeo()
        .args(["weights", "inspect", "--preset", "paper"])
        .arg(fixture("golden/tiny_weights.safetensors"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["against_model"]["fits"], false);
    assert_eq!(v["looks_like"], "release");
}

/// A tiny paper-preset config file and randomly initialised weights for it, in `d`.
fn tiny_paper_weights(d: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = d.join("m.json");
    std::fs::write(&cfg, r#"{"preset": "paper", "embed_dim": 8, "num_heads": [2, 2, 4, 4], "head_feat_channels": 8}"#)
        .unwrap();
    let w = d.join("w.safetensors");
    assert!(smgeo().args(["weights", "init", "--config"]).arg(&cfg).arg("--out").arg(&w).status().unwrap().success());
    (cfg, w)
}

#[test]
fn predict_draws_and_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, w) = tiny_paper_weights(d);
    let q = image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let r = image::RgbImage::from_fn(500, 400, |x, y| image::Rgb([(x / 2) as u8, y as u8, 30]));
    q.save(d.join("q.png")).unwrap();
    r.save(d.join("r.png")).unwrap();
    let run = |click: &str| {
        smgeo()
            .args(["predict", "--query"])
            .arg(d.join("q.png"))
            .args(["--click", click, "--reference"])
            .arg(d.join("r.png"))
            .arg("--weights")
            .arg(&w)
            .arg("--config")
            .arg(&cfg)
            .arg("--out")
            .arg(d.join("res.png"))
            .output()
            .unwrap()
    };
    let ok = run("150,100");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    let b: Vec<f64> = serde_json::from_value(v["box_xyxy"].clone()).unwrap();
    assert!(b.iter().all(|v| v.is_finite()), "{v}");
    assert!(b[0] >= 0.0 && b[2] <= 500.0 && b[1] >= 0.0 && b[3] <= 400.0 && b[0] <= b[2]);
    let pic = image::open(d.join("res.png")).unwrap();
    assert_eq!((pic.width(), pic.height()), (300 + 8 + 500, 400));
    let bad = run("300,10");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("outside"), "{}", String::from_utf8_lossy(&bad.stderr));
    let missing = smgeo()
        .args(["predict", "--query", "/nonexistent.png", "--click", "1,1", "--reference"])
        .arg(d.join("r.png"))
        .arg("--weights")
        .arg(&w)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.png"));
}

#[test]
fn import_strips_dataparallel_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let w = crate::common::load("golden/tiny_weights.safetensors");
    let prefixed: std::collections::BTreeMap<String, tch::Tensor> =
        w.iter().map(|(k, t)| (format!("module.{k}"), t.shallow_clone())).collect();
    let src = dir.path().join("dp.safetensors");
    smgeo::model::weights::write_safetensors(&prefixed, &Default::default(), &src).unwrap();
    let out = dir.path().join("ours.safetensors");
    let st = smgeo().args(["weights", "import", "--from", "smgeo"]).arg(&src).arg("--out").arg(&out).status().unwrap();
    assert!(st.success());
    let cfg = smgeo::model::ModelConfig::from_file(&fixture("golden/tiny_config.json")).unwrap();
    let (vs, _) = smgeo::weights_cli::build(&cfg, tch::Device::Cpu).unwrap();
    let rep = smgeo::model::weights::load_file(&vs, &out, true).unwrap();
    assert_eq!(rep.aliases_checked, 120);
}

#[test]
fn predict_on_a_geotiff_prints_wgs84() {
    use gdal::raster::Buffer;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cfg, w) = tiny_paper_weights(d);
    // 256² RGB GeoTIFF in UTM 32N, 0.5 m pixels, origin at the ENVIRONMENT.md check point
    let tif = d.join("ref.tif");
    let drv = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = drv.create_with_band_type::<u8, _>(&tif, 256, 256, 3).unwrap();
    ds.set_geo_transform(&[690512.25, 0.5, 0.0, 5339487.75, 0.0, -0.5]).unwrap();
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32632).unwrap()).unwrap();
    for b in 1..=3 {
        let data: Vec<u8> = (0..256 * 256).map(|i| ((i * b) % 251) as u8).collect();
        let mut buf = Buffer::new((256, 256), data);
        ds.rasterband(b).unwrap().write((0, 0), (256, 256), &mut buf).unwrap();
    }
    drop(ds);
    image::RgbImage::from_fn(256, 256, |x, y| image::Rgb([x as u8, y as u8, 9])).save(d.join("q.png")).unwrap();
    let out = smgeo()
        .args(["predict", "--query"])
        .arg(d.join("q.png"))
        .args(["--click", "100,100", "--reference"])
        .arg(&tif)
        .arg("--weights")
        .arg(&w)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c: Vec<f64> = serde_json::from_value(v["wgs84"]["center"].clone()).unwrap();
    // the 128 m raster starts at lon 11.5629612, lat 48.1800402 (its top-left corner)
    assert!((11.5629..11.5648).contains(&c[0]) && (48.1788..48.18005).contains(&c[1]), "{c:?}");
    assert_eq!(v["wgs84"]["footprint"].as_array().unwrap().len(), 5);
}

/// A Python with torch: `SMGEO_PYTHON` (e.g. a venv's python) or `python3`.
fn torch_python() -> Option<String> {
    let py = std::env::var("SMGEO_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

#[test]
fn import_pth_written_by_torch_save_matches_safetensors_import() {
    let Some(py) = torch_python() else {
        println!("no Python with torch (set SMGEO_PYTHON): .pth import check skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // torch.save of the golden tiny weights as a DataParallel checkpoint the way
    // training scripts write them: {"epoch", "best_accu", "state_dict": {"module.…"}};
    // one copy in bfloat16, one with an argparse.Namespace beside the weights.
    let script = r#"
import argparse, json, struct, sys, torch
src, out = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
dt = {"F32": torch.float32, "I64": torch.int64}
sd = {}
for k, v in hdr.items():
    if k == "__metadata__":
        continue
    a, b = v["data_offsets"]
    t = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=dt[v["dtype"]]).reshape(v["shape"])
    sd["module." + k] = t
torch.save({"epoch": 7, "best_accu": 0.5, "state_dict": sd}, out + "/dp.pth")
bf = {k: (t.to(torch.bfloat16) if t.is_floating_point() else t) for k, t in sd.items()}
torch.save({"state_dict": bf}, out + "/bf16.pth")
torch.save({"args": argparse.Namespace(lr=1e-4), "state_dict": sd}, out + "/ns.pth")
"#;
    let o = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(fixture("golden/tiny_weights.safetensors"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let import = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.safetensors"));
        let o = smgeo()
            .args(["weights", "import", "--from", "smgeo", "--python", &py])
            .arg(dir.path().join(format!("{name}.pth")))
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned(), out)
    };
    let reference = dir.path().join("ref.safetensors");
    let st = smgeo()
        .args(["weights", "import", "--from", "smgeo"])
        .arg(fixture("golden/tiny_weights.safetensors"))
        .arg("--out")
        .arg(&reference)
        .status()
        .unwrap();
    assert!(st.success());
    let want = smgeo::model::weights::read_safetensors(&reference).unwrap();

    let (ok, err, out) = import("dp", &[]);
    assert!(ok, "{err}");
    let got = smgeo::model::weights::read_safetensors(&out).unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, t) in &want {
        assert!(got[k].equal(t), "{k} differs after .pth import");
    }

    let (ok, err, out) = import("bf16", &[]);
    assert!(ok, "{err}");
    let got = smgeo::model::weights::read_safetensors(&out).unwrap();
    for (k, t) in &want {
        let g = got[k].to_kind(t.kind());
        let bound = t.abs() * 2f64.powi(-8) + 1e-30;
        let within = (&g - t).abs().le_tensor(&bound).all().int64_value(&[]) == 1;
        assert!(within, "{k}: bf16 import beyond bf16 rounding");
    }

    // A Namespace in the pickle: refused by default (weights_only), read with the flag.
    let (ok, err, _) = import("ns", &[]);
    assert!(!ok && err.contains("--trust-pickle"), "{err}");
    let (ok, err, out) = import("ns", &["--trust-pickle"]);
    assert!(ok, "{err}");
    assert_eq!(smgeo::model::weights::read_safetensors(&out).unwrap().len(), want.len());
}

/// `bench train` runs real optimisation steps on a tiny configuration and reports
/// throughput and memory; the loss of a repeated batch falls.
#[test]
fn bench_train_reports_throughput_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "preset = \"paper\"\nlr = 1e-3\nwarmup_epochs = 0.0\ndevice = \"cpu\"\n[model]\nembed_dim = 8\n\
         num_heads = [2, 2, 4, 4]\nhead_feat_channels = 8\ninput_scale = 0.25\n",
    )
    .unwrap();
    let out = smgeo()
        .args(["bench", "train", "--config"])
        .arg(&cfg)
        .args(["--batch", "2", "--steps", "4", "--warmup", "1", "--threads", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bench"], "train");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["sat_hw"], serde_json::json!([256, 256]));
    assert_eq!(v["step_ms"]["n"], 4);
    assert!(v["samples_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() >= v["peak_rss_bytes_before_training"].as_u64().unwrap());
    let losses: Vec<f64> = v["losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 5);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[4] < losses[0], "the same batch five times: the loss must fall {losses:?}");
    // A config that cannot be read is a clear error, not a panic.
    let bad = smgeo().args(["bench", "train", "--config", "/nonexistent.toml"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nonexistent"), "{}", String::from_utf8_lossy(&bad.stderr));
}
