//! The demo's mail catcher: a minimal SMTP server on loopback that keeps every message it is
//! given as an `.eml` file in the data directory instead of sending it anywhere.
//!
//! The notifier's real email channel (lettre, SMTP without TLS to 127.0.0.1) delivers to it,
//! so the demo exercises the same dispatch path as production: outbox row → dispatcher →
//! SMTP → 250. It speaks just enough SMTP for that (EHLO/HELO, MAIL, RCPT, DATA with dot
//! unstuffing, RSET, NOOP, QUIT); anything else gets 502. Messages over [`MAX_MESSAGE`] are
//! refused with 552, command lines over [`MAX_LINE`] with 500.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Largest message kept.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Longest command line.
pub const MAX_LINE: usize = 1000;
/// Most SMTP connections at once.
const MAX_CONNECTIONS: usize = 16;

/// A message caught, for the progress display.
#[derive(Clone, Debug)]
pub struct Caught {
    /// The file it was written to.
    pub file: PathBuf,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// The Subject header, if any.
    pub subject: String,
}

/// A running catcher.
#[derive(Debug)]
pub struct Mailbox {
    /// Its SMTP port on 127.0.0.1.
    pub port: u16,
    /// Messages kept so far.
    pub caught: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Mailbox {
    /// Listens on a free loopback port, writing messages under `dir` (created), telling
    /// `notices` about each (dropped when it is full), until `shutdown`.
    pub async fn start(
        dir: &Path,
        notices: mpsc::Sender<Caught>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Mailbox> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen for the demo mailbox")?;
        let port = listener.local_addr()?.port();
        let caught = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            caught: caught.clone(),
            notices,
        });
        let task = tokio::spawn(serve(listener, shared, shutdown));
        Ok(Mailbox { port, caught, task })
    }

    /// Waits for the server and its connections to end (after the shutdown token).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the demo mailbox task failed");
        }
    }
}

struct Shared {
    dir: PathBuf,
    caught: Arc<AtomicU64>,
    notices: mpsc::Sender<Caught>,
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        r = session(stream, &shared) => if let Err(e) = r {
                            tracing::debug!(error = %e, "demo mailbox connection ended");
                        },
                    }
                    drop(permit);
                });
            }
            Err(e) => tracing::warn!(error = %e, "demo mailbox accept failed"),
        }
    }
    connections.shutdown().await;
}

/// Reads one line (without CRLF) of at most `max` bytes; `None` at end of stream.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    max: usize,
) -> std::io::Result<Option<Result<String, ()>>> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(max as u64 + 2)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        // Too long: skip the rest of the line.
        let mut rest = Vec::new();
        r.read_until(b'\n', &mut rest).await?;
        return Ok(Some(Err(())));
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(Ok(String::from_utf8_lossy(&buf).into_owned())))
}

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write
        .write_all(b"220 rpm-demo mailbox ESMTP (messages are kept, never sent)\r\n")
        .await?;
    let mut to: Vec<String> = Vec::new();
    let mut from_seen = false;
    loop {
        let Some(line) = read_line(&mut read, MAX_LINE).await? else {
            return Ok(());
        };
        let Ok(line) = line else {
            write.write_all(b"500 line too long\r\n").await?;
            continue;
        };
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-rpm-demo\r\n250-8BITMIME\r\n250 SIZE 1048576\r\n",
            "HELO" => b"250 rpm-demo\r\n",
            "MAIL" => {
                from_seen = true;
                to.clear();
                b"250 ok\r\n"
            }
            "RCPT" if from_seen => {
                let addr = line
                    .split_once(':')
                    .map(|(_, a)| a.trim().trim_start_matches('<').trim_end_matches('>'))
                    .unwrap_or("")
                    .to_owned();
                to.push(addr);
                b"250 ok\r\n"
            }
            "DATA" if !to.is_empty() => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let reply = match read_data(&mut read).await? {
                    Some(body) => match keep(shared, &to, &body) {
                        Ok(()) => &b"250 kept\r\n"[..],
                        Err(e) => {
                            tracing::warn!(error = %e, "demo mailbox cannot write a message");
                            &b"451 cannot keep the message\r\n"[..]
                        }
                    },
                    None => &b"552 message too large\r\n"[..],
                };
                from_seen = false;
                to.clear();
                reply
            }
            "RCPT" | "DATA" => b"503 bad sequence of commands\r\n",
            "RSET" => {
                from_seen = false;
                to.clear();
                b"250 ok\r\n"
            }
            "NOOP" => b"250 ok\r\n",
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// The message up to the lone `.`, dot-unstuffed; `None` if it was too large (read to the
/// end anyway, so the session can go on).
async fn read_data<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Option<String>> {
    let mut body = String::new();
    let mut too_large = false;
    loop {
        let Some(line) = read_line(r, MAX_MESSAGE).await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        let Ok(line) = line else {
            too_large = true;
            continue;
        };
        if line == "." {
            break;
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        if body.len() + line.len() + 2 > MAX_MESSAGE {
            too_large = true;
        } else if !too_large {
            body.push_str(line);
            body.push_str("\r\n");
        }
    }
    Ok((!too_large).then_some(body))
}

fn keep(shared: &Shared, to: &[String], body: &str) -> std::io::Result<()> {
    let n = shared.caught.load(Ordering::Relaxed) + 1;
    let file = shared.dir.join(format!("{n:05}.eml"));
    let mut text = String::with_capacity(body.len() + 64);
    for t in to {
        text.push_str("Delivered-To: ");
        text.push_str(t);
        text.push_str("\r\n");
    }
    text.push_str(body);
    std::fs::write(&file, text)?;
    shared.caught.store(n, Ordering::Relaxed);
    let subject = body
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("(no subject)")
        .to_owned();
    let _ = shared.notices.try_send(Caught {
        file,
        to: to.to_vec(),
        subject,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn talk(
        w: &mut tokio::net::tcp::OwnedWriteHalf,
        r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        line: &str,
    ) -> String {
        w.write_all(line.as_bytes()).await.expect("write");
        let mut reply = String::new();
        loop {
            let l = read_line(r, 2000)
                .await
                .expect("read")
                .expect("open")
                .expect("short");
            reply.push_str(&l);
            reply.push('\n');
            if l.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    #[tokio::test]
    async fn a_message_is_kept_dot_unstuffed_with_its_recipients() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let mb = Mailbox::start(dir.path(), tx, shutdown.clone())
            .await
            .expect("start");
        let stream = TcpStream::connect(("127.0.0.1", mb.port))
            .await
            .expect("connect");
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let hello = read_line(&mut r, 2000).await.expect("read").expect("open");
        assert!(hello.expect("short").starts_with("220"));
        assert!(talk(&mut w, &mut r, "EHLO t\r\n").await.starts_with("250"));
        assert!(talk(&mut w, &mut r, "DATA\r\n").await.starts_with("503"));
        assert!(
            talk(&mut w, &mut r, "MAIL FROM:<a@x>\r\n")
                .await
                .starts_with("250")
        );
        assert!(
            talk(&mut w, &mut r, "RCPT TO:<nurse@example.org>\r\n")
                .await
                .starts_with("250")
        );
        assert!(talk(&mut w, &mut r, "DATA\r\n").await.starts_with("354"));
        let reply = talk(
            &mut w,
            &mut r,
            "Subject: SpO2 low\r\n\r\n..leading dot\r\nbody\r\n.\r\n",
        )
        .await;
        assert!(reply.starts_with("250"), "{reply}");
        assert!(talk(&mut w, &mut r, "QUIT\r\n").await.starts_with("221"));
        let caught = rx.recv().await.expect("notice");
        assert_eq!(caught.subject, "SpO2 low");
        assert_eq!(caught.to, ["nurse@example.org"]);
        let text = std::fs::read_to_string(&caught.file).expect("file");
        assert!(
            text.starts_with("Delivered-To: nurse@example.org\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\n.leading dot\r\nbody\r\n"), "{text}");
        assert_eq!(mb.caught.load(Ordering::Relaxed), 1);
        shutdown.cancel();
        mb.join().await;
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_and_the_session_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let mb = Mailbox::start(dir.path(), tx, shutdown.clone())
            .await
            .expect("start");
        let stream = TcpStream::connect(("127.0.0.1", mb.port))
            .await
            .expect("connect");
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        read_line(&mut r, 2000).await.expect("read");
        talk(&mut w, &mut r, "HELO t\r\n").await;
        talk(&mut w, &mut r, "MAIL FROM:<a@x>\r\n").await;
        talk(&mut w, &mut r, "RCPT TO:<b@x>\r\n").await;
        talk(&mut w, &mut r, "DATA\r\n").await;
        let line = "x".repeat(999);
        let mut big = String::new();
        while big.len() <= MAX_MESSAGE {
            big.push_str(&line);
            big.push_str("\r\n");
        }
        big.push_str(".\r\n");
        let reply = talk(&mut w, &mut r, &big).await;
        assert!(reply.starts_with("552"), "{reply}");
        assert!(talk(&mut w, &mut r, "NOOP\r\n").await.starts_with("250"));
        assert_eq!(mb.caught.load(Ordering::Relaxed), 0);
        shutdown.cancel();
        mb.join().await;
    }
}
