//! The binary under test: `wasmgress run` on ephemeral ports, its stderr captured, killed on
//! drop. When a test panics, the captured stderr is printed so the failure shows what the
//! binary said.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::certs;
use super::client::{Conn, Req, Resp};
use super::manifests::Manifests;

/// The path of the binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_wasmgress");

/// Upper bound for the binary to bind its listeners and compile its first configuration.
const START_LIMIT: Duration = Duration::from_secs(90);
/// Upper bound for a manifest edit to be observed (the contract says 1 s; this only bounds waiting).
pub const RELOAD_LIMIT: Duration = Duration::from_secs(10);

/// A running `wasmgress run`.
pub struct Wasmgress {
    child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// Every listener the process announced, by name.
    pub listeners: HashMap<String, SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Drop for Wasmgress {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!("---- wasmgress stderr (last {} lines) ----", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("---- end of wasmgress stderr ----");
        }
    }
}

impl Wasmgress {
    /// Starts `wasmgress run --manifests DIR` on 127.0.0.1:0 for all three listeners, plus
    /// `extra` arguments, and waits until `/readyz` answers 200.
    pub async fn start(manifests: &Manifests, extra: &[&str]) -> Self {
        let dir = manifests
            .path()
            .to_str()
            .expect("utf-8 temp path")
            .to_owned();
        let mut args = vec!["run", "--manifests", &dir];
        args.extend_from_slice(extra);
        Self::run(&args).await
    }

    /// Starts `wasmgress ARGS` (a `run` command line without listener addresses) on
    /// 127.0.0.1:0 for all three listeners and waits until `/readyz` answers 200.
    pub async fn run(args: &[&str]) -> Self {
        Self::launch(args).await.ready().await
    }

    /// Waits until `/readyz` on [`Wasmgress::admin`] answers 200.
    pub async fn ready(mut self) -> Self {
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        self.wait_ready(deadline).await;
        self
    }

    /// Like [`Wasmgress::run`], without waiting for readiness: returns once the three
    /// listeners are announced.
    pub async fn launch(args: &[&str]) -> Self {
        let mut args = args.to_vec();
        args.extend_from_slice(&[
            "--http-addr",
            "127.0.0.1:0",
            "--https-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ]);
        let mut gw = Self::spawn(&args, &["http", "https", "admin"]).await;
        gw.http = gw.listeners["http"];
        gw.https = gw.listeners["https"];
        gw.admin = gw.listeners["admin"];
        gw
    }

    /// Starts `wasmgress ARGS` and waits until it has logged a `listening` line for each of
    /// `listeners`; their addresses are in [`Wasmgress::listeners`].
    pub async fn spawn(args: &[&str], listeners: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN} {args:?}: {e}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, SocketAddr)>();
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(found) = listener_line(&line) {
                    let _ = tx.send(found);
                }
                let mut log = sink.lock().expect("stderr buffer lock");
                log.push_str(&line);
                log.push('\n');
            }
        });

        let stdout = Arc::new(Mutex::new(String::new()));
        let out_pipe = child.stdout.take().expect("piped stdout");
        let out_sink = stdout.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = out_sink.lock().expect("stdout buffer lock");
                log.push_str(&line);
                log.push('\n');
            }
        });

        let mut gw = Self {
            child,
            stdout,
            http: unspecified(),
            https: unspecified(),
            admin: unspecified(),
            listeners: HashMap::new(),
            stderr,
        };
        let mut found: HashMap<String, SocketAddr> = HashMap::new();
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        while !listeners.iter().all(|k| found.contains_key(*k)) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((name, addr))) => {
                    found.insert(name, addr);
                }
                Ok(None) => {
                    let status = gw.child.wait().await;
                    panic!(
                        "wasmgress exited ({status:?}) before logging its `listening` lines for \
                         {listeners:?}; found {found:?}\n{}",
                        gw.stderr()
                    );
                }
                Err(_) => panic!(
                    "wasmgress did not log `listening listener=\"...\" addr=...` for \
                     {listeners:?} within {START_LIMIT:?}; found {found:?}\n{}",
                    gw.stderr()
                ),
            }
        }
        gw.listeners = found;
        gw
    }

    async fn wait_ready(&mut self, deadline: tokio::time::Instant) {
        let mut last = String::from("no answer yet");
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wasmgress exited ({status}) before /readyz answered 200");
            }
            match self.get_on(self.admin, "localhost", "/readyz").await {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = r.summary(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "/readyz on {} never answered 200 within {START_LIMIT:?}; last: {last}",
            self.admin
        );
    }

    /// Everything the binary wrote on stderr so far.
    /// Everything the binary printed on stdout so far (the access log).
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout buffer lock").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer lock").clone()
    }

    /// Waits until stderr contains `needle` (within [`RELOAD_LIMIT`]); true if it did.
    pub async fn stderr_mentions(&self, needle: &str) -> bool {
        let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Still the same process, not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends signal `sig` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid().expect("the process has not been reaped yet");
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill(2) with the pid of our own child and a valid signal number.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits at most `limit` for the process to exit; its exit status, or `None` if it still runs.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait for the wasmgress process"))
    }

    /// A TLS connection to the TLS listener with `sni` (see [`certs::connect`]).
    pub async fn tls(
        &self,
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        certs::connect(self.https, sni, config).await
    }

    /// A new HTTP/1.1 connection to the plain listener.
    pub async fn h1(&self) -> Conn {
        let tcp = TcpStream::connect(self.http)
            .await
            .unwrap_or_else(|e| panic!("connect to the plain listener {}: {e}", self.http));
        Conn::h1(tcp)
            .await
            .unwrap_or_else(|e| panic!("HTTP/1.1 handshake with {}: {e}", self.http))
    }

    /// A new h2c (HTTP/2 prior knowledge) connection to the plain listener.
    pub async fn h2c(&self) -> Conn {
        let tcp = TcpStream::connect(self.http)
            .await
            .unwrap_or_else(|e| panic!("connect to the plain listener {}: {e}", self.http));
        Conn::h2(tcp)
            .await
            .unwrap_or_else(|e| panic!("h2c handshake with {}: {e}", self.http))
    }

    pub async fn get_on(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Resp, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut conn = Conn::h1(tcp)
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        conn.send(&Req::get(host, path)).await
    }

    /// Sends `req` over a fresh HTTP/1.1 connection to the plain listener.
    pub async fn send(&self, req: &Req) -> Resp {
        let mut conn = self.h1().await;
        conn.send(req)
            .await
            .unwrap_or_else(|e| panic!("plain HTTP/1.1 request failed: {e}"))
    }

    /// `GET http://host/path` over a fresh HTTP/1.1 connection to the plain listener.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.send(&Req::get(host, path)).await
    }

    /// Which backend answers `GET host path`, or a description of what answered instead.
    pub async fn backend_for(&self, host: &str, path: &str) -> Result<String, String> {
        let r = self.get(host, path).await;
        r.backend().ok_or_else(|| r.summary())
    }

    /// Checks where each `(host, path_and_query, expected)` goes over plain HTTP/1.1, where
    /// `expected` is a backend name or `"404"` (a 404 whose body starts `no route`), and
    /// reports every wrong one at once.
    pub async fn assert_routes(&self, cases: &[(&str, &str, &str)]) {
        let mut wrong = Vec::new();
        for &(host, path, want) in cases {
            let got = describe(&self.get(host, path).await);
            if got != want {
                wrong.push(format!(
                    "GET http://{host}{path}: expected {want}, got {got}"
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} requests were routed wrongly:\n  {}",
            wrong.len(),
            cases.len(),
            wrong.join("\n  ")
        );
    }

    /// Asks `GET host path` until `ok` holds for the response (within [`RELOAD_LIMIT`]) and
    /// returns it; panics naming `what` and the last response otherwise.
    pub async fn poll_until(
        &self,
        host: &str,
        path: &str,
        what: &str,
        ok: impl Fn(&Resp) -> bool,
    ) -> Resp {
        let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
        loop {
            let r = self.get(host, path).await;
            if ok(&r) {
                return r;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "waited {RELOAD_LIMIT:?} for {what} (GET http://{host}{path}); last response: {}",
                    r.summary()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The backend that answered, `"404"` for the proxy's own `no route` answer, or a summary.
pub fn describe(r: &Resp) -> String {
    match r.backend() {
        Some(b) => b,
        None if r.status == 404 && r.text().starts_with("no route") => "404".to_owned(),
        None => r.summary(),
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Parses `... listening listener="NAME" addr=IP:PORT ...` tolerantly (ANSI colours stripped,
/// quotes around the address allowed).
fn listener_line(line: &str) -> Option<(String, SocketAddr)> {
    let line = strip_ansi(line);
    let rest = &line[line.find("listening listener=\"")? + "listening listener=\"".len()..];
    let name = &rest[..rest.find('"')?];
    let after = &rest[name.len()..];
    let addr = &after[after.find("addr=")? + "addr=".len()..];
    let addr = addr.split_whitespace().next()?.trim_matches('"');
    Some((name.to_owned(), addr.parse().ok()?))
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ ... letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn parses_listener_lines() {
    let line = "2025-01-01T00:00:00.000000Z  INFO wasmgress::proxy: listening listener=\"https\" addr=127.0.0.1:41234";
    assert_eq!(
        listener_line(line),
        Some(("https".to_owned(), "127.0.0.1:41234".parse().unwrap()))
    );
    let coloured = "\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening listener=\"admin\" addr=\"127.0.0.1:9\" extra=1";
    assert_eq!(
        listener_line(coloured),
        Some(("admin".to_owned(), "127.0.0.1:9".parse().unwrap()))
    );
    assert_eq!(listener_line("listening on nothing"), None);
}

/// Runs `wasmgress validate DIR` plus `extra`; returns (exit code, stdout, stderr).
pub async fn validate(manifests: &Manifests, extra: &[&str]) -> (i32, String, String) {
    let dir = manifests
        .path()
        .to_str()
        .expect("utf-8 temp path")
        .to_owned();
    let mut args = vec!["validate", dir.as_str()];
    args.extend_from_slice(extra);
    let run = Command::new(BIN)
        .args(&args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(START_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("`wasmgress {args:?}` did not finish within {START_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("run `wasmgress {args:?}`: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `error:` line of `wasmgress validate` output about Ingress `ns/name` and annotation
/// `key`, or a panic showing every line about that Ingress.
pub fn validate_error<'a>(stdout: &'a str, ns: &str, name: &str, key: &str) -> &'a str {
    let object = format!("Ingress {ns}/{name}:");
    let field = format!("metadata.annotations[{key}]");
    stdout
        .lines()
        .find(|l| l.starts_with("error:") && l.contains(&object) && l.contains(&field))
        .unwrap_or_else(|| {
            panic!(
                "no `error: ... {object} {field}: why` line in `wasmgress validate` output; \
                 its lines about {ns}/{name}:\n{}\nall of stdout:\n{stdout}",
                stdout
                    .lines()
                    .filter(|l| l.contains(&object))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

/// No `error:` line of `validate` output names Ingress `ns/name`.
pub fn assert_no_error_about(stdout: &str, ns: &str, name: &str) {
    let object = format!("Ingress {ns}/{name}:");
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("error:") && l.contains(&object))
        .collect();
    assert!(
        errors.is_empty(),
        "Ingress {ns}/{name} must not be rejected, but validate said:\n{}",
        errors.join("\n")
    );
}
