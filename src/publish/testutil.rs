//! Test helpers: a real mosquitto broker on a free loopback port (stopped by pid on
//! drop), a subscriber client that reconnects, and sample payloads.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

use super::message::*;

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A mosquitto process in the foreground; killed by pid on drop.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persist: Option<PathBuf>,
}

impl Broker {
    /// A broker on a fresh port without persistence.
    pub fn start() -> Broker {
        Self::start_on(free_port(), None)
    }

    /// A broker on `port`; with `persist`, sessions and retained messages are saved there
    /// on SIGTERM and restored on the next start.
    pub fn start_on(port: u16, persist: Option<&Path>) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Broker { port, child: None, dir, persist: persist.map(Path::to_path_buf) };
        b.restart();
        b
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut text = format!("listener {} 127.0.0.1\nallow_anonymous true\n", self.port);
        match &self.persist {
            Some(p) => text += &format!("persistence true\npersistence_location {}/\n", p.display()),
            None => text += "persistence false\n",
        }
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto (apt install mosquitto)");
        self.child = Some(child);
        self.wait_accepting(Duration::from_secs(10));
    }

    fn wait_accepting(&mut self, limit: Duration) {
        let t0 = Instant::now();
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("mosquitto exited with {status}: {err}");
                }
            }
            assert!(t0.elapsed() < limit, "mosquitto not accepting on {} after {limit:?}", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (mosquitto saves persistence and exits), SIGKILL if it lingers.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    #[allow(dead_code)] // handy when a test fails
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("payload is JSON")
    }
}

/// A subscriber that reconnects (20 ms polling) and re-subscribes when the broker lost its session.
pub struct Subscriber {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
    /// Reconnects on which the broker had lost this client's session (it re-subscribed):
    /// messages published before that SUBACK never reach it, which a test counting
    /// messages across a broker restart should tell apart from a loss.
    pub sessions_lost: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Subscriber {
    /// Connect, subscribe `filter` at QoS 1, and wait (≤ 5 s) for the SUBACK.
    pub async fn connect(port: u16, id: &str, filter: &str, clean: bool) -> Subscriber {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let (c2, filter) = (client.clone(), filter.to_string());
        let sessions_lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lost = sessions_lost.clone();
        let task = tokio::spawn(async move {
            let mut subscribed = false;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) if !ack.session_present => {
                        if subscribed {
                            lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        subscribed = true;
                        let _ = c2.subscribe(&filter, QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let m = Msg { topic: p.topic.clone(), payload: p.payload.to_vec(), retain: p.retain };
                        let _ = tx.send(m);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), sub_rx.recv()).await.expect("SUBACK within 5 s");
        Subscriber { client, rx, task, sessions_lost }
    }

    /// The next message, or `None` after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Msg> {
        tokio::time::timeout(limit, self.rx.recv()).await.ok().flatten()
    }

    /// Messages until `pred` says stop (inclusive) or `limit` passes.
    pub async fn until(&mut self, limit: Duration, mut pred: impl FnMut(&Msg) -> bool) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            let stop = pred(&m);
            out.push(m);
            if stop {
                break;
            }
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plausible target near Munich; `i` varies the position and pts.
pub fn sample_target(stream: &str, i: u64) -> Target {
    let (lon, lat) = (11.56 + i as f64 * 1e-5, 48.18);
    let d = 2e-5;
    let ring = [
        LonLat { lon: lon - d, lat: lat + d },
        LonLat { lon: lon + d, lat: lat + d },
        LonLat { lon: lon + d, lat: lat - d },
        LonLat { lon: lon - d, lat: lat - d },
        LonLat { lon: lon - d, lat: lat + d },
    ];
    let props = TargetProperties {
        schema: String::new(),
        id: new_uuid_v4(),
        prompt_id: "p-1".into(),
        stream: stream.into(),
        pts_ns: 1_000_000_000 + i * 33_366_666,
        utc: utc_now(),
        score: 0.87,
        box_px: [100.0, 120.0, 140.0, 150.0],
        footprint: ring,
        chip: ChipInfo {
            crs: "EPSG:32632".into(),
            geotransform: [690000.0, 0.5, 0.0, 5340000.0, 0.0, -0.5],
            sources: vec!["mosaic.vrt".into()],
        },
        model: ModelInfo { preset: "cvogl".into(), weights_sha256: "ab".repeat(32) },
        latency_ms: 41.5,
        telemetry: i.is_multiple_of(2).then_some(TargetTelemetry {
            frame_center: LonLat { lon: 11.5601, lat: 48.1801 },
            distance_m: 12.5,
            click: Some(LonLat { lon: 11.5603, lat: 48.1802 }),
            click_distance_m: Some(3.1),
            prior_sigma_m: Some(40.0),
        }),
    };
    Target::new(LonLat { lon, lat }, props)
}

/// A compiled validator for one embedded schema, format checks on.
pub fn validator(schema_text: &str) -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(schema_text).expect("schema is JSON");
    jsonschema::draft202012::options().should_validate_formats(true).build(&schema).expect("schema compiles")
}

/// Panic with the validator's messages when `v` does not satisfy `schema`.
pub fn assert_valid(val: &jsonschema::Validator, v: &serde_json::Value) {
    let errs: Vec<String> = val.iter_errors(v).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errs.is_empty(), "{v}\n{errs:#?}");
}
