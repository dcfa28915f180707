//! Real servers for the notifier tests: aiosmtpd as a child process, and an HTTP receiver
//! (hyper on 127.0.0.1:0) standing in for a webhook endpoint and an SMS gateway.

#![allow(dead_code)]

pub mod fixture;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio::sync::Notify;

/// The SMTP server the tests use: aiosmtpd with testkit's sink.
#[allow(unused_imports)] // not every test binary sends email
pub use testkit::SmtpSink;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    status: AtomicU16,
    hang: AtomicBool,
    release: Notify,
    arrived: Notify,
}

/// A real HTTP server on 127.0.0.1:0 that records requests and answers with a status the
/// test sets (or hangs until released).
pub struct HttpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        state.status.store(200, Ordering::SeqCst);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpReceiver { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Requests arrive and are recorded but get no answer until [`HttpReceiver::release`].
    pub fn hang(&self, on: bool) {
        self.state.hang.store(on, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.hang(false);
        self.state.release.notify_waiters();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("receiver lock").clone()
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.received();
            if r.len() >= n || tokio::time::Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    st.received.lock().expect("receiver lock").push(Received {
        path,
        headers,
        body,
    });
    st.arrived.notify_waiters();
    while st.hang.load(Ordering::SeqCst) {
        let released = st.release.notified();
        if !st.hang.load(Ordering::SeqCst) {
            break;
        }
        released.await;
    }
    let status = st.status.load(Ordering::SeqCst);
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    Ok(resp)
}
