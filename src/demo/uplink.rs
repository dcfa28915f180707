//! A home hub's internet connection, for the hub that goes offline: a TCP relay between the
//! hub's forwarder and the broker that can be cut and restored.
//!
//! Cutting it closes every relayed connection at once (as a dead router would, without an MQTT
//! DISCONNECT, so the broker publishes the hub's last will) and refuses new ones until it is
//! restored. The forwarder sees ordinary connection errors, backs off and retries; its
//! readings stay in its durable queue until a connection is back.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The relay's switch.
#[derive(Debug)]
pub struct Uplink {
    /// Where the hub connects instead of the broker.
    pub addr: SocketAddr,
    online: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Uplink {
    /// Relays loopback connections to `upstream` until `shutdown`; starts online.
    pub async fn start(upstream: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen for the hub's uplink")?;
        let addr = listener.local_addr()?;
        let (online, rx) = watch::channel(true);
        let task = tokio::spawn(relay(listener, upstream, rx, shutdown));
        Ok(Uplink { addr, online, task })
    }

    /// Cuts (`false`) or restores (`true`) the connection.
    pub fn set_online(&self, up: bool) {
        self.online.send_replace(up);
    }

    /// Whether it is up.
    pub fn is_online(&self) -> bool {
        *self.online.borrow()
    }

    /// Waits for the relay to end (after the shutdown token).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the uplink relay failed");
        }
    }
}

async fn relay(
    listener: TcpListener,
    upstream: SocketAddr,
    online: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        while connections.try_join_next().is_some() {}
        let Ok((inbound, _)) = accepted else { continue };
        if !*online.borrow() {
            drop(inbound);
            continue;
        }
        let mut online = online.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let Ok(outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = cut(&mut online) => {}
                _ = pipe(inbound, outbound) => {}
            }
        });
    }
    connections.shutdown().await;
}

async fn cut(online: &mut watch::Receiver<bool>) {
    let _ = online.wait_for(|up| !*up).await;
}

async fn pipe(mut a: TcpStream, mut b: TcpStream) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(&mut a, &mut b).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn relays_until_cut_refuses_while_down_and_relays_again_when_restored() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let upstream = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = echo.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let shutdown = CancellationToken::new();
        let link = Uplink::start(upstream, shutdown.clone())
            .await
            .expect("start");
        let mut c = TcpStream::connect(link.addr).await.expect("connect");
        c.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");

        link.set_online(false);
        // The open connection is closed ...
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // ... and a new one is refused (accepted, then closed at once).
        let mut d = TcpStream::connect(link.addr).await.expect("connect");
        let _ = d.write_all(b"ping").await;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), d.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);

        link.set_online(true);
        let mut e = TcpStream::connect(link.addr).await.expect("connect");
        e.write_all(b"pong").await.expect("write");
        e.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"pong");
        shutdown.cancel();
        link.join().await;
    }
}
