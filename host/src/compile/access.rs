//! Compile step for access rules: what the plugins stated ([`AccessRules`]) becomes a route's
//! executable [`Access`], with the Secrets it names read and parsed here, once per generation.
//!
//! Owns the namespace rule for referenced objects (a route reads Secrets of its own namespace
//! only, unless the operator passed `--allow-cross-namespace-resources`, ingress-nginx's
//! option of that name) and fails closed: a rule whose Secret is missing, unreadable or
//! empty rejects the route instead of serving it open. It must not touch the request path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use crate::access::{Access, BasicAuth, Sources, basic::Users};
use crate::plugin::{AccessRules, BasicAuthRule};

/// What compile needs to resolve references.
pub struct Refs<'b, 'a> {
    pub secrets: &'b HashMap<(&'a str, &'a str), &'a Secret>,
    pub allow_cross_namespace: bool,
}

/// The executable rules for a route of `namespace`, `None` when nothing restricts it; `Err`
/// says why the route cannot be served safely.
pub fn build(
    rules: &AccessRules,
    namespace: &str,
    refs: &Refs<'_, '_>,
) -> Result<Option<Arc<Access>>, String> {
    let sources = (!rules.allow.is_empty() || !rules.deny.is_empty())
        .then(|| Sources::new(rules.allow.clone(), rules.deny.clone()));
    let basic = rules
        .basic_auth
        .as_ref()
        .map(|b| basic_auth(b, namespace, refs))
        .transpose()?;
    if sources.is_none() && basic.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Access {
        sources,
        basic,
        satisfy: rules.satisfy.unwrap_or_default(),
    })))
}

fn basic_auth(
    rule: &BasicAuthRule,
    namespace: &str,
    refs: &Refs<'_, '_>,
) -> Result<BasicAuth, String> {
    let secret = secret(&rule.secret.namespace, &rule.secret.name, namespace, refs)?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let users = Users::parse(rule.format, &data).map_err(|e| {
        format!(
            "basic-auth Secret {}/{}: {e}",
            rule.secret.namespace.as_deref().unwrap_or(namespace),
            rule.secret.name
        )
    })?;
    Ok(BasicAuth::new(&rule.realm, users))
}

/// The Secret `wanted_ns/name` (the route's namespace when `None`), if this route may read it.
fn secret<'a>(
    wanted_ns: &Option<String>,
    name: &str,
    namespace: &str,
    refs: &Refs<'_, 'a>,
) -> Result<&'a Secret, String> {
    let ns = wanted_ns.as_deref().unwrap_or(namespace);
    if ns != namespace && !refs.allow_cross_namespace {
        return Err(format!(
            "Secret {ns}/{name} is in another namespace; routes read Secrets of their own namespace only (--allow-cross-namespace-resources lifts this)"
        ));
    }
    refs.secrets
        .get(&(ns, name))
        .copied()
        .ok_or_else(|| format!("Secret {ns}/{name} not found"))
}
