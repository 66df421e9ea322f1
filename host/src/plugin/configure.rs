//! Compile time: turn one Ingress's annotations into a merged [`PluginPolicy`].
//!
//! Owns attachment (which plugins run for an Ingress, in which order), annotation routing
//! (each plugin sees only the keys it owns), the host-owned per-plugin keys (`sha256` pins,
//! `fail-open`, `capabilities` grants), the merge, and the warnings for keys nobody owns. Each plugin's `configure`
//! runs on a fresh instance; when its policy asks for hooks, that instance becomes the first
//! of the Ingress's free list. This module must not touch routes or the proxy.

use super::bindings::wit;
use super::capability::{Grant, Granted, SecretSource, grants_key};
use super::error::CallError;
use super::hooks::{Attachment, BoundPlugin};
use super::instance::{HookSet, LoadedPlugin, Route};
use super::policy::{PluginPolicy, from_wit};
use super::registry::{PLUGIN_PREFIX, PLUGINS_ANNOTATION, Registry};
use crate::compat::{Entry, Fate};
use crate::diagnostic::{Diagnostic, Severity};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Prefixes under which an annotation nobody owns is reported.
const WATCHED_PREFIXES: &[&str] = &["nginx.ingress.kubernetes.io/", "wasmgress.io/"];

/// A finding about one annotation (or about a plugin, when `key` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDiagnostic {
    pub severity: Severity,
    /// The annotation key concerned; empty for the plugin as a whole.
    pub key: String,
    /// The plugin that reported it, if any (host findings have none).
    pub plugin: Option<String>,
    pub message: String,
}

impl PluginDiagnostic {
    fn new(severity: Severity, key: &str, plugin: Option<&str>, message: String) -> Self {
        PluginDiagnostic {
            severity,
            key: key.to_string(),
            plugin: plugin.map(str::to_string),
            message,
        }
    }

    /// The crate-wide diagnostic for `object` (e.g. `Ingress ns/name`), with the field
    /// `metadata.annotations[KEY]`.
    pub fn to_diagnostic(&self, object: &str) -> Diagnostic {
        let field = if self.key.is_empty() {
            String::from("metadata.annotations")
        } else {
            format!("metadata.annotations[{}]", self.key)
        };
        let message = match &self.plugin {
            Some(p) => format!("plugin {p}: {}", self.message),
            None => self.message.clone(),
        };
        match self.severity {
            Severity::Error => Diagnostic::error(object, field, message),
            Severity::Warning => Diagnostic::warning(object, field, message),
            Severity::Info => Diagnostic::info(object, field, message),
        }
    }
}

/// The result of configuring an accepted Ingress.
#[derive(Debug, Clone)]
pub struct Configured {
    /// The merged policy to execute.
    pub policy: PluginPolicy,
    /// Warnings and infos (no errors: those reject the Ingress).
    pub diagnostics: Vec<PluginDiagnostic>,
}

/// The plugin names in `wasmgress.io/plugins` (comma-separated, in order).
pub fn attached_plugins(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations
        .get(PLUGINS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn owns(info: &super::instance::PluginInfo, key: &str) -> bool {
    info.keys.iter().any(|k| k == key)
        || info.prefixes.iter().any(|p| key.starts_with(p.as_str()))
        || key
            .strip_prefix(PLUGIN_PREFIX)
            .and_then(|rest| rest.strip_prefix(info.name.as_str()))
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Host-owned settings of an attached plugin, never handed to it.
fn host_setting(plugin: &str, key: &str) -> Option<&'static str> {
    let rest = key.strip_prefix(PLUGIN_PREFIX)?.strip_prefix(plugin)?;
    match rest {
        ".sha256" => Some("sha256"),
        ".fail-open" => Some("fail-open"),
        ".capabilities" => Some("capabilities"),
        _ => None,
    }
}

fn severity(s: wit::Severity) -> Severity {
    match s {
        wit::Severity::Error => Severity::Error,
        wit::Severity::Warning => Severity::Warning,
        wit::Severity::Info => Severity::Info,
    }
}

/// Configure every plugin attached to an Ingress and merge their policies.
///
/// Attach order: the built-ins that own at least one of the annotations present (in registry
/// order) unless listed explicitly, then `wasmgress.io/plugins` in its order. `Err` holds
/// every diagnostic when at least one is an error (the Ingress is rejected); plugin failures
/// (trap, deadline, memory) during `configure` are such errors.
pub fn configure_ingress(
    registry: &Registry,
    route: &Route,
    annotations: &BTreeMap<String, String>,
    secrets: &dyn SecretSource,
) -> Result<Configured, Vec<PluginDiagnostic>> {
    let mut diags = Vec::new();
    let mut order: Vec<Arc<LoadedPlugin>> = Vec::new();
    let listed = attached_plugins(annotations);
    for b in registry.builtins() {
        let present = annotations.keys().any(|k| owns(&b.info, k));
        if present && !listed.iter().any(|n| *n == b.info.name) {
            order.push(b.clone());
        }
    }
    for name in &listed {
        match registry.get(name) {
            Some(p) if order.iter().any(|o| Arc::ptr_eq(o, p)) => {
                diags.push(PluginDiagnostic::new(
                    Severity::Warning,
                    PLUGINS_ANNOTATION,
                    None,
                    format!("plugin `{name}` is listed twice; it runs once"),
                ))
            }
            Some(p) => order.push(p.clone()),
            None => diags.push(PluginDiagnostic::new(
                Severity::Error,
                PLUGINS_ANNOTATION,
                None,
                format!("no plugin called `{name}` is loaded"),
            )),
        }
    }

    let config = registry.config();
    let mut policy = PluginPolicy::default();
    let mut previous: Vec<&str> = Vec::new();
    for plugin in &order {
        let name = plugin.info.name.as_str();
        let plugin_diag =
            |sev, key: &str, msg: String| PluginDiagnostic::new(sev, key, Some(name), msg);
        let mut owned: Vec<(String, String)> = Vec::new();
        let mut fail_open = false;
        let mut pin_ok = true;
        let mut grant = Grant::default();
        for (k, v) in annotations {
            match host_setting(name, k) {
                Some("sha256") if !v.trim().eq_ignore_ascii_case(&plugin.sha256_hex()) => {
                    pin_ok = false;
                    diags.push(plugin_diag(
                        Severity::Error,
                        k,
                        format!(
                            "the loaded plugin ({}) has SHA-256 {}, not the pinned {}",
                            plugin.origin(),
                            plugin.sha256_hex(),
                            v.trim()
                        ),
                    ));
                }
                Some("sha256") => {}
                Some("capabilities") => match Grant::parse(v) {
                    Ok(g) => grant = g,
                    Err(why) => {
                        pin_ok = false;
                        diags.push(plugin_diag(Severity::Error, k, why));
                    }
                },
                Some(_) => match v.trim() {
                    "true" => fail_open = true,
                    "false" => fail_open = false,
                    other => diags.push(plugin_diag(
                        Severity::Error,
                        k,
                        format!("`{other}` is not true or false"),
                    )),
                },
                None if owns(&plugin.info, k) => owned.push((k.clone(), v.clone())),
                None => {}
            }
        }
        if !pin_ok {
            // Never run a binary the Ingress did not ask for, nor one it could not grant.
            continue;
        }
        let granted = match grant_for(plugin, &grant, route, secrets) {
            Ok(granted) => granted,
            Err((key, why)) => {
                diags.push(plugin_diag(Severity::Error, &key, why));
                continue;
            }
        };
        let result = plugin.instantiate(config, &granted).and_then(|mut inst| {
            inst.configure(route, &owned, config.compile_deadline)
                .map(|r| (inst, r))
        });
        let (inst, result) = match result {
            Ok(ok) => ok,
            Err(e) => {
                diags.push(call_failed(&e, name));
                continue;
            }
        };
        let wit_policy = match result {
            Ok(p) => p,
            Err(list) => {
                let had_error = list.iter().any(|d| d.severity == wit::Severity::Error);
                for d in list {
                    diags.push(plugin_diag(severity(d.severity), &d.key, d.message));
                }
                if !had_error {
                    diags.push(plugin_diag(
                        Severity::Error,
                        "",
                        "refused the configuration without saying why".into(),
                    ));
                }
                continue;
            }
        };
        for d in &wit_policy.notes {
            diags.push(plugin_diag(severity(d.severity), &d.key, d.message.clone()));
        }
        let hooks = HookSet::from_wit(&wit_policy.hooks);
        if !hooks.is_subset_of(&plugin.info.hooks) {
            diags.push(plugin_diag(
                Severity::Error,
                "",
                "its policy asks for a hook it did not declare in describe".into(),
            ));
            continue;
        }
        let mut native = match from_wit(wit_policy) {
            Ok(p) => p,
            Err(why) => {
                diags.push(plugin_diag(
                    Severity::Error,
                    "",
                    format!("returned an invalid policy: {why}"),
                ));
                continue;
            }
        };
        if !hooks.is_empty() {
            let attached = Attachment {
                route: route.clone(),
                settings: owned,
                hooks,
                fail_open,
                granted,
            };
            native.hooks.push(Arc::new(BoundPlugin::new(
                plugin.clone(),
                attached,
                *config,
                inst,
            )));
        }
        for field in policy.merge(native) {
            diags.push(plugin_diag(
                Severity::Warning,
                "",
                format!(
                    "overrides the {field} set by {}",
                    previous
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        previous.push(name);
    }

    // Keys under our prefixes that no attached plugin (nor the host) owns.
    for key in annotations.keys() {
        if !WATCHED_PREFIXES.iter().any(|p| key.starts_with(p)) || key == PLUGINS_ANNOTATION {
            continue;
        }
        let attached = order
            .iter()
            .any(|p| owns(&p.info, key) || host_setting(&p.info.name, key).is_some());
        if attached {
            continue;
        }
        diags.push(unowned(registry, key));
    }

    if diags.iter().any(|d| d.severity == Severity::Error) {
        Err(diags)
    } else {
        Ok(Configured {
            policy,
            diagnostics: diags,
        })
    }
}

/// What becomes of an annotation under our prefixes that no attached plugin owns: a plugin
/// that would own it but is not attached is named; ingress-nginx's documented keys get their
/// fate (refused ones reject the Ingress: an access restriction is never served open); other
/// keys are a warning.
fn unowned(registry: &Registry, key: &str) -> PluginDiagnostic {
    if let Some(p) = registry.plugins().iter().find(|p| owns(&p.info, key)) {
        let message = format!(
            "ignored: owned by plugin `{}`, which this Ingress does not attach (add it to {PLUGINS_ANNOTATION})",
            p.info.name
        );
        return PluginDiagnostic::new(Severity::Warning, key, None, message);
    }
    let (severity, message) = match crate::compat::fate(key) {
        Some(Entry {
            fate: Fate::Refused,
            reason,
        }) => (Severity::Error, format!("refused: {reason}")),
        Some(Entry {
            fate: Fate::Ignored,
            reason,
        }) => (Severity::Warning, format!("ignored: {reason}")),
        // Documented as owned, yet no loaded plugin owns it: the plugin failed to load, so
        // what it would enforce is not enforced.
        Some(Entry {
            fate: Fate::Owned,
            reason,
        }) => (
            Severity::Error,
            format!("refused: owned by {reason}, which is not loaded"),
        ),
        None => (
            Severity::Warning,
            "ignored: no plugin owns this annotation".to_string(),
        ),
    };
    PluginDiagnostic::new(severity, key, None, message)
}

/// What `plugin` may reach on `route` under `grant`, or the annotation and reason it may not
/// attach: it imports a capability the route does not grant, or a granted Secret cannot be
/// read.
fn grant_for(
    plugin: &LoadedPlugin,
    grant: &Grant,
    route: &Route,
    secrets: &dyn SecretSource,
) -> Result<Arc<Granted>, (String, String)> {
    let name = plugin.info.name.as_str();
    if let Some(why) = grant.refusal(name, plugin.capabilities()) {
        return Err((grants_key(name), why));
    }
    Granted::resolve(grant, name, &route.namespace, secrets)
        .map(Arc::new)
        .map_err(|why| (grants_key(name), why))
}

fn call_failed(e: &CallError, plugin: &str) -> PluginDiagnostic {
    PluginDiagnostic::new(Severity::Error, "", Some(plugin), e.to_string())
}
