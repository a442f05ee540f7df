//! `smgeo run` as a process: two test-pattern streams, a real mosquitto, a prompt per stream answered
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
fn run_serves_two_streams_then_drains_on_sigterm() {
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
[[streams]]
id = "sig2"
source = {{ kind = "test", width = 256, height = 256, fps = 5, live = true }}
fallback_centre = [{lon}, {lat}]
"#
    );
    std::fs::write(d.join("live.toml"), cfg).unwrap();
    let mut sub = Killer(
        Command::new("mosquitto_sub")
            .args(["-p", &port.to_string(), "-t", "smgeo/+/#", "-v", "-q", "1"])
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
    assert!(
        wait_line(&rx, 120, |l| l.starts_with("smgeo/sig2/status") && l.contains(r#""source":"playing""#)).is_some(),
        "second stream playing"
    );
    // One prompt per stream, in one process: each answered on its own topic.
    for (stream, id) in [("sig", "s1"), ("sig2", "s2")] {
        let prompt = format!(r#"{{"id":"{id}","x":100,"y":90,"mode":"once"}}"#);
        let topic = format!("smgeo/{stream}/prompts");
        let st = Command::new("mosquitto_pub")
            .args(["-p", &port.to_string(), "-t", &topic, "-q", "1", "-m", &prompt])
            .status()
            .unwrap();
        assert!(st.success());
        let want = format!("smgeo/{stream}/targets");
        let target = wait_line(&rx, 60, |l| l.starts_with(&want)).expect("a target for the prompt");
        let v: serde_json::Value = serde_json::from_str(target.split_once(' ').unwrap().1).unwrap();
        assert_eq!(v["properties"]["prompt_id"], id);
        assert_eq!(v["properties"]["stream"], stream);
        assert!(v["properties"].get("telemetry").is_none(), "no KLV, no telemetry context");
    }
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
    // Both streams announce offline on their retained status.
    let offline = std::cell::RefCell::new(std::collections::BTreeSet::new());
    wait_line(&rx, 10, |l| {
        if l.contains(r#""state":"offline""#) {
            offline.borrow_mut().insert(l.split('/').nth(1).unwrap_or("").to_string());
        }
        offline.borrow().len() == 2
    });
    assert_eq!(offline.into_inner().into_iter().collect::<Vec<_>>(), ["sig", "sig2"], "offline status after SIGTERM");
}
