//! Plugin helpers: the components `host/build.rs` built (`OUT_DIR/<name>.wasm`: the api-key
//! example and the spin, trap, grow and set-header test plugins), a temporary `--plugin-dir`
//! holding copies of them, SHA-256 pins, and the plugin counters scraped from `/metrics`.

use std::path::{Path, PathBuf};

use tokio::net::TcpStream;

use super::Wasmgress;
use super::client::{Conn, Req};

/// Where `host/build.rs` put the non-embedded plugin components.
const BUILT: &str = env!("OUT_DIR");

/// The bytes of the component `host/build.rs` built for plugin `name`.
pub fn wasm(name: &str) -> Vec<u8> {
    let path = Path::new(BUILT).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "read the plugin component {} (built by host/build.rs): {e}",
            path.display()
        )
    })
}

/// Lower-case hex SHA-256 of `bytes`, as `wasmgress.io/plugin.<name>.sha256` takes it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `component` with a custom section appended: a different file (another SHA-256) holding the
/// same plugin, for tests that need to replace a plugin file with other bytes.
pub fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut contents = Vec::new();
    leb128(name.len(), &mut contents);
    contents.extend_from_slice(name.as_bytes());
    contents.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(contents.len(), &mut out);
    out.extend_from_slice(&contents);
    out
}

/// A temporary folder handed to `wasmgress run|validate --plugin-dir`.
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    /// A folder holding `<name>.wasm` for each of `names` (see [`wasm`]).
    pub fn with(names: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wasmgress-e2e-plugins-")
            .tempdir()
            .expect("create a temporary plugin folder");
        let me = Self { dir };
        for name in names {
            me.write(&format!("{name}.wasm"), &wasm(name));
        }
        me
    }

    pub fn path(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 temp path")
    }

    pub fn file(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `["--plugin-dir", DIR]`.
    pub fn args(&self) -> [&str; 2] {
        ["--plugin-dir", self.path()]
    }

    /// Writes `bytes` at `file`, atomically: beside it under a name that is not `*.wasm`, then
    /// renamed over it, so the watcher never loads a half-written component.
    pub fn write(&self, file: &str, bytes: &[u8]) {
        let path = self.file(file);
        let tmp = self.file(&format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("rename {} into place: {e}", path.display()));
    }
}

/// One scrape of `/metrics` on the admin listener.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub text: String,
}

impl Metrics {
    /// `GET /metrics` on `gw`'s admin listener; panics unless it answers 200.
    pub async fn scrape(gw: &Wasmgress) -> Self {
        let tcp = TcpStream::connect(gw.admin)
            .await
            .unwrap_or_else(|e| panic!("connect to the admin listener {}: {e}", gw.admin));
        let mut conn = Conn::h1(tcp)
            .await
            .unwrap_or_else(|e| panic!("HTTP/1.1 handshake with {}: {e}", gw.admin));
        let r = conn
            .send(&Req::get("localhost", "/metrics"))
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(r.status, 200, "GET /metrics: {}", r.summary());
        Self { text: r.text() }
    }

    /// The value of sample `name{plugin="PLUGIN"}`, if exposed.
    pub fn plugin(&self, name: &str, plugin: &str) -> Option<u64> {
        let want = format!("{name}{{plugin=\"{plugin}\"}}");
        self.text.lines().find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == want).then(|| value.parse::<f64>().ok().map(|v| v as u64))?
        })
    }

    /// Every `name{plugin="..."}` sample as (plugin, value), sorted by plugin.
    pub fn per_plugin(&self, name: &str) -> Vec<(String, u64)> {
        let start = format!("{name}{{plugin=\"");
        let mut all: Vec<(String, u64)> = self
            .text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&start)?;
                let (plugin, rest) = rest.split_once("\"}")?;
                let value = rest.trim().parse::<f64>().ok()?;
                Some((plugin.to_owned(), value as u64))
            })
            .collect();
        all.sort();
        all
    }
}
