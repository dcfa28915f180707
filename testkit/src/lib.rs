//! Test support shared by every test in the workspace that needs a real service or a real
//! `rpm` process: a `mosquitto` broker on a free port (that a test can stop, restart or kill),
//! a throwaway PostgreSQL database per test, and `rpm` subcommands run as child processes.
//!
//! It is not a mock library: everything here starts or connects to the real thing.
//!
//! Services that cannot be had are handled by one rule ([`unavailable`]): under `CI=true` the
//! test fails loudly; on a developer's machine it says what is missing and skips.
//!
//! ```no_run
//! # async fn demo() {
//! let Some(broker) = testkit::unavailable(testkit::Mosquitto::start()) else { return };
//! let Some(db) = testkit::unavailable(testkit::PgDatabase::create().await) else { return };
//! println!("mqtt://127.0.0.1:{} and {}", broker.port(), db.url());
//! # }
//! ```

#![deny(missing_docs)]

use std::fmt;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// True when running under CI (`CI=true`), where a missing service is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Unwraps a service; when it could not be had, fails the test under CI and skips (returns
/// `None` after saying why on stderr) elsewhere.
#[track_caller]
pub fn unavailable<T, E: fmt::Display>(service: Result<T, E>) -> Option<T> {
    match service {
        Ok(t) => Some(t),
        Err(e) if in_ci() => panic!("required test service unavailable under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED (not under CI): required test service unavailable: {e}");
            None
        }
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1, and that this process has not handed
/// out before. The kernel may give a just-released port again at once, so two calls made
/// before either port is bound (a broker's own port and the extra listeners of its config)
/// could otherwise get the same one, and the broker fails with "Address already in use".
pub fn free_port() -> io::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..64 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !handed.contains(&port) {
            handed.push(port);
            return Ok(port);
        }
    }
    Err(io::Error::other(
        "no port free that was not handed out before",
    ))
}

/// Polls a test's own MQTT client (a stand-in hub or publisher) until the client is dropped.
/// After an error (a connection refused, reset or timed out while the machine is loaded) it
/// waits a moment and polls again, which connects again, as a hub's client does; a loop that
/// stopped at the first error left every later publish failing with the request channel
/// closed, far from the cause. The error is printed, so a test that fails still shows it.
pub fn drive_mqtt(mut events: rumqttc::v5::EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                Err(e) => {
                    eprintln!("test MQTT client: {e}; connecting again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing listening on port {port}: {e}"),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}

/// Why a service could not be started.
#[derive(Debug)]
pub struct ServiceError(String);

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServiceError {}

fn service_err(what: impl fmt::Display) -> ServiceError {
    ServiceError(what.to_string())
}

/// A private `mosquitto` on a free port, with its own config, persistence and log in a
/// temporary directory. Dropping it kills the broker.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: String,
}

impl Mosquitto {
    /// Starts an anonymous broker (MQTT 3.1.1 and 5) on a free port.
    pub fn start() -> Result<Self, ServiceError> {
        Self::start_with("allow_anonymous true\n")
    }

    /// Starts a broker with `extra` appended to its config (authentication, ACLs, limits).
    /// Paths in `extra` may use `{dir}` for the broker's temporary directory.
    pub fn start_with(extra: &str) -> Result<Self, ServiceError> {
        let dir = tempfile::tempdir().map_err(service_err)?;
        // Started as root, mosquitto drops to its own user; let that user write its log and
        // persistence file here.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))
                .map_err(service_err)?;
        }
        let port = free_port().map_err(service_err)?;
        let mut broker = Mosquitto {
            child: None,
            port,
            dir,
            extra: extra.to_owned(),
        };
        broker.launch()?;
        Ok(broker)
    }

    fn launch(&mut self) -> Result<(), ServiceError> {
        let dir = self.dir.path();
        let config = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {dir}/\n\
             log_dest file {dir}/mosquitto.log\nlog_type all\n{extra}",
            port = self.port,
            dir = dir.display(),
            extra = self.extra.replace("{dir}", &dir.display().to_string()),
        );
        let conf = dir.join("mosquitto.conf");
        fs::write(&conf, config).map_err(service_err)?;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| service_err(format!("cannot run mosquitto ({e}); .ci/run installs it, or `apt-get install mosquitto`")))?;
        self.child = Some(child);
        if let Err(e) = wait_for_port(self.port, Duration::from_secs(10)) {
            let log = fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
            return Err(service_err(format!("mosquitto did not start: {e}\n{log}")));
        }
        Ok(())
    }

    /// The port it listens on (kept across [`Mosquitto::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's temporary directory (config, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Waits until `needle` appears in the log at least `times` times, at most `timeout`.
    pub fn wait_for_log(&self, needle: &str, times: usize, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < times {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{needle:?} not in the broker log {times} time(s)"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the broker with SIGKILL (no clean shutdown, nothing flushed).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker cleanly (SIGTERM: it saves its persistence file) and waits for it.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker cleanly if running and starts it again on the same port with the
    /// same persistence directory.
    pub fn restart(&mut self) -> Result<(), ServiceError> {
        self.terminate();
        self.launch()
    }

    /// Starts the broker again after [`Mosquitto::kill`] or [`Mosquitto::terminate`].
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.launch()
    }

    /// Whether the broker process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mosquitto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return PathBuf::from(p);
    }
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("mosquitto")
}

/// The PostgreSQL server tests use: `RPM_TEST_PG` (a URL to a database the test user may
/// `CREATE DATABASE` from), or the local trust-auth server at 127.0.0.1:5432.
pub fn pg_admin_url() -> String {
    std::env::var("RPM_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database, dropped (forcibly) when this value is dropped.
pub struct PgDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl PgDatabase {
    /// Creates `rpm_test_<random>` on the server named by [`pg_admin_url`].
    pub async fn create() -> Result<Self, ServiceError> {
        use sqlx::Connection;
        let admin_url = pg_admin_url();
        let mut admin = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect(&admin_url),
        )
        .await
        .map_err(|_| service_err(format!("PostgreSQL at {admin_url} did not answer in 10 s")))?
        .map_err(|e| service_err(format!("cannot connect to PostgreSQL at {admin_url}: {e}")))?;
        let name = format!("rpm_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| service_err(format!("cannot create a test database: {e}")))?;
        let _ = admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((server, _db)) => format!("{server}/{name}"),
            None => return Err(service_err("RPM_TEST_PG must end in /DATABASE")),
        };
        Ok(PgDatabase {
            name,
            url,
            admin_url,
        })
    }

    /// The URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a thread of its own works in both.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A private PostgreSQL server (its own `initdb` cluster in a temporary directory, on a free
/// port, trust authentication on loopback) that a test may stop, restart or kill — unlike the
/// machine's shared server, which other tests are using. Run as root, the server runs as the
/// `postgres` user, as PostgreSQL requires.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    running: bool,
}

impl PgServer {
    /// Creates a cluster and starts it (a few seconds).
    pub fn start() -> Result<Self, ServiceError> {
        let bin = pg_bin_dir().ok_or_else(|| service_err("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (scripts/services installs them)"))?;
        let dir = tempfile::tempdir().map_err(service_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
                .map_err(service_err)?;
        }
        let data = dir.path().join("data");
        fs::create_dir(&data).map_err(service_err)?;
        if is_root() {
            run_checked(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:postgres")
                    .arg(dir.path()),
            )?;
        }
        let port = free_port().map_err(service_err)?;
        let server = PgServer {
            dir,
            port,
            bin,
            running: false,
        };
        run_checked(
            server
                .as_postgres(&server.bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        )?;
        let mut server = server;
        server.start_again()?;
        Ok(server)
    }

    fn as_postgres(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Starts the server again after [`PgServer::stop`] (waits until it accepts connections).
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        if self.running {
            return Ok(());
        }
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        run_checked(
            self.as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-o", &opts, "-w", "-t", "60", "start"]),
        )?;
        self.running = true;
        wait_for_port(self.port, Duration::from_secs(30)).map_err(service_err)
    }

    /// Stops the server: `fast` (clean shutdown) or `immediate` (like a crash: recovery runs on
    /// the next start).
    pub fn stop(&mut self, mode: &str) -> Result<(), ServiceError> {
        if !self.running {
            return Ok(());
        }
        let data = self.dir.path().join("data");
        run_checked(
            self.as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", mode, "-w", "stop"]),
        )?;
        self.running = false;
        Ok(())
    }

    /// The URL of database `db` on this server (`postgres` always exists).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn pg_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn run_checked(cmd: &mut Command) -> Result<(), ServiceError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| service_err(format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(service_err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A private `dbus-daemon` on a socket in a temporary directory, with a session-style policy
/// (anyone may own any name): the system bus of tests that mock BlueZ. Point a child
/// process at it with `DBUS_SYSTEM_BUS_ADDRESS=`[`DbusDaemon::address`]. Killed on drop.
pub struct DbusDaemon {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl DbusDaemon {
    /// Starts the daemon and waits for its socket.
    pub fn start() -> Result<DbusDaemon, ServiceError> {
        let dir = tempfile::tempdir().map_err(service_err)?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .map_err(service_err)?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                service_err(format!(
                    "dbus-daemon (Debian package `dbus-daemon`; scripts/services installs it): {e}"
                ))
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(service_err(format!("dbus-daemon exited: {status}")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(service_err(
                    "dbus-daemon did not create its socket within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(DbusDaemon {
            child,
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        })
    }

    /// The bus address (`unix:path=…`).
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A python3 that can import aiosmtpd: `python3` on PATH, else Debian's /usr/bin/python3.
fn python_with_aiosmtpd() -> Result<String, ServiceError> {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python.to_owned());
        }
    }
    Err(service_err(
        "no python3 can import aiosmtpd; scripts/services installs it",
    ))
}

/// A real SMTP server (Python's aiosmtpd with `testkit/smtp_sink.py`) that writes each message
/// it accepts to a file, on a free port (or a given one, to start it late on a port the
/// notifier already uses). Killed on drop.
pub struct SmtpSink {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    python: String,
    secure: Option<SmtpSecure>,
}

/// How a [`SmtpSink::start_secure`] server protects itself (`testkit/smtp_secure.py`).
#[derive(Clone, Debug)]
pub struct SmtpSecure {
    /// PEM certificate chain the server presents (for `localhost`).
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// TLS from the first byte (port 465 style) instead of a required STARTTLS.
    pub implicit_tls: bool,
    /// When set, AUTH with this user and password is required before MAIL FROM.
    pub login: Option<(String, String)>,
}

impl SmtpSink {
    /// Starts on a free port.
    pub fn start() -> Result<Self, ServiceError> {
        Self::start_on(free_port().map_err(service_err)?)
    }

    /// Starts on `port`.
    pub fn start_on(port: u16) -> Result<Self, ServiceError> {
        Self::launch_new(port, None)
    }

    /// Starts a server that requires TLS (STARTTLS or implicit) and, optionally,
    /// authentication, on a free port.
    pub fn start_secure(secure: SmtpSecure) -> Result<Self, ServiceError> {
        Self::launch_new(free_port().map_err(service_err)?, Some(secure))
    }

    fn launch_new(port: u16, secure: Option<SmtpSecure>) -> Result<Self, ServiceError> {
        let python = python_with_aiosmtpd()?;
        let dir = tempfile::tempdir().map_err(service_err)?;
        let mut sink = SmtpSink {
            child: None,
            port,
            dir,
            python,
            secure,
        };
        sink.launch()?;
        Ok(sink)
    }

    fn launch(&mut self) -> Result<(), ServiceError> {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut command = Command::new(&self.python);
        match &self.secure {
            None => {
                command
                    .args(["-m", "aiosmtpd", "-n", "-l"])
                    .arg(format!("127.0.0.1:{}", self.port))
                    .args(["-c", "smtp_sink.Sink"])
                    .arg(self.dir.path());
            }
            Some(s) => {
                command
                    .arg(here.join("smtp_secure.py"))
                    .arg("--port")
                    .arg(self.port.to_string())
                    .arg("--dir")
                    .arg(self.dir.path())
                    .arg("--cert")
                    .arg(&s.cert)
                    .arg("--key")
                    .arg(&s.key)
                    .arg(if s.implicit_tls {
                        "--implicit-tls"
                    } else {
                        "--starttls"
                    });
                if let Some((user, password)) = &s.login {
                    command.args(["--user", user, "--password", password]);
                }
            }
        }
        let child = command
            .env("PYTHONPATH", &here)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| service_err(format!("cannot run {} -m aiosmtpd: {e}", self.python)))?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(15))
            .map_err(|e| service_err(format!("aiosmtpd did not start: {e}")))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL): the mail server is down.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port after [`SmtpSink::stop`].
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.launch()
    }

    /// The messages so far, oldest first: `X-Envelope-From`/`X-Envelope-To` lines, then the
    /// message with quoted-printable soft breaks and `=3D` undone (for searching bodies).
    pub fn messages(&self) -> Vec<String> {
        self.accepted().into_iter().map(|(_, m)| m).collect()
    }

    /// [`SmtpSink::messages`], each with when the server accepted it (nanoseconds since the
    /// Unix epoch on the wall clock, as [`std::time::SystemTime`] reads it), oldest first.
    pub fn accepted(&self) -> Vec<(u128, String)> {
        let mut names: Vec<(u128, PathBuf)> = fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .filter_map(|p| {
                // `smtp_sink.py` names a message `{time_ns}-{uuid}.eml`.
                let stem = p.file_stem()?.to_str()?;
                let ns = stem.split_once('-')?.0.parse().ok()?;
                Some((ns, p))
            })
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|(ns, p)| Some((ns, fs::read_to_string(p).ok()?)))
            .map(|(ns, m)| {
                (
                    ns,
                    m.replace("=\r\n", "")
                        .replace("=\n", "")
                        .replace("=3D", "="),
                )
            })
            .collect()
    }

    /// Waits until at least `n` messages are there, at most `timeout`; the messages so far.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || tokio::time::Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The messages addressed (in the SMTP envelope) to `address`.
    pub fn to(&self, address: &str) -> Vec<String> {
        self.messages()
            .into_iter()
            .filter(|m| addressed_to(m, address))
            .collect()
    }

    /// Waits until a message to `address` is there, at most `timeout`.
    pub async fn wait_for_mail_to(&self, address: &str, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.to(address).into_iter().next() {
                return Some(m);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a message from [`SmtpSink::messages`] was addressed (in the SMTP envelope) to
/// `address`.
pub fn addressed_to(message: &str, address: &str) -> bool {
    message.contains(&format!("X-Envelope-To: {address}\r\n"))
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An `rpm` subcommand running as a child process, its output captured to files so a test
/// can read it while the process runs, kill it with SIGKILL and start it again.
pub struct RpmProcess {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl RpmProcess {
    /// Spawns `bin` (pass `env!("CARGO_BIN_EXE_rpm")`) with `args` and extra environment.
    pub fn spawn(bin: impl AsRef<Path>, args: &[&str], env: &[(&str, &str)]) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(bin.as_ref());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        Ok(RpmProcess {
            child,
            stdout,
            stderr,
            _dir: dir,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }

    /// Waits for exit, at most `timeout`; kills the process if it runs over.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill()?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("rpm did not exit within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Standard output so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Standard error so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until standard error or output contains `needle`, at most `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) || self.stdout().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "rpm exited ({status}) before printing {needle:?}:\n{}",
                    self.stderr()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no {needle:?} within {timeout:?}:\n{}", self.stderr()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the broker logs when an ingest node subscribes to the readings (shared subscription).
pub const INGEST_SUBSCRIPTION: &str = "$share/ingest/rpm/v1/gw/+/readings";

/// Starts `rpm ingest --config CONFIG` and returns once it is connected to `broker` and its
/// shared subscription is in place, so what a test publishes next reaches it.
pub fn spawn_ingest(
    bin: impl AsRef<Path>,
    config: &str,
    broker: &Mosquitto,
    env: &[(&str, &str)],
) -> io::Result<RpmProcess> {
    let before = broker.log().matches(INGEST_SUBSCRIPTION).count();
    let mut ingest = RpmProcess::spawn(bin, &["ingest", "--config", config], env)?;
    ingest.wait_for_output("ingest connected to the broker", Duration::from_secs(30))?;
    broker.wait_for_log(INGEST_SUBSCRIPTION, before + 1, Duration::from_secs(10))?;
    Ok(ingest)
}

impl Drop for RpmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod port_tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200)
            .map(|_| super::free_port().expect("port"))
            .collect();
        let unique: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
    }
}
