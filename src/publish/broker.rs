//! An in-process MQTT 3.1.1 broker (`rumqttd`) for `smgeo demo` and local trials, so the
//! main job needs no broker installed. Production deployments use a real broker
//! (mosquitto, EMQX, HiveMQ: see `deploy/`). Listens on loopback; port 0 picks a free one.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("finding a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("broker config: {0}")]
    Config(String),
    #[error("the in-process broker did not accept connections on {addr} within {secs} s")]
    NotListening { addr: SocketAddr, secs: u64 },
}

/// A running in-process broker. It lives as long as the process (rumqttd has no stop).
#[derive(Debug, Clone, Copy)]
pub struct InProcessBroker {
    pub addr: SocketAddr,
}

fn free_port() -> Result<u16, BrokerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(BrokerError::Port)?;
    Ok(l.local_addr().map_err(BrokerError::Port)?.port())
}

/// Start a broker on `127.0.0.1:port` (0 = a free port) and wait until it accepts TCP.
pub fn start(port: u16) -> Result<InProcessBroker, BrokerError> {
    let port = if port == 0 { free_port()? } else { port };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let text = format!(
        r#"
        id = 0
        [router]
        max_connections = 256
        max_outgoing_packet_count = 256
        max_segment_size = 16777216
        max_segment_count = 4
        [v4.1]
        name = "smgeo-demo"
        listen = "{addr}"
        next_connection_delay_ms = 1
        [v4.1.connections]
        connection_timeout_ms = 60000
        max_payload_size = 1048576
        max_inflight_count = 256
        dynamic_filters = true
        "#
    );
    let config: rumqttd::Config = toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "in-process MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Port)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            tracing::info!(%addr, "in-process MQTT broker listening");
            return Ok(InProcessBroker { addr });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BrokerError::NotListening { addr, secs: 10 })
}
