//! `smgeo run` as a process: a test-pattern source, a real mosquitto, a prompt answered
//! from the configured area (no KLV), then SIGTERM: the process drains, publishes
//! `offline` on its retained status and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn smgeo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smgeo"))
}

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stdout on a channel.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, secs: u64, pred: impl Fn(&str) -> bool) -> Option<String> {
    let end = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn run_serves_a_prompt_then_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scene = smgeo()
        .args(["synth", "scene", "--extent-m", "300", "--gsd", "1", "--out"])
        .arg(d.join("scene"))
        .output()
        .unwrap();
    assert!(scene.status.success());
    let info: serde_json::Value = serde_json::from_slice(&scene.stdout).unwrap();
    let b = &info["bounds_wgs84"];
    let (lon, lat) = (
        (b[0].as_f64().unwrap() + b[2].as_f64().unwrap()) / 2.0,
        (b[1].as_f64().unwrap() + b[3].as_f64().unwrap()) / 2.0,
    );
    std::fs::create_dir_all(d.join("ckpt")).unwrap();
    std::fs::write(
        d.join("ckpt/model.json"),
        r#"{"preset": "paper", "embed_dim": 8, "num_heads": [2, 2, 4, 4], "head_feat_channels": 8, "input_scale": 0.25}"#,
    )
    .unwrap();
    let init = smgeo()
        .args(["weights", "init", "--config"])
        .arg(d.join("ckpt/model.json"))
        .arg("--out")
        .arg(d.join("ckpt/weights.safetensors"))
        .output()
        .unwrap();
    assert!(init.status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(d.join("mosquitto.conf"), format!("listener {port} 127.0.0.1\nallow_anonymous true\n")).unwrap();
    let _broker = Killer(
        Command::new("mosquitto")
            .arg("-c")
            .arg(d.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let cfg = format!(
        r#"
device = "cpu"
threads = 2
mosaic = "scene/mosaic.tif"
[model]
checkpoint = "ckpt"
[localiser]
chip_px = 256
chip_gsd_m = 1.0
query_px = 128
[mqtt]
port = {port}
spool_dir = "spool"
[[streams]]
id = "sig"
source = {{ kind = "test", width = 320, height = 180, fps = 10, live = true }}
fallback_centre = [{lon}, {lat}]
"#
    );
    std::fs::write(d.join("live.toml"), cfg).unwrap();
    let mut sub = Killer(
        Command::new("mosquitto_sub")
            .args(["-p", &port.to_string(), "-t", "smgeo/sig/#", "-v", "-q", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = lines(&mut sub.0);
    let mut run =
        Killer(smgeo().args(["run", "--config"]).arg(d.join("live.toml")).stdout(Stdio::null()).spawn().unwrap());
    assert!(
        wait_line(&rx, 120, |l| l.starts_with("smgeo/sig/status") && l.contains(r#""source":"playing""#)).is_some(),
        "status with a playing source"
    );
    let prompt = r#"{"id":"s1","x":160,"y":90,"mode":"once"}"#;
    let st = Command::new("mosquitto_pub")
        .args(["-p", &port.to_string(), "-t", "smgeo/sig/prompts", "-q", "1", "-m", prompt])
        .status()
        .unwrap();
    assert!(st.success());
    let target = wait_line(&rx, 60, |l| l.starts_with("smgeo/sig/targets")).expect("a target for the prompt");
    let v: serde_json::Value = serde_json::from_str(target.split_once(' ').unwrap().1).unwrap();
    assert_eq!(v["properties"]["prompt_id"], "s1");
    assert!(v["properties"].get("telemetry").is_none(), "no KLV, no telemetry context");
    let pid = run.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let end = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "smgeo run did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code}");
    assert!(
        wait_line(&rx, 10, |l| l.starts_with("smgeo/sig/status") && l.contains(r#""state":"offline""#)).is_some(),
        "offline status after SIGTERM"
    );
}
