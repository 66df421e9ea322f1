//! The request a hook chain runs for ([`HookRequest`]), behind the `request` handle of
//! `wit/plugin.wit`: its facts, the values plugins keep between hooks, and the changes the
//! request hooks ask for.
//!
//! Owns the bounds and checks of what a plugin may read and change: each plugin sees only the
//! values it set (at most [`MAX_VALUES`] per plugin, [`MAX_VALUE_BYTES`] each); a method, path
//! or query change must be valid in a request line and is accepted only while the request
//! hooks run. The proxy builds one per request on routes with hooks (none elsewhere), lends it
//! to each call, and applies the changes afterwards. This module must not touch the proxy's
//! types: it is handed plain values.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use std::net::IpAddr;
use std::sync::Arc;

/// Values one plugin may keep per request.
pub const MAX_VALUES: usize = 16;
/// Largest kept value (and key).
pub const MAX_VALUE_BYTES: usize = 4096;

/// The route a request matched, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// `service:port`.
    pub service: String,
}

/// What the client's TLS connection established, for hooks.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<Arc<str>>,
    /// Only when the route verifies client certificates and this one passed.
    pub client_subject: Option<HeaderValue>,
    pub client_issuer: Option<HeaderValue>,
}

/// Why a change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRefusal {
    Invalid,
    TooLarge,
    TooLate,
}

struct Kept {
    plugin: u16,
    key: Box<str>,
    value: Bytes,
}

/// One request, as the hooks of its route see and change it.
pub struct HookRequest {
    method: Method,
    scheme: &'static str,
    authority: Option<HeaderValue>,
    path: PathAndQuery,
    id: HeaderValue,
    client: IpAddr,
    tls: Option<TlsInfo>,
    route: Option<Arc<RouteInfo>>,
    kept: Vec<Kept>,
    /// The plugin whose call is in progress (its place in the chain).
    pub(crate) current: u16,
    /// Changes are accepted (the request hooks are running).
    pub(crate) open: bool,
    method_changed: bool,
    path_changed: bool,
}

/// The plain facts a [`HookRequest`] starts from.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub scheme: &'static str,
    pub authority: Option<HeaderValue>,
    /// Path and query as they go upstream.
    pub path: PathAndQuery,
    pub id: HeaderValue,
    pub client: IpAddr,
    pub tls: Option<TlsInfo>,
}

impl HookRequest {
    pub fn new(facts: RequestFacts<'_>, route: Option<Arc<RouteInfo>>) -> Self {
        HookRequest {
            method: facts.method.clone(),
            scheme: facts.scheme,
            authority: facts.authority,
            path: facts.path,
            id: facts.id,
            client: facts.client,
            tls: facts.tls,
            route,
            kept: Vec::new(),
            current: 0,
            open: false,
            method_changed: false,
            path_changed: false,
        }
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    pub fn authority(&self) -> &str {
        self.authority
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or("")
    }

    pub fn path(&self) -> &PathAndQuery {
        &self.path
    }

    pub fn id(&self) -> &str {
        self.id.to_str().unwrap_or("")
    }

    pub fn client(&self) -> IpAddr {
        self.client
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    pub fn route(&self) -> Option<&RouteInfo> {
        self.route.as_deref()
    }

    /// The method a hook set, if one did.
    pub fn changed_method(&self) -> Option<&Method> {
        self.method_changed.then_some(&self.method)
    }

    /// The path and query a hook set, if one did.
    pub fn changed_path(&self) -> Option<&PathAndQuery> {
        self.path_changed.then_some(&self.path)
    }

    /// The current plugin's value for `key`.
    pub fn value(&self, key: &str) -> Option<&[u8]> {
        self.kept
            .iter()
            .find(|k| k.plugin == self.current && &*k.key == key)
            .map(|k| &k.value[..])
    }

    /// Keeps a value for the current plugin.
    pub fn set_value(&mut self, key: &str, value: Vec<u8>) -> Result<(), RequestRefusal> {
        if key.len() > MAX_VALUE_BYTES || value.len() > MAX_VALUE_BYTES {
            return Err(RequestRefusal::TooLarge);
        }
        let current = self.current;
        if let Some(k) = self
            .kept
            .iter_mut()
            .find(|k| k.plugin == current && &*k.key == key)
        {
            k.value = value.into();
            return Ok(());
        }
        if self.kept.iter().filter(|k| k.plugin == current).count() >= MAX_VALUES {
            return Err(RequestRefusal::TooLarge);
        }
        self.kept.push(Kept {
            plugin: current,
            key: key.into(),
            value: value.into(),
        });
        Ok(())
    }

    fn changeable(&self) -> Result<(), RequestRefusal> {
        if self.open {
            Ok(())
        } else {
            Err(RequestRefusal::TooLate)
        }
    }

    /// Changes the method sent upstream.
    pub fn set_method(&mut self, method: &str) -> Result<(), RequestRefusal> {
        self.changeable()?;
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| RequestRefusal::Invalid)?;
        // CONNECT changes what the request is (a tunnel), not where it goes.
        if method == Method::CONNECT {
            return Err(RequestRefusal::Invalid);
        }
        self.method = method;
        self.method_changed = true;
        Ok(())
    }

    /// Changes the path sent upstream, keeping the query.
    pub fn set_path(&mut self, path: &str) -> Result<(), RequestRefusal> {
        self.changeable()?;
        if !path.starts_with('/') || path.contains(['?', '#']) || path.len() > MAX_VALUE_BYTES {
            return Err(RequestRefusal::Invalid);
        }
        let next = match self.path.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        self.replace(next)
    }

    /// Replaces the query sent upstream (`None` removes it).
    pub fn set_query(&mut self, query: Option<&str>) -> Result<(), RequestRefusal> {
        self.changeable()?;
        let path = self.path.path();
        let next = match query {
            Some(q) if q.contains('#') || q.len() > MAX_VALUE_BYTES => {
                return Err(RequestRefusal::Invalid);
            }
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        self.replace(next)
    }

    fn replace(&mut self, next: String) -> Result<(), RequestRefusal> {
        // `PathAndQuery` refuses controls, spaces and other bytes a request line cannot carry.
        let parsed = PathAndQuery::try_from(next).map_err(|_| RequestRefusal::Invalid)?;
        if !parsed.path().starts_with('/') {
            return Err(RequestRefusal::Invalid);
        }
        self.path = parsed;
        self.path_changed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> HookRequest {
        HookRequest::new(
            RequestFacts {
                method: &Method::GET,
                scheme: "https",
                authority: Some(HeaderValue::from_static("a.example:8443")),
                path: PathAndQuery::from_static("/api/x?y=1"),
                id: HeaderValue::from_static("id-1"),
                client: IpAddr::from([10, 0, 0, 1]),
                tls: None,
            },
            None,
        )
    }

    #[test]
    fn values_are_per_plugin_and_bounded() {
        let mut r = request();
        r.current = 1;
        r.set_value("k", b"one".to_vec()).unwrap();
        r.current = 2;
        assert_eq!(r.value("k"), None, "plugin 2 cannot read plugin 1's value");
        r.set_value("k", b"two".to_vec()).unwrap();
        r.current = 1;
        assert_eq!(r.value("k"), Some(&b"one"[..]));
        for i in 1..MAX_VALUES {
            r.set_value(&format!("k{i}"), vec![]).unwrap();
        }
        assert_eq!(
            r.set_value("one-too-many", vec![]),
            Err(RequestRefusal::TooLarge)
        );
        r.set_value("k", b"again".to_vec()).unwrap();
        assert_eq!(
            r.set_value("big", vec![0; MAX_VALUE_BYTES + 1]),
            Err(RequestRefusal::TooLarge)
        );
    }

    #[test]
    fn changes_are_checked_and_only_while_open() {
        let mut r = request();
        assert_eq!(r.set_path("/v2"), Err(RequestRefusal::TooLate));
        r.open = true;
        r.set_path("/v2/x").unwrap();
        assert_eq!(r.changed_path().unwrap().as_str(), "/v2/x?y=1");
        r.set_query(Some("z=2")).unwrap();
        assert_eq!(r.path().as_str(), "/v2/x?z=2");
        r.set_query(None).unwrap();
        assert_eq!(r.path().as_str(), "/v2/x");
        for bad in ["v2", "/a b", "/a\r\nHost: x", "/a?b", "/a#b", "/\0"] {
            assert_eq!(r.set_path(bad), Err(RequestRefusal::Invalid), "{bad:?}");
        }
        assert_eq!(r.set_query(Some("a b")), Err(RequestRefusal::Invalid));
        assert_eq!(r.changed_method(), None);
        r.set_method("PURGE").unwrap();
        assert_eq!(
            r.changed_method(),
            Some(&Method::from_bytes(b"PURGE").unwrap())
        );
        for bad in ["G ET", "", "CONNECT", "GET\n"] {
            assert_eq!(r.set_method(bad), Err(RequestRefusal::Invalid), "{bad:?}");
        }
    }
}
