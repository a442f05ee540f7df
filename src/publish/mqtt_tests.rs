//! Publisher tests against a real mosquitto (see `testutil`).

use std::collections::HashSet;
use std::time::Duration;

use super::message::*;
use super::mqtt::{Publisher, PublisherConfig, PublisherHandle};
use super::schema;
use super::spool::SpoolConfig;
use super::testutil::*;

const T: Duration = Duration::from_secs(10);

fn config(port: u16, stream: &str) -> PublisherConfig {
    let mut c = PublisherConfig::new("127.0.0.1", port, stream);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(200);
    c.keep_alive = Duration::from_secs(2);
    c
}

/// Poll `cond` every 10 ms for at most `limit`.
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = tokio::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn target_id(m: &Msg) -> String {
    m.json()["properties"]["id"].as_str().expect("id").to_string()
}

async fn connected(h: &PublisherHandle) {
    wait_for(T, "publisher connected", || h.is_connected()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_targets_arrive_once_in_order_and_schema_valid() {
    let broker = Broker::start();
    let cfg = config(broker.port, "cam1");
    let mut sub = Subscriber::connect(broker.port, "sub-a", &cfg.topics().unwrap().targets(), true).await;
    let h = Publisher::start(cfg).unwrap();
    let sent: Vec<Target> = (0..200).map(|i| sample_target("cam1", i)).collect();
    for t in &sent {
        h.publish_target(t).unwrap();
    }
    let mut n = 0;
    let got = sub
        .until(T, |_| {
            n += 1;
            n == 200
        })
        .await;
    assert_eq!(got.len(), 200, "received {} of 200", got.len());
    let val = validator(schema::TARGET);
    for (m, t) in got.iter().zip(&sent) {
        assert_valid(&val, &m.json());
        assert_eq!(target_id(m), t.id(), "order");
        assert_eq!(m.payload, t.to_json().unwrap(), "payload bytes as serialised");
        serde_json::from_slice::<Target>(&m.payload).expect("parses back as a Target");
    }
    // Exactly once: the next message after the 200 is a sentinel, not a duplicate.
    let sentinel = sample_target("cam1", 999);
    h.publish_target(&sentinel).unwrap();
    let next = sub.next(T).await.expect("sentinel");
    assert_eq!(target_id(&next), sentinel.id());
    wait_for(T, "all acked", || h.counters().acked == 201).await;
    let c = h.counters();
    assert_eq!((c.published, c.pending, c.dropped, c.reconnects), (201, 0, 0, 0), "{c:?}");
    let report = h.shutdown(Duration::from_secs(2)).await.unwrap();
    assert_eq!(report.remaining, 0);
    assert!(report.offline_published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_and_keeps_order() {
    let persist = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_on(free_port(), Some(persist.path()));
    let mut cfg = config(broker.port, "cam2");
    cfg.spool = SpoolConfig { dir: Some(spool_dir.path().to_path_buf()), mem_capacity: 16, ..SpoolConfig::default() };
    cfg.max_inflight = 8;
    let topics = cfg.topics().unwrap();
    // A persistent session: the broker keeps the subscription and queued messages across its restart.
    let mut sub = Subscriber::connect(broker.port, "sub-b", &topics.targets(), false).await;
    let h = Publisher::start(cfg).unwrap();
    connected(&h).await;
    let sent: Vec<Target> = (0..200).map(|i| sample_target("cam2", i)).collect();
    for t in &sent[..100] {
        h.publish_target(t).unwrap();
    }
    let mut first = sub.until(T, |_| true).await; // at least one delivered before the kill
    assert_eq!(first.len(), 1);
    broker.stop();
    wait_for(T, "publisher noticed the outage", || !h.is_connected()).await;
    for t in &sent[100..] {
        h.publish_target(t).unwrap();
    }
    let c = h.counters();
    assert!(c.pending >= 100 && c.spooled > 0, "targets wait in the spool while the broker is down: {c:?}");
    broker.restart();

    let want: HashSet<String> = sent.iter().map(|t| t.id().to_string()).collect();
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for m in first.drain(..) {
        let id = target_id(&m);
        if seen.insert(id.clone()) {
            order.push(id);
        }
    }
    let more = sub
        .until(Duration::from_secs(20), |m| {
            let id = target_id(m);
            if seen.insert(id.clone()) {
                order.push(id);
            }
            seen.len() == want.len()
        })
        .await;
    assert_eq!(seen, want, "id sets match after {} more messages", more.len());
    let expect: Vec<String> = sent.iter().map(|t| t.id().to_string()).collect();
    assert_eq!(order, expect, "first occurrences are in publish order");
    wait_for(T, "spool drained", || h.counters().pending == 0).await;
    let c = h.counters();
    assert!(c.reconnects >= 1, "{c:?}");
    assert!(
        std::fs::read_dir(spool_dir.path()).unwrap().all(|e| e.unwrap().path().extension().is_none_or(|x| x != "seg")),
        "delivered segments removed"
    );
    // Status was re-announced after the reconnect.
    let mut st = Subscriber::connect(broker.port, "sub-b-status", &topics.status(), true).await;
    let m = st.next(T).await.expect("retained status");
    assert!(m.retain);
    let v = m.json();
    assert_eq!(v["state"], "online");
    assert!(v["broker_reconnects"].as_u64().unwrap() >= 1, "{v}");
    h.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_online_then_last_will_offline_after_abrupt_disconnect() {
    let broker = Broker::start();
    let cfg = config(broker.port, "cam3");
    let topics = cfg.topics().unwrap();
    let h = Publisher::start(cfg).unwrap();
    connected(&h).await;
    let sv = validator(schema::STATUS);
    // A subscriber arriving later still gets the retained `online`.
    let mut st = Subscriber::connect(broker.port, "sub-c", &topics.status(), true).await;
    let m = st.next(T).await.expect("retained status");
    assert!(m.retain);
    assert_valid(&sv, &m.json());
    assert_eq!(m.json()["state"], "online");
    h.abort(); // no DISCONNECT: the broker must publish the Last Will
    let will = st.next(T).await.expect("last will");
    assert_valid(&sv, &will.json());
    assert_eq!(will.json()["state"], "offline");
    let mut late = Subscriber::connect(broker.port, "sub-c2", &topics.status(), true).await;
    let m = late.next(T).await.expect("retained will");
    assert!(m.retain);
    assert_eq!(m.json()["state"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_and_publishes_offline() {
    let broker = Broker::start();
    let cfg = config(broker.port, "cam5");
    let topics = cfg.topics().unwrap();
    let mut sub = Subscriber::connect(broker.port, "sub-e", &topics.status(), true).await;
    let h = Publisher::start(cfg).unwrap();
    let online = sub.next(T).await.expect("online");
    assert_eq!(online.json()["state"], "online");
    h.update_status(PipelineStatus { fps: 25.0, source: SourceState::Playing, ..Default::default() });
    let upd = sub.next(T).await.expect("updated status");
    assert_eq!((upd.json()["fps"].as_f64(), upd.json()["source"].as_str()), (Some(25.0), Some("playing")));
    for i in 0..50 {
        h.publish_target(&sample_target("cam5", i)).unwrap();
    }
    let report = h.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.remaining, 0);
    assert!(report.offline_published);
    let off = sub.next(T).await.expect("offline");
    assert_eq!(off.json()["state"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_prompts_get_errors_on_status_and_service_continues() {
    let broker = Broker::start();
    let cfg = config(broker.port, "cam4");
    let topics = cfg.topics().unwrap();
    let mut st = Subscriber::connect(broker.port, "sub-d", &topics.status(), true).await;
    let mut tg = Subscriber::connect(broker.port, "sub-d2", &topics.targets(), true).await;
    let mut h = Publisher::start(cfg).unwrap();
    let mut prompts = h.take_prompts().unwrap();
    st.next(T).await.expect("online status"); // also proves the prompt subscription was sent first
    let bad: [(&str, Option<&str>); 5] = [
        ("{not json", None),
        (r#"{"x":1,"y":2,"mode":"once"}"#, None),
        (r#"{"id":"p-x","x":"ten","y":2,"mode":"once"}"#, Some("p-x")),
        (r#"{"id":"p-m","x":1,"y":2,"mode":"sometimes"}"#, Some("p-m")),
        (r#"{"id":"p-y","x":1,"mode":"track"}"#, Some("p-y")),
    ];
    let ev = validator(schema::ERROR);
    for (payload, id) in bad {
        st.client.publish(topics.prompts(), rumqttc::QoS::AtLeastOnce, false, payload).await.unwrap();
        let m = st.next(T).await.unwrap_or_else(|| panic!("no error for {payload}"));
        let v = m.json();
        assert!(!m.retain, "errors must not replace the retained status");
        assert_valid(&ev, &v);
        assert_eq!(v["prompt_id"].as_str(), id, "{v}");
        assert!(!v["reason"].as_str().unwrap().is_empty());
    }
    let good = r#"{"id":"p-ok","x":320.5,"y":200,"pts_ns":123,"mode":"track"}"#;
    st.client.publish(topics.prompts(), rumqttc::QoS::AtLeastOnce, false, good).await.unwrap();
    let p = tokio::time::timeout(T, prompts.recv()).await.unwrap().unwrap();
    assert_eq!(p, Prompt { id: "p-ok".into(), x: 320.5, y: 200.0, pts_ns: Some(123), mode: PromptMode::Track });
    let t = sample_target("cam4", 1);
    h.publish_target(&t).unwrap();
    let m = tg.next(T).await.expect("target after bad prompts");
    assert_eq!(target_id(&m), t.id());
    let c = h.counters();
    assert_eq!((c.bad_prompts, c.prompts), (5, 1));
    h.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_queued_while_broker_is_down_survive_a_process_restart() {
    let spool_dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens here yet
    let mut cfg = config(port, "cam6");
    cfg.spool = SpoolConfig { dir: Some(spool_dir.path().to_path_buf()), mem_capacity: 8, ..SpoolConfig::default() };
    cfg.max_inflight = 4;
    let sent: Vec<Target> = (0..30).map(|i| sample_target("cam6", i)).collect();
    let h = Publisher::start(cfg.clone()).unwrap();
    for t in &sent {
        h.publish_target(t).unwrap();
    }
    let report = h.shutdown(Duration::from_millis(300)).await.unwrap();
    assert_eq!(report.remaining, 30);
    assert!(!report.offline_published);

    let broker = Broker::start_on(port, None);
    let mut sub = Subscriber::connect(port, "sub-f", &cfg.topics().unwrap().targets(), true).await;
    let h = Publisher::start(cfg).unwrap();
    let mut n = 0;
    let got = sub
        .until(T, |_| {
            n += 1;
            n == 30
        })
        .await;
    let ids: Vec<String> = got.iter().map(target_id).collect();
    let want: Vec<String> = sent.iter().map(|t| t.id().to_string()).collect();
    assert_eq!(ids, want, "replayed from disk in order after the restart");
    let report = h.shutdown(Duration::from_secs(2)).await.unwrap();
    assert_eq!(report.remaining, 0);
    drop(broker);
}
