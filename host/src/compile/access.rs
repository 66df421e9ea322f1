//! Compile step for access rules: what the plugins stated ([`AccessRules`]) becomes a route's
//! executable [`Access`], with the Secrets it names read and parsed here, once per generation.
//!
//! Owns the namespace rule for referenced objects (a route reads Secrets of its own namespace
//! only, unless the operator passed `--allow-cross-namespace-resources`, ingress-nginx's
//! option of that name) and fails closed: a rule whose Secret is missing, unreadable or
//! empty rejects the route instead of serving it open. It must not touch the request path.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::access::limit::{LimitRule, Limits};
use crate::access::{Access, BasicAuth, DigestAuth, ExternalAuth, Sources, basic::Users, external};
use crate::plugin::{
    AccessRules, BasicAuthRule, ClientTlsRule, ClientVerify, DigestAuthRule, ObjectRef,
};
use crate::tls::ClientTls;
use crate::tls::client::{ClientAuth, VerifyMode};

/// Rate-limit state by Ingress, kept across generations: a reload (an endpoint change, another
/// tenant's edit) must not hand every client a fresh burst. An Ingress whose rule changed gets
/// new, empty limits; entries die with the last generation using them.
#[derive(Debug, Default)]
pub struct LimitsRegistry {
    by_ingress: Mutex<HashMap<Arc<str>, Weak<Limits>>>,
}

impl LimitsRegistry {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The limits of Ingress `key` for `rule`: the live ones if the rule is unchanged.
    pub fn get(&self, key: &Arc<str>, rule: &LimitRule) -> Arc<Limits> {
        let mut map = self
            .by_ingress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = map.get(key).and_then(Weak::upgrade)
            && live.rule() == rule
        {
            return live;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let limits = Limits::new(rule.clone());
        map.insert(key.clone(), Arc::downgrade(&limits));
        limits
    }
}

/// What compile needs to resolve references.
pub struct Refs<'b, 'a> {
    pub secrets: &'b HashMap<(&'a str, &'a str), &'a Secret>,
    pub config_maps: &'b HashMap<(&'a str, &'a str), &'a ConfigMap>,
    pub allow_cross_namespace: bool,
    pub limits: &'b LimitsRegistry,
    /// External auth may reach loopback addresses (not in cluster mode, where loopback is the
    /// proxy itself).
    pub allow_loopback: bool,
}

/// The executable rules for a route of `namespace`, `None` when nothing restricts it; `Err`
/// says why the route cannot be served safely.
pub fn build(
    rules: &AccessRules,
    namespace: &str,
    refs: &Refs<'_, '_>,
    route: RouteFacts,
) -> Result<Option<Arc<Access>>, String> {
    let sources = (!rules.allow.is_empty() || !rules.deny.is_empty())
        .then(|| Sources::new(rules.allow.clone(), rules.deny.clone()));
    let basic = rules
        .basic_auth
        .as_ref()
        .map(|b| basic_auth(b, namespace, refs))
        .transpose()?;
    let digest = rules
        .digest_auth
        .as_ref()
        .map(|d| digest_auth(d, namespace, refs))
        .transpose()?;
    let external = match &rules.external {
        Some(rule) => {
            let headers = match &rules.external_headers {
                Some(cm) => proxy_set_headers(cm, namespace, refs)?,
                None => Vec::new(),
            };
            Some(external_auth(rule, refs, route)?.with_headers(headers))
        }
        None => None,
    };
    if sources.is_none() && basic.is_none() && digest.is_none() && external.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Access {
        sources,
        basic,
        digest,
        external,
        satisfy: rules.satisfy.unwrap_or_default(),
    })))
}

fn basic_auth(
    rule: &BasicAuthRule,
    namespace: &str,
    refs: &Refs<'_, '_>,
) -> Result<BasicAuth, String> {
    let (secret, name) = referenced("Secret", refs.secrets, &rule.secret, namespace, refs)?;
    let users = Users::parse(rule.format, &secret_data(secret))
        .map_err(|e| format!("basic-auth Secret {name}: {e}"))?;
    Ok(BasicAuth::new(&rule.realm, users))
}

fn digest_auth(
    rule: &DigestAuthRule,
    namespace: &str,
    refs: &Refs<'_, '_>,
) -> Result<DigestAuth, String> {
    let (secret, name) = referenced("Secret", refs.secrets, &rule.secret, namespace, refs)?;
    DigestAuth::new(&rule.realm, &secret_data(secret))
        .map_err(|e| format!("digest-auth Secret {name}: {e}"))
}

/// `auth-proxy-set-headers`: every entry of the ConfigMap is a header for the subrequests.
/// Values are literal (nginx variables in them are not substituted).
fn proxy_set_headers(
    cm: &ObjectRef,
    namespace: &str,
    refs: &Refs<'_, '_>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let (map, name) = referenced("ConfigMap", refs.config_maps, cm, namespace, refs)
        .map_err(|why| format!("auth-proxy-set-headers: {why}"))?;
    map.data
        .iter()
        .flatten()
        .map(|(k, v)| {
            let header = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("ConfigMap {name}: `{k}` is not a header name"))?;
            let value = http::HeaderValue::from_str(v.trim()).map_err(|_| {
                format!("ConfigMap {name}: the value of `{k}` is not a header value")
            })?;
            Ok((header, value))
        })
        .collect()
}

/// A Secret's data as plain bytes by key.
fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// What an access rule needs to know about its Ingress.
#[derive(Clone, Copy, Debug)]
pub struct RouteFacts {
    /// Connect plus read timeout: how long an auth subrequest may take.
    pub auth_deadline: std::time::Duration,
    /// Every host the Ingress routes is an exact name (no wildcard, no catch-all).
    pub exact_hosts: bool,
}

fn external_auth(
    rule: &external::ExternalAuthRule,
    refs: &Refs<'_, '_>,
    route: RouteFacts,
) -> Result<ExternalAuth, String> {
    match external::auth_host(rule) {
        external::AuthHost::Literal => {}
        external::AuthHost::RequestHost if route.exact_hosts => {}
        external::AuthHost::RequestHost => {
            return Err("the auth URL's host is the request's ($host), but this Ingress also routes wildcard or unnamed hosts: a client could send authentication to a server of its choosing; name the auth host".into());
        }
        external::AuthHost::ClientControlled => {
            return Err("the auth URL's host comes from the request (only $host is allowed there, on Ingresses with exact hosts)".into());
        }
    }
    if let Some(why) = external::check_literal(rule, refs.allow_loopback) {
        return Err(why);
    }
    Ok(ExternalAuth::new(
        rule.clone(),
        route.auth_deadline,
        refs.allow_loopback,
    ))
}

/// A route's client certificate rules, with the CA bundle (and CRL) read from its Secret.
pub fn client_tls(
    rule: &ClientTlsRule,
    namespace: &str,
    refs: &Refs<'_, '_>,
) -> Result<Arc<ClientTls>, String> {
    let (secret, name) = referenced("Secret", refs.secrets, &rule.secret, namespace, refs)?;
    let data = secret.data.as_ref();
    let ca = data
        .and_then(|d| d.get("ca.crt"))
        .ok_or_else(|| format!("Secret {name} has no ca.crt"))?;
    let crl = data.and_then(|d| d.get("ca.crl")).map(|c| c.0.as_slice());
    let auth = client_auth(&ca.0, crl, rule.depth).map_err(|e| format!("Secret {name}: {e}"))?;
    let match_cn = rule
        .match_cn
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| format!("auth-tls-match-cn is not a regular expression: {e}"))?;
    let error_page = rule
        .error_page
        .as_deref()
        .map(http::HeaderValue::from_str)
        .transpose()
        .map_err(|_| "auth-tls-error-page is not a valid URL".to_string())?;
    Ok(Arc::new(ClientTls {
        auth,
        mode: match rule.verify {
            ClientVerify::On => VerifyMode::On,
            ClientVerify::Optional => VerifyMode::Optional,
            ClientVerify::OptionalNoCa => VerifyMode::OptionalNoCa,
        },
        error_page,
        pass_certificate: rule.pass_certificate,
        match_cn,
    }))
}

/// The trust for a CA bundle, CRL and depth: the same `Arc` as long as they are unchanged,
/// across generations. Connections judged under it stay valid through reloads (a route only
/// accepts a verdict made under its own trust, by identity); a changed CA or CRL is new trust,
/// so connections judged under the old one must reconnect.
fn client_auth(
    ca: &[u8],
    crl: Option<&[u8]>,
    depth: u32,
) -> Result<Arc<ClientAuth>, crate::tls::client::ClientAuthError> {
    static LIVE: std::sync::OnceLock<Mutex<HashMap<[u8; 32], Weak<ClientAuth>>>> =
        std::sync::OnceLock::new();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [ca, crl.unwrap_or_default(), &depth.to_be_bytes()] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    let mut live = LIVE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(auth) = live.get(&key).and_then(Weak::upgrade) {
        return Ok(auth);
    }
    live.retain(|_, w| w.strong_count() > 0);
    let auth = Arc::new(ClientAuth::new(ca, crl, depth)?);
    live.insert(key, Arc::downgrade(&auth));
    Ok(auth)
}

/// The object `r` names of kind `kind` (the route's `namespace` when `r` names none), if the
/// route may read it, with its `NS/NAME` for messages.
/// The Secrets a plugin's `capabilities` grant names, read with the same namespace rule as
/// every other reference.
pub struct PluginSecrets<'r, 'b, 'a> {
    pub refs: &'r Refs<'b, 'a>,
    pub namespace: &'r str,
}

impl crate::plugin::SecretSource for PluginSecrets<'_, '_, '_> {
    fn secret(&self, name: &str) -> Result<crate::plugin::SecretData, String> {
        let r = ObjectRef {
            namespace: None,
            name: name.to_string(),
        };
        let (secret, _) = referenced("Secret", self.refs.secrets, &r, self.namespace, self.refs)?;
        Ok(Arc::new(secret_data(secret)))
    }

    fn loopback_reachable(&self) -> bool {
        self.refs.allow_loopback
    }
}

fn referenced<'a, K>(
    kind: &str,
    objects: &HashMap<(&str, &str), &'a K>,
    r: &ObjectRef,
    namespace: &str,
    refs: &Refs<'_, '_>,
) -> Result<(&'a K, String), String> {
    let ns = r.namespace.as_deref().unwrap_or(namespace);
    let full = format!("{ns}/{}", r.name);
    if ns != namespace && !refs.allow_cross_namespace {
        return Err(format!(
            "{kind} {full} is in another namespace; routes read {kind}s of their own namespace only (--allow-cross-namespace-resources lifts this)"
        ));
    }
    let object = objects
        .get(&(ns, r.name.as_str()))
        .copied()
        .ok_or_else(|| format!("{kind} {full} not found"))?;
    Ok((object, full))
}
