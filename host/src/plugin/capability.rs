//! Capabilities: the optional imports a plugin may use (`clock`, `random`, `counters`,
//! `secrets`, `http` in `wit/plugin.wit`), what a component asks for, and what a route grants
//! (those, and the backends `request.set-backend` may choose).
//!
//! Owns the rule "no grant, no import": a component's capability imports are read from its
//! type once, at load ([`Capabilities::of_component`]); a route grants them with
//! `wasmgress.io/plugin.<name>.capabilities` ([`Grant::parse`]); attaching a plugin that
//! imports something its route does not grant fails with a diagnostic naming it
//! ([`Grant::refusal`]). What a granted instance may reach at run time ([`Granted`]: the
//! Secrets' values, the counter scope) is fixed when the route is configured. The host
//! functions check the grant again on every call, so an instance can never use more than its
//! route granted even if the attach check were bypassed. This module must not read sources
//! or routes: Secrets come through [`SecretSource`], which the compile stage implements.

use super::counters::{self, Scope};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One optional import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Clock,
    Random,
    Counters,
    Secrets,
    Http,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Clock,
        Capability::Random,
        Capability::Counters,
        Capability::Secrets,
        Capability::Http,
    ];

    /// The WIT interface name (`clock`...), also the word a grant uses.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Clock => "clock",
            Capability::Random => "random",
            Capability::Counters => "counters",
            Capability::Secrets => "secrets",
            Capability::Http => "http",
        }
    }

    /// The capability a component import names (`wasmgress:plugin/clock@0.2.0`), if any.
    pub fn of_import(import: &str) -> Option<Capability> {
        let interface = import.strip_prefix("wasmgress:plugin/")?;
        let interface = interface.split('@').next().unwrap_or(interface);
        Capability::ALL.into_iter().find(|c| c.name() == interface)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    /// The capabilities a component imports.
    pub fn of_component(component: &wasmtime::component::Component) -> Self {
        let engine = component.engine();
        let mut set = Capabilities::default();
        for (name, _) in component.component_type().imports(engine) {
            if let Some(c) = Capability::of_import(name) {
                set.insert(c);
            }
        }
        set
    }

    pub fn insert(&mut self, c: Capability) {
        self.0 |= c.bit();
    }

    pub fn contains(self, c: Capability) -> bool {
        self.0 & c.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// In a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Capability::name).collect();
        f.write_str(&names.join(", "))
    }
}

/// What a route grants one plugin: `clock, random, counters, secrets(jwt-keys, other),
/// http(auth.example.com, 10.0.0.7:8080), backends(canary:80)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub capabilities: Capabilities,
    /// The Secrets `secrets` may read, by name, in the route's namespace.
    pub secrets: Vec<String>,
    /// The hosts `http` may call.
    pub hosts: Vec<HostGrant>,
    /// The backends `request.set-backend` may choose (`SERVICE:PORT`, the route's namespace).
    pub backends: Vec<String>,
}

/// A host `http` may call: a name or address, and a port (`None`: the scheme's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    /// Lowercase DNS name, IPv4 address, or IPv6 address without brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl HostGrant {
    pub(crate) fn parse(s: &str) -> Result<HostGrant, String> {
        let bad = || format!("`{s}` is not a host or `HOST:PORT`");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(bad()),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad))
            .transpose()?;
        let host = host.to_ascii_lowercase();
        let ok = host.parse::<std::net::IpAddr>().is_ok() || is_dns_name(&host);
        if !ok {
            return Err(bad());
        }
        Ok(HostGrant { host, port })
    }

    /// True when a URL naming `host` (lowercase, IPv6 without brackets) and `port` (the
    /// scheme's default when the URL has none) is covered.
    pub fn covers(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.host == host && self.port.unwrap_or(default_port) == port
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `SERVICE:PORT`, the port a number or a port name.
fn is_backend(s: &str) -> bool {
    let Some((service, port)) = s.split_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0)
        || (!port.is_empty()
            && port.len() <= 15
            && port
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    is_dns_name(service) && !service.contains('.') && port_ok
}

impl Grant {
    /// Parses the value of `wasmgress.io/plugin.<name>.capabilities`.
    pub fn parse(value: &str) -> Result<Grant, String> {
        const WORDS: &str = "clock, random, counters, secrets(NAME, ...), http(HOST[:PORT], ...), backends(SERVICE:PORT, ...)";
        let mut grant = Grant::default();
        let mut backends_seen = false;
        let mut rest = value.trim();
        while !rest.is_empty() {
            let end = rest.find([',', '(']).unwrap_or(rest.len());
            let word = rest[..end].trim();
            let capability = Capability::ALL.into_iter().find(|c| c.name() == word);
            match capability {
                Some(c) if grant.capabilities.contains(c) => {
                    return Err(format!("`{word}` is granted twice"));
                }
                Some(c) => grant.capabilities.insert(c),
                None if word == "backends" && backends_seen => {
                    return Err("`backends` is granted twice".into());
                }
                None if word == "backends" => backends_seen = true,
                None => return Err(format!("`{word}` is not a capability ({WORDS})")),
            }
            rest = &rest[end..];
            let listed = matches!(
                capability,
                Some(Capability::Secrets) | Some(Capability::Http) | None
            );
            if let Some(args) = rest.strip_prefix('(') {
                let close = args
                    .find(')')
                    .ok_or_else(|| format!("`{word}(` is not closed with `)`"))?;
                if !listed {
                    return Err(format!("`{word}` takes no list"));
                }
                for item in args[..close].split(',').map(str::trim) {
                    grant.add(capability, item)?;
                }
                rest = args[close + 1..].trim_start();
            } else if listed {
                return Err(format!("`{word}` needs a list: {WORDS}"));
            }
            rest = match rest.strip_prefix(',') {
                Some(r) => r.trim_start(),
                None if rest.is_empty() => rest,
                None => return Err(format!("expected `,` before `{rest}`")),
            };
        }
        Ok(grant)
    }

    /// One item of a listed grant (`capability` `None`: `backends`).
    fn add(&mut self, capability: Option<Capability>, item: &str) -> Result<(), String> {
        match capability {
            Some(Capability::Secrets) if is_object_name(item) => {
                self.secrets.push(item.to_string());
            }
            Some(Capability::Secrets) => return Err(format!("`{item}` is not a Secret name")),
            Some(_) => self.hosts.push(HostGrant::parse(item)?),
            None if is_backend(item) => self.backends.push(item.to_string()),
            None => {
                return Err(format!(
                    "`{item}` is not a backend: `SERVICE:PORT` (a Service of the route's namespace, a port number or name)"
                ));
            }
        }
        Ok(())
    }

    /// Why `plugin`, which imports `wanted`, cannot attach under this grant; `None` when every
    /// import is granted.
    pub fn refusal(&self, plugin: &str, wanted: Capabilities) -> Option<String> {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|c| !self.capabilities.contains(*c))
            .map(Capability::name)
            .collect();
        if missing.is_empty() {
            return None;
        }
        let plural = if missing.len() == 1 { "y" } else { "ies" };
        let add: Vec<&str> = missing
            .iter()
            .map(|m| match *m {
                "secrets" => "secrets(NAME, ...)",
                "http" => "http(HOST[:PORT], ...)",
                m => m,
            })
            .collect();
        Some(format!(
            "imports the `{}` capabilit{plural}, which this route does not grant: add `{}` to {}",
            missing.join("`, `"),
            add.join(", "),
            grants_key(plugin),
        ))
    }
}

/// The annotation that grants a plugin its capabilities.
pub fn grants_key(plugin: &str) -> String {
    format!("{}{plugin}.capabilities", super::registry::PLUGIN_PREFIX)
}

/// A Kubernetes object name (DNS subdomain).
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A Secret's data, key to value.
pub type SecretData = Arc<BTreeMap<String, Vec<u8>>>;

/// Reads the Secrets a route grants (the compile stage's view of the sources, with its
/// namespace rule).
pub trait SecretSource {
    /// The Secret `name` in the route's namespace, or why it cannot be read.
    fn secret(&self, name: &str) -> Result<SecretData, String>;

    /// Whether the route's outbound calls (`http`) may reach loopback addresses: only
    /// outside a cluster, where the proxy's own admin port is the operator's.
    fn loopback_reachable(&self) -> bool {
        false
    }
}

/// For callers without Secrets (`validate` of a lone Ingress, tests): every lookup fails.
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn secret(&self, name: &str) -> Result<SecretData, String> {
        Err(format!("Secret `{name}` not found"))
    }
}

/// What an instance of a plugin may reach on its route.
#[derive(Debug)]
pub struct Granted {
    pub capabilities: Capabilities,
    /// The route's namespace (the plugin's metrics are labelled with it).
    pub namespace: Arc<str>,
    secrets: BTreeMap<String, SecretData>,
    counters: Option<Arc<Scope>>,
    /// The hosts `http` may call.
    hosts: Vec<HostGrant>,
    /// The backends `request.set-backend` may choose.
    backends: Vec<String>,
    /// Outbound calls may reach loopback addresses (outside a cluster only).
    pub allow_loopback: bool,
}

impl Default for Granted {
    /// Nothing granted, on no route (`describe` at load).
    fn default() -> Self {
        Granted {
            capabilities: Capabilities::default(),
            namespace: "".into(),
            secrets: BTreeMap::new(),
            counters: None,
            hosts: Vec::new(),
            backends: Vec::new(),
            allow_loopback: false,
        }
    }
}

impl Granted {
    /// Resolves `grant` for `plugin` on a route of `namespace`.
    pub fn resolve(
        grant: &Grant,
        plugin: &str,
        namespace: &str,
        source: &dyn SecretSource,
    ) -> Result<Granted, String> {
        for h in &grant.hosts {
            // Each port the grant may reach (a bare host: both schemes' defaults).
            let ports = h.port.map_or(vec![80, 443], |p| vec![p]);
            if let Some(why) = ports
                .into_iter()
                .find_map(|p| super::outbound::operator_refuses(&h.host, p))
            {
                return Err(format!("`http({})`: {why}", h.host));
            }
        }
        let mut secrets = BTreeMap::new();
        for name in &grant.secrets {
            secrets.insert(name.clone(), source.secret(name)?);
        }
        let counters = grant
            .capabilities
            .contains(Capability::Counters)
            .then(|| counters::scope(plugin, namespace));
        Ok(Granted {
            capabilities: grant.capabilities,
            namespace: namespace.into(),
            secrets,
            counters,
            hosts: grant.hosts.clone(),
            backends: grant.backends.clone(),
            allow_loopback: source.loopback_reachable(),
        })
    }

    pub fn allows(&self, c: Capability) -> bool {
        self.capabilities.contains(c)
    }

    /// A granted Secret's value.
    pub fn secret(&self, name: &str, key: &str) -> Option<&[u8]> {
        self.secrets.get(name)?.get(key).map(Vec::as_slice)
    }

    /// True when `http` may call `host` (lowercase, IPv6 without brackets) on `port`.
    pub fn allows_host(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.allows(Capability::Http)
            && self
                .hosts
                .iter()
                .any(|h| h.covers(host, port, default_port))
    }

    /// Every backend `request.set-backend` may choose.
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// The granted backend `name` (`SERVICE:PORT` as written in the grant), if granted.
    pub fn backend(&self, name: &str) -> Option<&str> {
        self.backends
            .iter()
            .find(|b| *b == name)
            .map(String::as_str)
    }

    /// The counter scope, when `counters` is granted.
    pub fn counters(&self) -> Option<&Scope> {
        self.counters.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_name_capabilities() {
        assert_eq!(
            Capability::of_import("wasmgress:plugin/clock@0.2.0"),
            Some(Capability::Clock)
        );
        assert_eq!(
            Capability::of_import("wasmgress:plugin/secrets@0.2.0"),
            Some(Capability::Secrets)
        );
        assert_eq!(Capability::of_import("wasmgress:plugin/types@0.2.0"), None);
        assert_eq!(Capability::of_import("wasi:clocks/wall-clock@0.2.0"), None);
    }

    #[test]
    fn grants_parse() {
        let g = Grant::parse(" clock, counters , secrets( jwt-keys , api.keys ) ,random").unwrap();
        assert_eq!(
            g.capabilities.to_string(),
            "clock, random, counters, secrets"
        );
        assert_eq!(g.secrets, ["jwt-keys", "api.keys"]);
        assert_eq!(Grant::parse("").unwrap(), Grant::default());
        for bad in [
            "files",
            "clock clock",
            "clock, clock",
            "secrets",
            "secrets(",
            "secrets(Bad_Name)",
            "clock(x)",
            "secrets()",
            "http",
            "http(a b)",
            "http(host:0)",
            "http(host:99999)",
            "http([::1)",
            "backends",
            "backends(svc)",
            "backends(svc:80), backends(b:80)",
            "backends(ns.svc:80)",
        ] {
            assert!(Grant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_and_backends_parse() {
        let g = Grant::parse(
            "http(Auth.Example.com, 10.0.0.7:8080, [::1]:9), backends(canary:80, stable:http)",
        )
        .unwrap();
        assert!(g.capabilities.contains(Capability::Http));
        assert_eq!(g.hosts.len(), 3);
        assert!(g.hosts[0].covers("auth.example.com", 443, 443));
        assert!(!g.hosts[0].covers("auth.example.com", 8443, 443));
        assert!(g.hosts[1].covers("10.0.0.7", 8080, 80));
        assert!(!g.hosts[1].covers("10.0.0.7", 80, 80));
        assert!(g.hosts[2].covers("::1", 9, 80));
        assert_eq!(g.backends, ["canary:80", "stable:http"]);
        // `backends` is a grant, not an import.
        assert_eq!(g.capabilities.to_string(), "http");
    }

    #[test]
    fn refusal_names_what_is_missing() {
        let grant = Grant::parse("clock").unwrap();
        let mut wanted = Capabilities::default();
        wanted.insert(Capability::Clock);
        assert_eq!(grant.refusal("jwt", wanted), None);
        wanted.insert(Capability::Secrets);
        let why = grant.refusal("jwt", wanted).unwrap();
        assert!(why.contains("`secrets`"), "{why}");
        assert!(
            why.contains("wasmgress.io/plugin.jwt.capabilities"),
            "{why}"
        );
    }
}
