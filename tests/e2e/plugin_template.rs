//! A plugin author's path (issue #17), through the real binary and the real toolchain: in an
//! empty folder outside the repository, `wasmgress plugin new hello`, then the project
//! README's commands (`cargo test`, `cargo build --release --target wasm32-wasip2`), then
//! `wasmgress plugin check` on the component, then `wasmgress run --plugin-dir` with an Ingress
//! attaching `hello`: a request through it reaches the backend with the header the template
//! plugin adds. Nothing is skipped: without cargo or the wasm32-wasip2 target the test fails.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use crate::harness::backend::several;
use crate::harness::manifests::NS;
use crate::harness::plugins::{PluginDir, sha256_hex};
use crate::harness::process::{BIN, validate};
use crate::harness::{Ingress, Manifests, Req, Wasmgress, prefix};

/// What the project's README says to build it with, word for word.
const BUILD: &str = "cargo build --release --target wasm32-wasip2";
/// A first build compiles wit-bindgen and the SDK (and may download them).
const CARGO_LIMIT: Duration = Duration::from_secs(900);
/// Loading a component means compiling the built-ins too.
const CHECK_LIMIT: Duration = Duration::from_secs(120);

const PLUGINS: &str = "wasmgress.io/plugins";
const MESSAGE: &str = "wasmgress.io/plugin.hello.message";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the repository")
        .to_path_buf()
}

/// Runs `program args` in `dir` within `limit`; returns its output whatever the status.
async fn run(program: &Path, args: &[&str], dir: &Path, limit: Duration) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let what = format!(
        "`{} {}` in {}",
        program.display(),
        args.join(" "),
        dir.display()
    );
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// `wasmgress ARGS` in `dir`.
async fn wasmgress(args: &[&str], dir: &Path) -> Output {
    run(Path::new(BIN), args, dir, CHECK_LIMIT).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `cargo ARGS` in `project`, as a plugin author's shell runs it: the environment `cargo test`
/// gives this test (the host package's `CARGO_*` variables, its flags) is left out, as
/// host/build.rs does for the built-in plugins; only what locates the toolchain, the registry
/// and the network stays. The target directory is the one persistent exception.
async fn cargo(args: &[&str], project: &Path, target_dir: &Path) -> Output {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .current_dir(project)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = key == "CARGO_HOME"
            || [
                "CARGO_NET_",
                "CARGO_HTTP_",
                "CARGO_REGISTRIES_",
                "CARGO_REGISTRY_",
            ]
            .iter()
            .any(|p| key.starts_with(p));
        let drop = (key.starts_with("CARGO_") && !keep)
            || matches!(
                key,
                "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            );
        if drop {
            cmd.env_remove(key);
        }
    }
    // A persistent target directory beside the host's build (`target/plugin-template/`), so
    // reruns reuse the compiled wit-bindgen and dlmalloc instead of building them again in each
    // fresh temporary project. The project itself is new every time, so its crates are always
    // rebuilt from what `plugin new` wrote. (The README's `target/` is this folder here.)
    cmd.env("CARGO_TARGET_DIR", target_dir);
    let what = format!(
        "`cargo {}` in {} (cargo: {})",
        args.join(" "),
        project.display(),
        Path::new(&program).display()
    );
    tokio::time::timeout(CARGO_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {CARGO_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// The value of the `KEY: value` line of `plugin check` output.
fn field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `{key}:` line in `wasmgress plugin check` output:\n{stdout}"))
}

#[tokio::test]
async fn a_new_plugin_builds_outside_the_repository_and_adds_its_header() {
    let tmp = tempfile::Builder::new()
        .prefix("wasmgress-e2e-plugin-new-")
        .tempdir()
        .expect("create a temporary folder");
    let home = tmp.path();
    assert!(
        !home.starts_with(repository()),
        "{} must be outside the repository",
        home.display()
    );

    // 1. The project.
    let out = wasmgress(&["plugin", "new", "hello"], home).await;
    assert_success(&out, "wasmgress plugin new hello");
    let project = home.join("hello");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        ".gitignore",
        "wasmgress-plugin-sdk/Cargo.toml",
        "wasmgress-plugin-sdk/src/lib.rs",
        "wasmgress-plugin-sdk/wit/plugin.wit",
    ] {
        assert!(project.join(file).is_file(), "hello/{file} was written");
    }
    let readme = std::fs::read_to_string(project.join("README.md")).expect("hello/README.md");
    assert!(
        readme.contains(BUILD),
        "the README gives the build command `{BUILD}`:\n{readme}"
    );

    // 2. The README's commands: unit tests natively, then the component.
    let target_dir = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/")
        .join("plugin-template");
    let wasm = target_dir.join("wasm32-wasip2/release/wasmgress_plugin_hello.wasm");
    let _ = std::fs::remove_file(&wasm);
    let out = cargo(&["test"], &project, &target_dir).await;
    assert_success(&out, "cargo test (the template's unit tests)");
    assert!(
        text(&out.stdout).contains("test result: ok. 2 passed"),
        "the template's two unit tests ran:\n{}",
        text(&out.stdout)
    );
    let build: Vec<&str> = BUILD.split_whitespace().skip(1).collect();
    let out = cargo(&build, &project, &target_dir).await;
    assert_success(&out, BUILD);
    let bytes =
        std::fs::read(&wasm).unwrap_or_else(|e| panic!("the build wrote {}: {e}", wasm.display()));

    // 3. What the host sees in it.
    let wasm_arg = wasm.to_str().expect("utf-8 path");
    let out = wasmgress(&["plugin", "check", wasm_arg], home).await;
    assert_success(&out, "wasmgress plugin check");
    let report = text(&out.stdout);
    assert_eq!(field(&report, "name"), "hello", "{report}");
    assert_eq!(field(&report, "version"), "0.1.0", "{report}");
    assert_eq!(field(&report, "abi"), "wasmgress:plugin@0.2.0", "{report}");
    assert_eq!(field(&report, "sha256"), sha256_hex(&bytes), "{report}");
    assert_eq!(
        field(&report, "prefixes"),
        "wasmgress.io/plugin.hello.",
        "{report}"
    );
    assert_eq!(field(&report, "hooks"), "request-headers", "{report}");
    assert_eq!(field(&report, "metrics"), "(none)", "{report}");
    assert_eq!(field(&report, "capabilities"), "(none)", "{report}");

    // 4. Served: the file name does not matter, the name it describes does.
    let plugins = PluginDir::with(&[]);
    plugins.write("built-by-the-template.wasm", &bytes);
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(
        Ingress::new("greeted")
            .annotation(PLUGINS, "hello")
            .annotation(MESSAGE, "hi from the template")
            .rule(Some("greeted.test"), &[prefix("/", "echo")])
            .build(),
    );
    objects.push(
        Ingress::new("plain")
            .rule(Some("plain.test"), &[prefix("/", "echo")])
            .build(),
    );
    objects.push(
        Ingress::new("unconfigured")
            .annotation(PLUGINS, "hello")
            .rule(Some("unconfigured.test"), &[prefix("/", "echo")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let r = gw
        .send(&Req::get("greeted.test", "/greet/me?twice=1"))
        .await;
    assert_eq!(r.backend().as_deref(), Some("echo"), "{}", r.summary());
    assert_eq!(
        r.seen("x-hello"),
        ["hi from the template (GET /greet/me?twice=1)"],
        "the header the template's request hook adds"
    );
    let r = gw.send(&Req::get("plain.test", "/")).await;
    assert!(
        r.seen("x-hello").is_empty(),
        "a route without the plugin: {:?}",
        r.seen("x-hello")
    );
    // Without its required annotation the Ingress is rejected, naming it.
    gw.assert_routes(&[("unconfigured.test", "/", "404")]).await;
    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("error:")
            && l.contains(&format!("Ingress {NS}/unconfigured:"))
            && l.contains(&format!("metadata.annotations[{MESSAGE}]"))),
        "validate names the missing annotation:\n{stdout}"
    );
}

/// `plugin new` refuses a bad name and an existing folder, writing nothing; `plugin check`
/// refuses a file that is not a plugin. Each exits 1 with a message saying why.
#[tokio::test]
async fn plugin_commands_refuse_what_they_cannot_do() {
    let tmp = tempfile::tempdir().expect("create a temporary folder");
    let home = tmp.path();

    let out = wasmgress(&["plugin", "new", "Hello_World"], home).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`Hello_World` is not a valid plugin name"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(home).expect("read").next().is_none(),
        "nothing written"
    );

    std::fs::create_dir(home.join("taken")).expect("mkdir");
    let out = wasmgress(&["plugin", "new", "taken"], home).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("already exists"), "{out:?}");
    let out = wasmgress(&["plugin", "new", "other", "--dir", "taken"], home).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        std::fs::read_dir(home.join("taken"))
            .expect("read")
            .next()
            .is_none(),
        "nothing written into an existing folder"
    );

    std::fs::write(home.join("not-a-plugin.wasm"), b"\0asm\x01\0\0\0").expect("write");
    let out = wasmgress(&["plugin", "check", "not-a-plugin.wasm"], home).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot load plugin not-a-plugin.wasm"),
        "{stderr}"
    );
    let out = wasmgress(&["plugin", "check", "missing.wasm"], home).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("cannot read it"), "{out:?}");
}
