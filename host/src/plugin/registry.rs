//! The plugin [`Registry`]: the embedded built-ins plus `*.wasm` components from a directory,
//! looked up by name.
//!
//! Owns loading: compile (once per distinct component per process, cached by SHA-256), check
//! that the component imports nothing but the filter world's interfaces, pre-link, and ask it
//! to `describe` itself; then check that its name and annotation claims do not collide with
//! another plugin's. Every failure names the file and the cause. Counters are kept per plugin
//! name for the life of the process, so they survive reloads. This module must not configure
//! plugins for Ingresses (`configure` does).

use super::bindings::{v0_1, v0_2, wit};
use super::capability::Capabilities;
use super::engine::{RuntimeConfig, StoreState, engine};
use super::error::{DirError, LoadError};
use super::instance::{
    HookSet, LoadedPlugin, PluginInfo, PluginOrigin, PluginStats, Pre, StatsSnapshot,
};
use super::metrics::{self, MetricDecl};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The ABI versions the host links, and the only imports a plugin built against each may have:
/// the filter world's own interfaces, no WASI. A component imports from exactly one version.
const ABI_IMPORTS: &[(&str, &[&str])] = &[
    (
        "0.2.0",
        &[
            "wasmgress:plugin/types@0.2.0",
            "wasmgress:plugin/log@0.2.0",
            "wasmgress:plugin/metrics@0.2.0",
            // Capabilities: each must also be granted by the route that attaches the plugin.
            "wasmgress:plugin/clock@0.2.0",
            "wasmgress:plugin/random@0.2.0",
            "wasmgress:plugin/counters@0.2.0",
            "wasmgress:plugin/secrets@0.2.0",
            "wasmgress:plugin/http@0.2.0",
        ],
    ),
    (
        "0.1.0",
        &["wasmgress:plugin/types@0.1.0", "wasmgress:plugin/log@0.1.0"],
    ),
];

/// Annotation owned by the host: the ordered list of attached plugins.
pub const PLUGINS_ANNOTATION: &str = "wasmgress.io/plugins";
/// Prefix of per-plugin annotations: `wasmgress.io/plugin.<name>.<key>`.
pub const PLUGIN_PREFIX: &str = "wasmgress.io/plugin.";

fn linker() -> Result<&'static Linker<StoreState>, LoadError> {
    static LINKER: OnceLock<Result<Linker<StoreState>, String>> = OnceLock::new();
    let engine = engine()?;
    LINKER
        .get_or_init(|| {
            // Both worlds in one linker: their interfaces have distinct versioned names, and a
            // component only ever imports one version's.
            let mut linker = Linker::new(engine);
            v0_2::Filter::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
                .map_err(|e| format!("{e:#}"))?;
            v0_1::Filter::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
                .map_err(|e| format!("{e:#}"))?;
            Ok(linker)
        })
        .as_ref()
        .map_err(|e| LoadError::new("the plugin linker", e.clone()))
}

/// Compiled components by SHA-256: compiling is the expensive step (Cranelift), and reloads or
/// tests load the same bytes again.
fn compile(origin: &str, bytes: &[u8], sha: [u8; 32]) -> Result<Component, LoadError> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Component>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&sha)
    {
        return Ok(c.clone());
    }
    let component = Component::new(engine()?, bytes)
        .map_err(|e| LoadError::new(origin, format!("not a valid WebAssembly component: {e:#}")))?;
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(sha, component.clone());
    Ok(component)
}

static STATS: OnceLock<Mutex<HashMap<String, Arc<PluginStats>>>> = OnceLock::new();

/// Counters per plugin name, for the life of the process.
fn stats_for(name: &str) -> Arc<PluginStats> {
    STATS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// Every plugin's counters in this process, by name (sorted), including plugins no longer
/// loaded: what a metrics endpoint exposes.
pub fn all_stats() -> Vec<(String, StatsSnapshot)> {
    let Some(stats) = STATS.get() else {
        return Vec::new();
    };
    let mut all: Vec<(String, StatsSnapshot)> = stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(name, s)| (name.clone(), s.snapshot()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_info(info: &PluginInfo) -> Result<(), String> {
    metrics::check_for(&info.name, &info.metrics)?;
    if !valid_name(&info.name) {
        return Err(format!(
            "its name `{}` is not a valid plugin name (lower-case letters, digits and `-`)",
            info.name
        ));
    }
    let own = format!("{PLUGIN_PREFIX}{}.", info.name);
    for key in &info.keys {
        if key.is_empty() || key == PLUGINS_ANNOTATION {
            return Err(format!(
                "it claims the annotation `{key}`, which it cannot own"
            ));
        }
        if key.starts_with(PLUGIN_PREFIX) && !key.starts_with(&own) {
            return Err(format!(
                "it claims `{key}`, which belongs to another plugin's settings"
            ));
        }
    }
    for prefix in &info.prefixes {
        // A prefix of `wasmgress.io/plugin` would swallow the host's and other plugins' keys.
        if prefix.is_empty() || PLUGINS_ANNOTATION.starts_with(prefix.as_str()) {
            return Err(format!(
                "it claims the prefix `{prefix}`, which is too broad"
            ));
        }
        if prefix.starts_with(PLUGIN_PREFIX) && !prefix.starts_with(&own) {
            return Err(format!(
                "it claims the prefix `{prefix}`, which belongs to another plugin's settings"
            ));
        }
    }
    Ok(())
}

/// A metric family both plugins would export (`a-b`'s `c` and `a`'s `b_c`), if any.
fn shared_family(a: &PluginInfo, b: &PluginInfo) -> Option<String> {
    let families = |p: &PluginInfo| -> Vec<String> {
        p.metrics
            .iter()
            .map(|m| metrics::family(&p.name, &m.name))
            .collect()
    };
    let theirs = families(b);
    families(a).into_iter().find(|f| theirs.contains(f))
}

/// Does `a` claim any annotation `b` also claims? Returns one such key or prefix.
fn overlap(a: &PluginInfo, b: &PluginInfo) -> Option<String> {
    for k in &a.keys {
        if b.keys.contains(k) || b.prefixes.iter().any(|p| k.starts_with(p.as_str())) {
            return Some(k.clone());
        }
    }
    for p in &a.prefixes {
        if b.keys.iter().any(|k| k.starts_with(p.as_str()))
            || b.prefixes
                .iter()
                .any(|q| p.starts_with(q.as_str()) || q.starts_with(p.as_str()))
        {
            return Some(p.clone());
        }
    }
    None
}

/// The ABI version a component was built against, from its imports; refuses any import
/// outside that version's filter world (WASI above all), and a mix of versions.
fn abi_of(component: &Component, label: &str) -> Result<Option<&'static str>, LoadError> {
    let engine = engine()?;
    let mut abi: Option<&'static str> = None;
    for (name, item) in component.component_type().imports(engine) {
        // Imported types (the world's `use types.{fields}`) grant nothing by themselves; only
        // instances and functions are capabilities.
        if matches!(item.ty, ComponentItem::Type(_) | ComponentItem::Resource(_)) {
            continue;
        }
        let version = ABI_IMPORTS
            .iter()
            .find(|(_, imports)| imports.contains(&name))
            .map(|(v, _)| *v);
        match (version, abi) {
            (None, _) => {
                let allowed: Vec<&str> = ABI_IMPORTS[0].1.to_vec();
                return Err(LoadError::new(
                    label,
                    format!(
                        "it imports `{name}`, but plugins may only import {} (no WASI: build with the SDK, which is no_std)",
                        allowed.join(" and ")
                    ),
                ));
            }
            (Some(v), Some(seen)) if v != seen => {
                return Err(LoadError::new(
                    label,
                    format!(
                        "it imports from two ABI versions ({seen} and {v}); build it against one"
                    ),
                ));
            }
            (Some(v), _) => abi = Some(v),
        }
    }
    // `None`: a component that imports nothing at all (not even `log`).
    Ok(abi)
}

fn pre_link(component: &Component, abi: &str) -> wasmtime::Result<Pre> {
    let pre = linker()?.instantiate_pre(component)?;
    Ok(match abi {
        "0.1.0" => Pre::V0_1(v0_1::FilterPre::new(pre)?),
        _ => Pre::V0_2(v0_2::FilterPre::new(pre)?),
    })
}

fn info_from_wit(info: wit::Info) -> PluginInfo {
    PluginInfo {
        hooks: HookSet::from_wit(&info.hooks),
        name: info.name,
        version: info.version,
        keys: info.keys,
        prefixes: info.prefixes,
        metrics: info
            .metrics
            .into_iter()
            .map(|m| MetricDecl {
                name: m.name,
                help: m.help,
                buckets: (m.kind == wit::MetricKind::Histogram).then_some(m.buckets),
                label: m.label,
            })
            .collect(),
    }
}

/// Compile, check and describe one component.
fn load(
    origin: PluginOrigin,
    bytes: &[u8],
    config: &RuntimeConfig,
) -> Result<LoadedPlugin, LoadError> {
    let label = match &origin {
        PluginOrigin::Builtin => "a built-in plugin".to_string(),
        PluginOrigin::File(path) => path.clone(),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(digest.as_ref());
    let component = compile(&label, bytes, sha)?;
    let abi = abi_of(&component, &label)?;
    let pre = match abi {
        Some(v) => pre_link(&component, v),
        // Nothing imported tells the version: try the current one, then the older.
        None => pre_link(&component, ABI_IMPORTS[0].0)
            .or_else(|_| pre_link(&component, ABI_IMPORTS[1].0)),
    };
    let pre = pre.map_err(|e| {
        let abi = abi.unwrap_or(ABI_IMPORTS[0].0);
        LoadError::new(
            &label,
            format!("it does not implement the wasmgress:plugin/filter@{abi} world: {e:#}"),
        )
    })?;
    let mut plugin = LoadedPlugin {
        info: PluginInfo {
            name: String::new(),
            version: String::new(),
            keys: Vec::new(),
            prefixes: Vec::new(),
            hooks: HookSet::default(),
            metrics: Vec::new(),
        },
        name: Arc::from("(loading)"),
        origin,
        sha256: sha,
        capabilities: Capabilities::of_component(&component),
        metrics: metrics::unregistered("(loading)", Vec::new()),
        pre,
        stats: Arc::new(PluginStats::default()),
    };
    let info = plugin
        .instantiate(config, &Arc::default())
        .and_then(|mut inst| inst.describe(config.compile_deadline))
        .map_err(|e| LoadError::new(&label, format!("describe failed: {e}")))?;
    let info = info_from_wit(info);
    check_info(&info).map_err(|why| LoadError::new(&label, why))?;
    plugin.name = Arc::from(info.name.as_str());
    plugin.stats = stats_for(&info.name);
    // Exported only once the registry accepts it (a refused duplicate must not replace the
    // live plugin's series).
    plugin.metrics = metrics::unregistered(&info.name, info.metrics.clone());
    plugin.info = info;
    Ok(plugin)
}

/// The built-ins, compiled once per process.
fn builtins(config: &RuntimeConfig) -> Result<Vec<Arc<LoadedPlugin>>, LoadError> {
    static BUILTINS: OnceLock<Result<Vec<Arc<LoadedPlugin>>, String>> = OnceLock::new();
    BUILTINS
        .get_or_init(|| {
            BUILTIN
                .iter()
                .map(|(name, bytes)| {
                    let p = load(PluginOrigin::Builtin, bytes, config)
                        .map_err(|e| format!("built-in `{name}`: {e}"))?;
                    if p.info.name != *name {
                        return Err(format!(
                            "built-in `{name}` describes itself as `{}`",
                            p.info.name
                        ));
                    }
                    Ok(Arc::new(p))
                })
                .collect()
        })
        .clone()
        .map_err(|e| LoadError::new("the built-in plugins", e))
}

/// The plugins available to Ingresses.
#[derive(Debug, Clone)]
pub struct Registry {
    config: RuntimeConfig,
    plugins: Vec<Arc<LoadedPlugin>>,
    builtin_count: usize,
}

impl Registry {
    /// A registry with the built-in plugins only.
    pub fn with_builtins(config: RuntimeConfig) -> Result<Self, LoadError> {
        let plugins = builtins(&config)?;
        Ok(Registry {
            config,
            builtin_count: plugins.len(),
            plugins,
        })
    }

    /// Add a component from bytes; `origin` names it in errors (usually its path).
    pub fn add(&mut self, origin: &str, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        let plugin = load(PluginOrigin::File(origin.to_string()), bytes, &self.config)?;
        for other in &self.plugins {
            if other.info.name == plugin.info.name {
                return Err(LoadError::new(
                    origin,
                    format!(
                        "a plugin called `{}` is already loaded ({})",
                        other.info.name, other.origin
                    ),
                ));
            }
            if let Some(claim) = overlap(&plugin.info, &other.info) {
                return Err(LoadError::new(
                    origin,
                    format!(
                        "it claims `{claim}`, which plugin `{}` already owns",
                        other.info.name
                    ),
                ));
            }
            if let Some(family) = shared_family(&plugin.info, &other.info) {
                return Err(LoadError::new(
                    origin,
                    format!(
                        "its metric `{family}` has the name of one of plugin `{}`",
                        other.info.name
                    ),
                ));
            }
        }
        let mut plugin = plugin;
        plugin.metrics = metrics::for_plugin(&plugin.info.name, plugin.info.metrics.clone());
        let plugin = Arc::new(plugin);
        self.plugins.push(plugin.clone());
        Ok(plugin)
    }

    /// Add every `*.wasm` file of `dir` (sorted by file name). Files that fail are reported and
    /// left out; the others are added.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<LoadError>, DirError> {
        let read = |e| DirError {
            dir: dir.to_path_buf(),
            source: e,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read)? {
            let path = entry.map_err(read)?.path();
            if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut errors = Vec::new();
        for path in files {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    if let Err(e) = self.add(&path.display().to_string(), &bytes) {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(LoadError::io(&path, &e)),
            }
        }
        Ok(errors)
    }

    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.iter().find(|p| p.info.name == name)
    }

    /// Every plugin: built-ins first, then added ones in load order.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// The plugin that owns the annotation `key`, if any.
    pub fn owner(&self, key: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins
            .iter()
            .find(|p| super::configure::owns(&p.info, key))
    }

    /// The built-ins, in their default attach order.
    pub fn builtins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins[..self.builtin_count]
    }

    /// The limits every instance of this registry runs under.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, keys: &[&str], prefixes: &[&str]) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            version: "1".into(),
            keys: keys.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            hooks: HookSet::default(),
            metrics: Vec::new(),
        }
    }

    #[test]
    fn names_and_claims_checked() {
        assert!(check_info(&info("my-auth", &[], &["wasmgress.io/plugin.my-auth."])).is_ok());
        assert!(check_info(&info("My", &[], &[])).is_err());
        assert!(check_info(&info("a", &["wasmgress.io/plugins"], &[])).is_err());
        assert!(check_info(&info("a", &[], &["wasmgress.io/"])).is_err());
        assert!(check_info(&info("a", &[], &["wasmgress.io/plugin.b."])).is_err());
        assert!(check_info(&info("a", &["wasmgress.io/plugin.b.x"], &[])).is_err());
    }

    #[test]
    fn overlaps_found() {
        let a = info("a", &["x/k"], &["y/"]);
        assert_eq!(overlap(&a, &info("b", &["x/k"], &[])), Some("x/k".into()));
        assert_eq!(overlap(&a, &info("b", &[], &["x/"])), Some("x/k".into()));
        assert_eq!(overlap(&a, &info("b", &["y/z"], &[])), Some("y/".into()));
        assert_eq!(overlap(&a, &info("b", &[], &["y/z/"])), Some("y/".into()));
        assert_eq!(overlap(&a, &info("b", &["z"], &["w/"])), None);
    }
}
