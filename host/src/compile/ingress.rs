//! One Ingress to a [`Unit`]: its validated paths, backends, certificates and policy.
//!
//! Every problem is collected (not just the first) so a user fixes a manifest in one pass.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rustls::sign::CertifiedKey;

use super::backend::Resolver;
use crate::diagnostic::Diagnostic;
use crate::plugin;
use crate::route::{Backend, HostMatch, PathKind, Policy};
use crate::tls;

/// NGINX Inc's controller needed this to allow WebSocket; here it is a no-op.
const NGINX_INC_WEBSOCKET: &str = "nginx.org/websocket-services";

/// A compiled Ingress, kept whole so a later broken edit can fall back to it.
#[derive(Debug)]
pub struct Unit {
    /// `namespace/name`.
    pub key: Arc<str>,
    /// Precedence among Ingresses: oldest first, then namespace/name.
    pub order: (Option<Time>, Arc<str>),
    pub origin: Option<Arc<str>>,
    pub paths: Vec<UnitPath>,
    /// The hosts of its rules (`Any` for a rule without a host); empty for an Ingress without
    /// rules, whose default backend is then a catch-all.
    pub hosts: Vec<HostMatch>,
    pub default_backend: Option<Arc<Backend>>,
    pub certificates: Vec<(String, Arc<CertifiedKey>)>,
    /// The policy every route of this Ingress starts from; `ssl_redirect` here means "allowed",
    /// and becomes effective only on hosts that have a certificate (or everywhere when
    /// `force_ssl_redirect`).
    pub policy: Policy,
    pub force_ssl_redirect: bool,
    /// A canary Ingress: its paths never serve on their own, they attach to the main routes
    /// with the same host and path (see `compile::canary`).
    pub canary: Option<Arc<crate::canary::Rule>>,
    /// Cookie session affinity, made per route (its cookie path defaults to the route's), and
    /// the key material of its persistent names (the Ingress's UID, else its name).
    pub affinity: Option<(crate::affinity::RuleText, Arc<str>)>,
}

#[derive(Debug)]
pub struct UnitPath {
    pub host: HostMatch,
    pub kind: PathKind,
    pub path: String,
    /// The compiled path, for regex paths.
    pub regex: Option<regex::Regex>,
    pub backend: Arc<Backend>,
    pub field: String,
}

/// How an Ingress is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As it is now: every problem rejects it.
    Fresh,
    /// Its last good spec, standing in for a rejected newer one. What has since gone from the
    /// cluster is served as gone (a missing Service answers 503, a missing Secret's hosts get
    /// the default certificate) instead of rejecting the fallback too.
    LastGood,
}

pub struct Context<'a, 'b> {
    pub resolver: &'b mut Resolver<'a>,
    pub guard: Option<&'a super::backend::EndpointGuard>,
    pub refs: super::access::Refs<'b, 'a>,
    /// The controller-wide external authentication, if configured.
    pub global_auth: Option<&'b crate::plugin::ExternalAuthRule>,
    pub defaults: &'b Policy,
    pub plugins: &'b plugin::Registry,
}

/// Compiles one Ingress; `Err` holds the reasons it is rejected (warnings ride along either way).
pub fn compile(
    ingress: &Ingress,
    origin: Option<Arc<str>>,
    cx: &mut Context<'_, '_>,
    mode: Mode,
) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
    let name = ingress.metadata.name.as_deref().unwrap_or("");
    let key: Arc<str> = format!("{namespace}/{name}").into();
    let object = format!("Ingress {key}");
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    let mut error = |field: String, message: String| {
        errors.push(Diagnostic::error(&object, field, message).at(origin.clone()));
    };

    // Annotations are the plugins' business: each attached plugin's `configure` turns the ones
    // it owns into policy. A plugin error rejects the Ingress like any other error.
    let annotations: std::collections::BTreeMap<String, String> =
        ingress.metadata.annotations.clone().unwrap_or_default();
    let mut policy = cx.defaults.clone();
    let (mut ssl_redirect, mut force_ssl_redirect, mut regex_paths) = (true, false, false);
    let mut canary = None;
    let mut affinity = None;
    let route = plugin::Route::ingress(namespace, name);
    let secrets = super::access::PluginSecrets {
        refs: &cx.refs,
        namespace,
    };
    match plugin::configure_ingress(cx.plugins, &route, &annotations, &secrets) {
        Ok(configured) => {
            notes.extend(
                configured
                    .diagnostics
                    .iter()
                    .map(|d| d.to_diagnostic(&object).at(origin.clone())),
            );
            let p = configured.policy;
            p.apply_to(&mut policy);
            canary = p.canary.clone();
            affinity = p.affinity.clone();
            if let Some(mirror) = &p.mirror {
                let mirror = crate::mirror::Mirror {
                    allow_loopback: cx.refs.allow_loopback,
                    ..mirror.clone()
                };
                match mirror.check() {
                    Ok(()) => policy.mirror = Some(Arc::new(mirror)),
                    Err(why) => error(
                        "metadata.annotations[nginx.ingress.kubernetes.io/mirror-target]".into(),
                        why,
                    ),
                }
            }
            ssl_redirect = p.ssl_redirect.unwrap_or(true);
            force_ssl_redirect = p.force_ssl_redirect.unwrap_or(false);
            regex_paths = p.use_regex.unwrap_or(false) || p.rewrite_target.is_some();
            policy.rewrite_target = p.rewrite_target.map(Arc::from);
            policy.hooks = p.hooks;
            policy.backends = alternates(&policy.hooks, namespace, cx, &mut |field, why| {
                notes.push(Diagnostic::warning(&object, field, why).at(origin.clone()));
            });
            let route = super::access::RouteFacts {
                auth_deadline: policy.connect_timeout + policy.read_timeout,
                exact_hosts: exact_hosts(ingress),
            };
            let mut rules = p.access.clone();
            if rules.external.is_none() && p.global_auth != Some(false) {
                rules.external = cx.global_auth.cloned();
            }
            match super::access::build(&rules, namespace, &cx.refs, route) {
                Ok(access) => policy.access = access,
                // No mode serves a restricted route open: its last good version fails too.
                Err(why) => error("metadata.annotations".into(), why),
            }
            policy.limits = p.limits.as_ref().map(|rule| cx.refs.limits.get(&key, rule));
            if let Some(rule) = &p.client_tls {
                match super::access::client_tls(rule, namespace, &cx.refs) {
                    Ok(client_tls) => policy.client_tls = Some(client_tls),
                    Err(why) => error(
                        "metadata.annotations[nginx.ingress.kubernetes.io/auth-tls-secret]".into(),
                        why,
                    ),
                }
            }
            match p.cors.as_ref().map(crate::cors::Cors::new).transpose() {
                Ok(cors) => policy.cors = cors.map(Arc::new),
                Err(why) => error("metadata.annotations".into(), why),
            }
        }
        Err(diagnostics) => {
            for d in diagnostics {
                let d = d.to_diagnostic(&object).at(origin.clone());
                if d.severity == crate::diagnostic::Severity::Error {
                    error(d.field, d.message);
                } else {
                    notes.push(d);
                }
            }
        }
    }
    policy.ssl_redirect = ssl_redirect;
    if annotations.contains_key(NGINX_INC_WEBSOCKET) {
        notes.push(
            Diagnostic::info(
                &object,
                format!("metadata.annotations[{NGINX_INC_WEBSOCKET}]"),
                "not needed: WebSocket upgrades always work on wasmgress",
            )
            .at(origin.clone()),
        );
    }
    if policy.http_version == crate::policy::HttpVersion::Http10
        && policy.hooks.has_request_body_hooks()
    {
        // A hooked body has no length any more, and HTTP/1.0 cannot carry one without: it
        // would reach the upstream empty.
        error(
            "metadata.annotations[nginx.ingress.kubernetes.io/proxy-http-version]".into(),
            "request-body and request-trailers hooks need HTTP/1.1 to the upstream (the body they pass on goes chunked); remove `proxy-http-version: \"1.0\"` or the hook".into(),
        );
    }
    if policy.http_version == crate::policy::HttpVersion::Http10 {
        notes.push(
            Diagnostic::warning(
                &object,
                "metadata.annotations[nginx.ingress.kubernetes.io/proxy-http-version]",
                "HTTP/1.0 cannot carry WebSocket upgrades; WebSocket requests still use HTTP/1.1 to the backend",
            )
            .at(origin.clone()),
        );
    }

    let spec = ingress.spec.clone().unwrap_or_default();
    let service_upstream = policy.service_upstream;
    let mut backend = |b: &IngressBackend, field: &str, notes: &mut Vec<Diagnostic>| {
        let Some(service) = &b.service else {
            return Err((
                format!("{field}.resource"),
                "resource backends are not supported; use a Service backend".to_owned(),
            ));
        };
        let resolved = match service_upstream {
            true => cx.resolver.resolve_cluster_ip(namespace, service),
            false => cx.resolver.resolve(namespace, service),
        };
        let resolved = match (resolved, mode) {
            (Err((sub, why)), Mode::LastGood) => {
                notes.push(
                    Diagnostic::warning(
                        &object,
                        format!("{field}.service.{sub}"),
                        format!("{why}; the last good version answers 503 there"),
                    )
                    .at(origin.clone()),
                );
                let gone = format!("{namespace}/{}", service.name);
                return Ok(Arc::new(Backend::new(gone, Vec::new())));
            }
            (other, _) => other,
        };
        match resolved {
            Ok(resolved) => {
                if !resolved.refused.is_empty() {
                    let guard = cx.guard;
                    let named: Vec<String> = resolved
                        .refused
                        .iter()
                        .take(5)
                        .map(|ip| {
                            let why = guard.and_then(|g| g.refuses(*ip)).unwrap_or("local");
                            format!("{ip} ({why})")
                        })
                        .collect();
                    let more = resolved.refused.len().saturating_sub(named.len());
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    notes.push(
                        Diagnostic::warning(
                            &object,
                            format!("{field}.service"),
                            format!(
                                "endpoint addresses of Service {} refused, the proxy's own host is not a backend: {}{more}",
                                resolved.backend.name,
                                named.join(", ")
                            ),
                        )
                        .at(origin.clone()),
                    );
                }
                if resolved.empty {
                    notes.push(
                        Diagnostic::warning(
                            &object,
                            format!("{field}.service"),
                            format!(
                                "Service {} has no ready endpoints; its requests get 503",
                                resolved.backend.name
                            ),
                        )
                        .at(origin.clone()),
                    );
                }
                Ok(resolved.backend)
            }
            Err((sub, why)) => Err((format!("{field}.service.{sub}"), why)),
        }
    };

    let mut paths = Vec::new();
    let mut hosts = Vec::new();
    let mut rule_hosts = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.as_deref().filter(|h| !h.is_empty());
        // A bad host still has its paths checked, so every problem is reported in one pass.
        let host_ok = match host {
            Some(h) if !valid_host(h) => {
                error(
                    format!("spec.rules[{i}].host"),
                    format!(
                        "{h:?} is not a valid host name (lowercase DNS name, optionally starting with \"*.\")"
                    ),
                );
                false
            }
            Some(h) => {
                hosts.push(h.to_owned());
                true
            }
            None => true,
        };
        let host_match = HostMatch::parse(host);
        if host_ok && !rule_hosts.contains(&host_match) {
            rule_hosts.push(host_match.clone());
        }
        let Some(http) = &rule.http else {
            continue;
        };
        for (j, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let path = p.path.as_deref().unwrap_or("/");
            let kind = match p.path_type.as_str() {
                "Exact" => PathKind::Exact,
                // ingress-nginx treats every path of a regex Ingress as a regex.
                "Prefix" | "ImplementationSpecific" if regex_paths => PathKind::Regex,
                "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                other => {
                    error(
                        format!("{field}.pathType"),
                        format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
                    );
                    continue;
                }
            };
            if let Err(why) = valid_path(path) {
                error(format!("{field}.path"), format!("{path:?} {why}"));
                continue;
            }
            if kind != PathKind::Regex
                && let Some(why) = never_matches(path)
            {
                notes.push(
                    Diagnostic::warning(&object, format!("{field}.path"), why).at(origin.clone()),
                );
            }
            let regex = match kind {
                PathKind::Regex => match crate::route::path_regex(path) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        error(
                            format!("{field}.path"),
                            format!("{path:?} is not a valid regular expression: {e}"),
                        );
                        continue;
                    }
                },
                _ => None,
            };
            match backend(&p.backend, &format!("{field}.backend"), &mut notes) {
                Ok(_) if !host_ok => {}
                Ok(b) => paths.push(UnitPath {
                    host: host_match.clone(),
                    kind,
                    path: path.to_owned(),
                    regex,
                    backend: b,
                    field,
                }),
                Err((f, why)) => error(f, why),
            }
        }
    }

    let default_backend = match &spec.default_backend {
        Some(b) => match backend(b, "spec.defaultBackend", &mut notes) {
            Ok(b) => Some(b),
            Err((f, why)) => {
                error(f, why);
                None
            }
        },
        None => None,
    };

    let mut certificates = Vec::new();
    for (i, entry) in spec.tls.iter().flatten().enumerate() {
        let field = format!("spec.tls[{i}]");
        let covered: Vec<String> = match entry.hosts.as_deref() {
            Some(h) if !h.is_empty() => h.to_vec(),
            _ => hosts.clone(),
        };
        let Some(secret_name) = entry.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            notes.push(
                Diagnostic::info(
                    &object,
                    format!("{field}.secretName"),
                    "no secretName: these hosts use the default certificate",
                )
                .at(origin.clone()),
            );
            continue;
        };
        let Some(secret) = cx.refs.secrets.get(&(namespace, secret_name)) else {
            let why = format!("Secret {namespace}/{secret_name} not found");
            match mode {
                Mode::Fresh => error(format!("{field}.secretName"), why),
                Mode::LastGood => notes.push(
                    Diagnostic::warning(
                        &object,
                        format!("{field}.secretName"),
                        format!("{why}; the last good version serves the default certificate"),
                    )
                    .at(origin.clone()),
                ),
            }
            continue;
        };
        let data = secret.data.as_ref();
        let get = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
        let (Some(cert), Some(key_pem)) = (get("tls.crt"), get("tls.key")) else {
            error(
                format!("{field}.secretName"),
                format!("Secret {namespace}/{secret_name} lacks tls.crt or tls.key"),
            );
            continue;
        };
        match tls::certified_key(cert, key_pem) {
            Ok(certified) => {
                let certified = Arc::new(certified);
                for (k, host) in covered.iter().enumerate() {
                    let field = format!("{field}.hosts[{k}]");
                    match bind_certificate(host, &certified, &rule_hosts) {
                        Ok(()) => certificates.push((host.clone(), certified.clone())),
                        Err(Binding::Invalid) => {
                            error(field, format!("{host:?} is not a valid host name"))
                        }
                        Err(Binding::Refused(why)) => {
                            notes.push(Diagnostic::warning(&object, field, why).at(origin.clone()))
                        }
                    }
                }
            }
            Err(e) => error(
                format!("{field}.secretName"),
                format!("Secret {namespace}/{secret_name}: {e}"),
            ),
        }
    }

    if let Some(rule) = &affinity
        && regex_paths
        && rule.path.is_none()
    {
        error(
            "metadata.annotations[nginx.ingress.kubernetes.io/session-cookie-path]".into(),
            "required with regex paths (use-regex or rewrite-target), as in ingress-nginx: a regular expression is no cookie path, and browsers would never send the cookie back".into(),
        );
    }
    if canary.is_some() {
        let found =
            super::canary::check_unit(&annotations, default_backend.is_some(), &mut certificates);
        for (field, message, refused) in found {
            match refused {
                true => error(field, message),
                false => {
                    notes.push(Diagnostic::warning(&object, field, message).at(origin.clone()))
                }
            }
        }
    }
    if paths.is_empty() && default_backend.is_none() && errors.is_empty() {
        notes.push(
            Diagnostic::warning(
                &object,
                "spec",
                "no rules with paths and no defaultBackend: nothing to serve",
            )
            .at(origin.clone()),
        );
    }
    if !errors.is_empty() {
        errors.extend(notes);
        return Err(errors);
    }
    let affinity = affinity.map(|rule| {
        let uid = ingress.metadata.uid.as_deref().filter(|u| !u.is_empty());
        (rule, uid.map_or_else(|| key.clone(), Arc::from))
    });
    Ok((
        Unit {
            order: (ingress.metadata.creation_timestamp.clone(), key.clone()),
            key,
            origin,
            paths,
            hosts: rule_hosts,
            default_backend,
            certificates,
            policy,
            force_ssl_redirect,
            canary,
            affinity,
        },
        notes,
    ))
}

/// Why a `spec.tls` host does not get its entry's certificate.
enum Binding {
    Invalid,
    /// Valid, but not this Ingress's to serve: the certificate is ignored for the host.
    Refused(String),
}

/// A `spec.tls` entry serves `host` only when the certificate's names cover it and the same
/// Ingress has a rule for it (or has no rules at all): an Ingress cannot serve its certificate
/// for hosts another tenant routes.
fn bind_certificate(
    host: &str,
    key: &rustls::sign::CertifiedKey,
    rule_hosts: &[HostMatch],
) -> Result<(), Binding> {
    if !valid_host(host) {
        return Err(Binding::Invalid);
    }
    let routed = rule_hosts.is_empty()
        || rule_hosts.iter().any(|r| match r {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => {
                host.strip_prefix("*.") == Some(suffix.as_str())
                    || host.split_once('.').is_some_and(|(_, s)| s == suffix)
            }
            HostMatch::Any => false,
        });
    if !routed {
        return Err(Binding::Refused(format!(
            "no rule of this Ingress is for {host}; its certificate is not served for it"
        )));
    }
    if !tls::names_cover(key, host) {
        return Err(Binding::Refused(format!(
            "the certificate's names do not cover {host}; it is not served for it"
        )));
    }
    Ok(())
}

/// A lowercase DNS name, or one with a leading `*.` wildcard label.
/// Every rule names an exact host: no wildcard, no host-less rule, and some rule at all.
fn exact_hosts(ingress: &Ingress) -> bool {
    let rules = ingress.spec.as_ref().and_then(|s| s.rules.as_ref());
    rules.is_some_and(|rules| {
        !rules.is_empty()
            && rules.iter().all(|r| {
                r.host
                    .as_deref()
                    .is_some_and(|h| !h.is_empty() && !h.contains('*'))
            })
    })
}

pub fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Why an Exact or Prefix `path` can never match, if it cannot: requests are matched by their
/// normalised path (decoded, dot segments resolved, slashes merged), which never holds `%`
/// escapes, `.`/`..` segments or `//`. nginx behaves the same; the warning says what to write.
fn never_matches(path: &str) -> Option<String> {
    match crate::route::path::normalize(path) {
        Ok(std::borrow::Cow::Borrowed(_)) => None,
        Ok(normal) => Some(format!(
            "{path:?} never matches: requests are matched by their normalised path (decoded, dot segments resolved, slashes merged); write {normal:?}"
        )),
        Err(e) => Some(format!("{path:?} never matches: {e}")),
    }
}

/// Paths are absolute and printable. They are only ever compared, never rendered into any
/// configuration language, so no other character needs refusing.
fn valid_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with \"/\"");
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain whitespace or control characters");
    }
    Ok(())
}

/// The backends the route's hooks may choose (`backends(SERVICE:PORT, ...)` grants), resolved
/// in the route's namespace. One that cannot be resolved is kept empty (a request sent there
/// gets 503) with a warning: the route itself still serves.
fn alternates(
    hooks: &crate::plugin::HookChain,
    namespace: &str,
    cx: &mut Context<'_, '_>,
    warn: &mut dyn FnMut(String, String),
) -> Arc<[crate::policy::Alternate]> {
    use k8s_openapi::api::networking::v1::{IngressServiceBackend, ServiceBackendPort};
    let mut out = Vec::new();
    for name in hooks.backends() {
        let Some((service, port)) = name.split_once(':') else {
            continue;
        };
        let port = match port.parse::<i32>() {
            Ok(number) => ServiceBackendPort {
                number: Some(number),
                name: None,
            },
            Err(_) => ServiceBackendPort {
                number: None,
                name: Some(port.to_string()),
            },
        };
        let wanted = IngressServiceBackend {
            name: service.to_string(),
            port: Some(port),
        };
        let backend = match cx.resolver.resolve(namespace, &wanted) {
            Ok(resolved) => {
                if resolved.empty {
                    warn(
                        "metadata.annotations".into(),
                        format!(
                            "plugin backend `{name}` has no ready endpoints; requests a plugin sends there get 503"
                        ),
                    );
                }
                resolved.backend
            }
            Err((_, why)) => {
                warn(
                    "metadata.annotations".into(),
                    format!(
                        "plugin backend `{name}`: {why}; requests a plugin sends there get 503"
                    ),
                );
                Arc::new(Backend::new(format!("{namespace}/{name}"), Vec::new()))
            }
        };
        out.push(crate::policy::Alternate {
            name: name.into(),
            backend,
        });
    }
    out.into()
}
