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
    NotGranted,
}

#[derive(Clone)]
struct Kept {
    plugin: u16,
    key: Box<str>,
    value: Bytes,
}

/// One request, as the hooks of its route see and change it. A WebSocket tunnel with message
/// hooks gets its own copy, so the response hooks of the upgrade keep theirs.
#[derive(Clone)]
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
    query_changed: bool,
    /// A WebSocket upgrade: its method is part of the protocol and cannot change.
    websocket: bool,
    /// The backend a hook chose (`SERVICE:PORT` as its route grants it).
    backend: Option<Arc<str>>,
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
    /// The request opens a WebSocket.
    pub websocket: bool,
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
            query_changed: false,
            websocket: facts.websocket,
            backend: None,
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

    /// The path and query a hook set, if one set the path.
    pub fn changed_path(&self) -> Option<&PathAndQuery> {
        self.path_changed.then_some(&self.path)
    }

    /// The query a hook set (`Some(None)`: removed), if one changed only the query: the path
    /// sent upstream stays what it would have been (the client's, or `rewrite-target`'s).
    pub fn changed_query(&self) -> Option<Option<&str>> {
        (self.query_changed && !self.path_changed).then(|| self.path.query())
    }

    /// The backend a hook chose, if one did (`SERVICE:PORT`).
    pub fn chosen_backend(&self) -> Option<&str> {
        self.backend.as_deref()
    }

    /// Sends the request to `backend`, which the caller has checked the plugin may choose.
    pub fn set_backend(&mut self, backend: &str) -> Result<(), RequestRefusal> {
        self.changeable()?;
        self.backend = Some(backend.into());
        Ok(())
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
        if self.websocket || method.len() > MAX_METHOD_BYTES {
            return Err(RequestRefusal::Invalid);
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| RequestRefusal::Invalid)?;
        // CONNECT changes what the request is (a tunnel); TRACE and TRACK would echo the
        // headers the proxy added (credentials from auth services, client certificates).
        if [Method::CONNECT, Method::TRACE].contains(&method) || method.as_str() == "TRACK" {
            return Err(RequestRefusal::Invalid);
        }
        self.method = method;
        self.method_changed = true;
        Ok(())
    }

    /// Changes the path sent upstream, keeping the query.
    pub fn set_path(&mut self, path: &str) -> Result<(), RequestRefusal> {
        self.changeable()?;
        if !safe_path(path) {
            return Err(RequestRefusal::Invalid);
        }
        let next = match self.path.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        self.path = parse(next)?;
        self.path_changed = true;
        Ok(())
    }

    /// Replaces the query sent upstream (`None` removes it).
    pub fn set_query(&mut self, query: Option<&str>) -> Result<(), RequestRefusal> {
        self.changeable()?;
        let path = self.path.path();
        let next = match query {
            Some(q) if q.contains('#') || q.len() > MAX_VALUE_BYTES || !q.is_ascii() => {
                return Err(RequestRefusal::Invalid);
            }
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        self.path = parse(next)?;
        self.query_changed = true;
        Ok(())
    }
}

/// Longest method a hook may set.
const MAX_METHOD_BYTES: usize = 32;

/// A path a hook may send upstream: absolute, ASCII, no query or fragment, and nothing an
/// upstream could resolve into another path than the one checked here: no `//` at the start
/// (an authority to some parsers), no dot segments, no backslashes, no encoded `/`, `\` or `.`.
fn safe_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !path.starts_with("//")
        && path.len() <= MAX_VALUE_BYTES
        && path.is_ascii()
        && !path.contains(['?', '#', '\\'])
        && !["%2f", "%5c", "%2e"].iter().any(|e| lower.contains(e))
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

fn parse(next: String) -> Result<PathAndQuery, RequestRefusal> {
    // `PathAndQuery` refuses controls, spaces and other bytes a request line cannot carry.
    let parsed = PathAndQuery::try_from(next).map_err(|_| RequestRefusal::Invalid)?;
    if !parsed.path().starts_with('/') {
        return Err(RequestRefusal::Invalid);
    }
    Ok(parsed)
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
                websocket: false,
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
    fn a_websocket_keeps_its_method() {
        let mut r = request();
        r.websocket = true;
        r.open = true;
        assert_eq!(r.set_method("POST"), Err(RequestRefusal::Invalid));
        r.set_path("/ws/v2").unwrap();
    }

    #[test]
    fn changes_are_checked_and_only_while_open() {
        let mut r = request();
        assert_eq!(r.set_path("/v2"), Err(RequestRefusal::TooLate));
        r.open = true;
        r.set_query(Some("z=2")).unwrap();
        assert_eq!(r.changed_path(), None, "only the query changed");
        assert_eq!(r.changed_query(), Some(Some("z=2")));
        r.set_path("/v2/x").unwrap();
        assert_eq!(r.changed_path().unwrap().as_str(), "/v2/x?z=2");
        assert_eq!(r.changed_query(), None, "the path carries it");
        r.set_query(None).unwrap();
        assert_eq!(r.path().as_str(), "/v2/x");
        for bad in [
            "v2",
            "/a b",
            "/a\r\nHost: x",
            "/a?b",
            "/a#b",
            "/\0",
            "//evil.example/x",
            "/a/../admin",
            "/a/./b",
            "/a/..",
            "/a\\b",
            "/a%2Fb",
            "/a/%2e%2e/b",
            "/caf\u{e9}",
        ] {
            assert_eq!(r.set_path(bad), Err(RequestRefusal::Invalid), "{bad:?}");
        }
        assert_eq!(
            r.path().as_str(),
            "/v2/x",
            "a refused change changes nothing"
        );
        assert_eq!(r.set_query(Some("a b")), Err(RequestRefusal::Invalid));
        assert_eq!(r.changed_method(), None);
        r.set_method("PURGE").unwrap();
        assert_eq!(
            r.changed_method(),
            Some(&Method::from_bytes(b"PURGE").unwrap())
        );
        for bad in [
            "G ET",
            "",
            "CONNECT",
            "TRACE",
            "TRACK",
            "GET\n",
            &"X".repeat(33),
        ] {
            assert_eq!(r.set_method(bad), Err(RequestRefusal::Invalid), "{bad:?}");
        }
    }
}
