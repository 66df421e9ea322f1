//! For plugin authors: `wasmgress plugin new` writes a plugin project ready to build, and
//! `wasmgress plugin check` loads a built component as `--plugin-dir` does and says what the
//! host sees in it.
//!
//! Owns the project template (`scaffold/*.tmpl`) and the copy of the SDK it vendors, embedded
//! in the binary from `plugins/sdk` and `wit/`, so a project made by a given wasmgress binary
//! targets exactly the ABI that binary speaks. A new file in `plugins/sdk/src` must be added to
//! [`SDK_FILES`] (a unit test fails otherwise). Loading goes through [`Registry`] unchanged:
//! this module must not load components any other way.

use super::engine::RuntimeConfig;
use super::error::LoadError;
use super::registry::{PLUGIN_PREFIX, Registry};
use std::fmt;
use std::path::{Path, PathBuf};

/// The vendored SDK: `(path inside wasmgress-plugin-sdk/, contents)`. The ABI comes from the
/// repository's `wit/` (which `plugins/sdk/wit` links to), as a real file: the vendored crate
/// reads `wit/` beside its Cargo.toml.
pub const SDK_FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/__rt.rs",
        include_str!("../../../plugins/sdk/src/__rt.rs"),
    ),
    (
        "src/capabilities.rs",
        include_str!("../../../plugins/sdk/src/capabilities.rs"),
    ),
    (
        "src/refs.rs",
        include_str!("../../../plugins/sdk/src/refs.rs"),
    ),
    (
        "src/request.rs",
        include_str!("../../../plugins/sdk/src/request.rs"),
    ),
    (
        "src/template.rs",
        include_str!("../../../plugins/sdk/src/template.rs"),
    ),
    (
        "src/validate.rs",
        include_str!("../../../plugins/sdk/src/validate.rs"),
    ),
    ("wit/plugin.wit", include_str!("../../../wit/plugin.wit")),
];

/// The folder the SDK is vendored into, inside a new project (its `path` dependency).
pub const SDK_DIR: &str = "wasmgress-plugin-sdk";

/// The project's own files: `(path, template)`.
const PROJECT_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("scaffold/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("scaffold/lib.rs.tmpl")),
    ("README.md", include_str!("scaffold/README.md.tmpl")),
    (".gitignore", include_str!("scaffold/gitignore.tmpl")),
];

/// The build command the project's README gives (and the end-to-end test runs).
pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2";

/// Why `plugin new` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error(
        "`{name}` is not a valid plugin name: {why} (lower-case letters, digits and `-`, starting with a letter, at most 63 characters)"
    )]
    InvalidName { name: String, why: &'static str },
    #[error("{} already exists; choose another --dir or remove it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks a plugin name as the host will (`describe`'s name, used in `wasmgress.io/plugins`
/// and `wasmgress.io/plugin.<name>.*`), a little stricter: it must also start with a letter,
/// since it becomes a Rust type name in the template.
pub fn check_name(name: &str) -> Result<(), NewError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 63 {
        Some("it is longer than 63 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it must start with a lower-case letter")
    } else if name.ends_with('-') {
        Some("it must not end with `-`")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("it may only hold lower-case letters, digits and `-`")
    } else {
        None
    };
    match why {
        Some(why) => Err(NewError::InvalidName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The ABI version the embedded SDK targets (`0.2.0`), from its WIT package line.
pub fn sdk_abi() -> &'static str {
    let wit = SDK_FILES
        .iter()
        .find(|(path, _)| *path == "wit/plugin.wit")
        .map_or("", |(_, text)| *text);
    wit.lines()
        .find_map(|l| l.trim().strip_prefix("package wasmgress:plugin@"))
        .map_or("unknown", |rest| rest.trim_end_matches(';').trim())
}

/// `my-auth` -> `MyAuth`.
fn camel_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The file stem cargo gives the built component: `wasmgress_plugin_my_auth`.
pub fn component_stem(name: &str) -> String {
    format!("wasmgress_plugin_{}", name.replace('-', "_"))
}

/// Every file of a new project for plugin `name` (already checked), relative to its folder.
pub fn project_files(name: &str) -> Vec<(PathBuf, String)> {
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{Name}}", &camel_case(name))
            .replace("{{crate}}", &component_stem(name))
            .replace("{{abi}}", sdk_abi())
            .replace("{{wasmgress_version}}", env!("CARGO_PKG_VERSION"))
    };
    let own = PROJECT_FILES
        .iter()
        .map(|(path, template)| (PathBuf::from(path), fill(template)));
    let sdk = SDK_FILES
        .iter()
        .map(|(path, text)| (Path::new(SDK_DIR).join(path), text.to_string()));
    own.chain(sdk).collect()
}

/// Writes a new plugin project for `name` into `dir` (default: `./NAME`), which must not
/// exist. Returns the folder written.
pub fn new_project(name: &str, dir: Option<&Path>) -> Result<PathBuf, NewError> {
    check_name(name)?;
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if root.symlink_metadata().is_ok() {
        return Err(NewError::Exists(root));
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| NewError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    // `create_dir` (not `_all`) fails if something appeared meanwhile: never write into a
    // folder someone else made.
    std::fs::create_dir(&root).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => NewError::Exists(root.clone()),
        _ => NewError::Io {
            path: root.clone(),
            source,
        },
    })?;
    let written = write_all(&root, &project_files(name));
    if written.is_err() {
        // Leave nothing half-made behind; the folder was ours.
        let _ = std::fs::remove_dir_all(&root);
    }
    written.map(|()| root)
}

fn write_all(root: &Path, files: &[(PathBuf, String)]) -> Result<(), NewError> {
    for (rel, text) in files {
        let path = root.join(rel);
        let io = |source| NewError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // `create_new`: never follow a symlink or overwrite a file that appeared meanwhile.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    }
    Ok(())
}

/// What `plugin check` found in a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub file: String,
    pub name: String,
    pub version: String,
    /// `0.2.0`, `0.1.0`.
    pub abi: &'static str,
    pub sha256: String,
    pub keys: Vec<String>,
    pub prefixes: Vec<String>,
    /// `request-headers`, `response-headers`.
    pub hooks: Vec<&'static str>,
    /// The metrics it declares: `name (counter)`, `name (histogram, label L)`.
    pub metrics: Vec<String>,
    /// The capability interfaces it imports (`clock`, `random`, `counters`, `secrets`, `http`), which a
    /// route must grant.
    pub capabilities: Vec<String>,
}

/// Loads `file` exactly as `--plugin-dir` loads each of its files (beside the built-ins, so a
/// name or annotation claimed twice is refused here too) and reports what it declares.
pub fn check(file: &Path) -> Result<CheckReport, LoadError> {
    let mut registry = Registry::with_builtins(RuntimeConfig::default())?;
    let bytes = std::fs::read(file).map_err(|e| LoadError::io(file, &e))?;
    let origin = file.display().to_string();
    let plugin = registry.add(&origin, &bytes)?;
    let info = plugin.info();
    let hooks = info.hooks.named();
    Ok(CheckReport {
        file: origin,
        name: info.name.clone(),
        version: info.version.clone(),
        abi: plugin.abi(),
        sha256: plugin.sha256_hex(),
        keys: info.keys.clone(),
        prefixes: info.prefixes.clone(),
        hooks: hooks
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, h)| *h)
            .collect(),
        metrics: info
            .metrics
            .iter()
            .map(|m| {
                let kind = if m.buckets.is_some() {
                    "histogram"
                } else {
                    "counter"
                };
                match m.label.as_str() {
                    "" => format!("{} ({kind})", m.name),
                    label => format!("{} ({kind}, label {label})", m.name),
                }
            })
            .collect(),
        capabilities: plugin
            .capabilities()
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: AsRef<str>>(items: &[T]) -> String {
            if items.is_empty() {
                "(none)".to_string()
            } else {
                items
                    .iter()
                    .map(AsRef::as_ref)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
        let own = format!("{PLUGIN_PREFIX}{}.", self.name);
        let mut prefixes = self.prefixes.clone();
        if !prefixes.contains(&own) {
            prefixes.push(format!("{own} (always)"));
        }
        writeln!(f, "file:         {}", self.file)?;
        writeln!(f, "name:         {}", self.name)?;
        writeln!(f, "version:      {}", self.version)?;
        writeln!(f, "abi:          wasmgress:plugin@{}", self.abi)?;
        writeln!(f, "sha256:       {}", self.sha256)?;
        writeln!(f, "keys:         {}", list(&self.keys))?;
        writeln!(f, "prefixes:     {}", list(&prefixes))?;
        writeln!(f, "hooks:        {}", list(&self.hooks))?;
        writeln!(f, "metrics:      {}", list(&self.metrics))?;
        writeln!(f, "capabilities: {}", list(&self.capabilities))?;
        writeln!(f)?;
        writeln!(f, "Attach it to an Ingress with the annotations")?;
        writeln!(f, "  wasmgress.io/plugins: \"{}\"", self.name)?;
        if !self.capabilities.is_empty() {
            let grants: Vec<String> = self
                .capabilities
                .iter()
                .map(|c| match c.as_str() {
                    "secrets" => "secrets(NAME, ...)".to_string(),
                    "http" => "http(HOST[:PORT], ...)".to_string(),
                    other => other.to_string(),
                })
                .collect();
            writeln!(
                f,
                "  {PLUGIN_PREFIX}{}.capabilities: \"{}\"   # required: it imports them",
                self.name,
                grants.join(", ")
            )?;
        }
        writeln!(
            f,
            "  {PLUGIN_PREFIX}{}.sha256: \"{}\"   # optional: refuse any other build",
            self.name, self.sha256
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every file under `dir`, relative to it, `/`-separated.
    fn files_under(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.path().is_dir() {
                files_under(&entry.path(), &rel, out);
            } else {
                out.insert(rel);
            }
        }
    }

    fn sdk() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
    }

    #[test]
    fn every_sdk_source_file_is_vendored() {
        let mut on_disk = BTreeSet::new();
        files_under(&sdk().join("src"), "src", &mut on_disk);
        let embedded: BTreeSet<String> = SDK_FILES
            .iter()
            .map(|(path, _)| path.to_string())
            .filter(|p| p.starts_with("src/"))
            .collect();
        assert_eq!(
            embedded, on_disk,
            "plugins/sdk/src and SDK_FILES in host/src/plugin/scaffold.rs must list the same files"
        );
        // The ABI: every top-level .wit file the SDK's bindings are generated from.
        let wit: BTreeSet<String> = std::fs::read_dir(sdk().join("wit"))
            .expect("plugins/sdk/wit (a symlink to the repository's wit/)")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wit"))
            .map(|n| format!("wit/{n}"))
            .collect();
        assert!(!wit.is_empty());
        for w in &wit {
            assert!(SDK_FILES.iter().any(|(p, _)| p == w), "{w} is not vendored");
        }
        assert!(SDK_FILES.iter().any(|(p, _)| *p == "Cargo.toml"));
    }

    #[test]
    fn the_vendored_sdk_reads_its_own_wit_folder() {
        let cargo = SDK_FILES[0].1;
        let inherited = cargo
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find(|l| l.contains("workspace"));
        assert_eq!(
            inherited, None,
            "the SDK's Cargo.toml must stand alone (no workspace inheritance)"
        );
        let lib = SDK_FILES
            .iter()
            .find(|(p, _)| *p == "src/lib.rs")
            .expect("lib.rs")
            .1;
        assert!(lib.contains("path: \"wit\""), "generate! reads wit/");
        assert_eq!(sdk_abi(), "0.2.0");
    }

    #[test]
    fn names_are_checked() {
        for good in ["hello", "my-auth", "a1", "x-2-y"] {
            check_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            ("Hello", "start with a lower-case letter"),
            ("1abc", "start with a lower-case letter"),
            ("-abc", "start with a lower-case letter"),
            ("abc-", "end with"),
            ("my_auth", "only hold"),
            ("a.b", "only hold"),
            ("a/b", "only hold"),
        ] {
            let e = check_name(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("lower-case letters, digits and `-`"), "{e}");
        }
        assert!(check_name(&"a".repeat(63)).is_ok());
        assert!(check_name(&"a".repeat(64)).is_err());
        assert_eq!(camel_case("my-auth-2"), "MyAuth2");
        assert_eq!(component_stem("my-auth"), "wasmgress_plugin_my_auth");
    }

    #[test]
    fn a_project_is_written_once_and_filled_in() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("nested/my-auth");
        let root = new_project("my-auth", Some(&dir)).expect("written");
        assert_eq!(root, dir);
        let read = |rel: &str| {
            std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
        };
        let cargo = read("Cargo.toml");
        assert!(
            cargo.contains("name = \"wasmgress-plugin-my-auth\""),
            "{cargo}"
        );
        assert!(cargo.contains("crate-type = [\"cdylib\"]"), "{cargo}");
        assert!(cargo.contains("\n[workspace]\n"), "{cargo}");
        assert!(cargo.contains("path = \"wasmgress-plugin-sdk\""), "{cargo}");
        for setting in [
            "opt-level = \"s\"",
            "lto = true",
            "codegen-units = 1",
            "panic = \"abort\"",
        ] {
            assert!(cargo.contains(setting), "{setting}: {cargo}");
        }
        let lib = read("src/lib.rs");
        assert!(lib.contains("\"wasmgress.io/plugin.my-auth.\""), "{lib}");
        assert!(lib.contains("struct MyAuthPlugin;"), "{lib}");
        assert!(read("README.md").contains(BUILD_COMMAND));
        assert!(read("README.md").contains("wasmgress_plugin_my_auth.wasm"));
        assert_eq!(read(".gitignore").trim(), "target/");
        for (_, text) in project_files("my-auth") {
            assert!(!text.contains("{{"), "a placeholder is left:\n{text}");
        }
        for (rel, text) in SDK_FILES {
            assert_eq!(read(&format!("{SDK_DIR}/{rel}")), *text, "{rel}");
        }
        assert!(!dir.join(SDK_DIR).join("wit").is_symlink(), "a real folder");

        // Never over anything that exists, even an empty folder.
        let again = new_project("my-auth", Some(&dir)).expect_err("exists");
        assert!(matches!(again, NewError::Exists(_)), "{again}");
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert!(matches!(
            new_project("x", Some(&empty)),
            Err(NewError::Exists(_))
        ));
        assert!(matches!(
            new_project("Bad", Some(&tmp.path().join("bad"))),
            Err(NewError::InvalidName { .. })
        ));
        assert!(!tmp.path().join("bad").exists(), "nothing written");
    }
}
