//! The demo's embedded MQTT broker: rumqttd in this process, MQTT 5 only, on loopback.
//!
//! What the system needs from a broker and what rumqttd 0.20 does with it (read in its
//! source, `router/routing.rs`, and exercised by every demo run):
//!
//! - **MQTT 5, QoS 1, manual acknowledgements**: supported; a PUBACK goes to the gateway once
//!   the router has the message in its commit log.
//! - **Shared subscriptions** (`$share/ingest/rpm/v1/gw/+/readings`): supported (round robin
//!   by default). A shared group starts reading at the log's *end*, so a reading published
//!   before ingest subscribed would never reach it: the demo starts the hubs' playback only
//!   once ingest has subscribed (see `mod.rs`).
//! - **Retained status and config, last will**: supported; the will is published when a
//!   connection drops without a DISCONNECT (the offline hub shows it).
//! - **Persistent sessions** (`clean_start = false`, session expiry): kept in memory only
//!   (rumqttd has no disk persistence), and shared-subscription membership is dropped on
//!   disconnect. Irrelevant in one process that starts and stops with its broker; it is why
//!   production uses Mosquitto or a clustered broker.
//! - **"No matching subscribers"**: rumqttd acknowledges a publish that matches no
//!   subscription with success and drops it, where Mosquitto says 0x10 (and the forwarder
//!   keeps the readings). Same consequence as above: ingest subscribes first.
//!
//! rumqttd has no shutdown: its router and server threads end with the process.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context as _;

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
}

/// Starts rumqttd on `127.0.0.1:port` (a free port when `None`) and waits until it accepts
/// connections.
pub async fn start(port: Option<u16>) -> anyhow::Result<EmbeddedBroker> {
    let port = match port {
        Some(p) => p,
        // rumqttd binds its own socket from an address and does not report the port it got,
        // so the port is found free first (the window between the two binds is tiny, and a
        // lost race fails loudly below).
        None => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("cannot find a free port for the embedded broker")?
            .port(),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let config = config(addr);
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            // Returns only if every server thread ended (a bind failure, for one).
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .context("cannot start the embedded broker thread")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(EmbeddedBroker { addr });
        }
        if thread.is_finished() || tokio::time::Instant::now() > deadline {
            anyhow::bail!("the embedded MQTT broker did not start on {addr} (port taken?)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        // The clients' own cap (mqtt::client_options) is twice the envelope limit.
        max_payload_size: vitals::MAX_PAYLOAD_BYTES * 2 + 1024,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo-v5".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 256,
            // Each subscription filter keeps a commit log of at most this much; a reader that
            // falls further behind loses the oldest segment. The demo moves a few MB at most.
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 8,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::RoundRobin,
        },
        v4: None,
        v5: Some(HashMap::from([("1".to_owned(), server)])),
        ..rumqttd::Config::default()
    }
}
