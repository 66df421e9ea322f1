//! The `http` capability: outbound HTTP calls a plugin queues during a hook ([`check`]) and the
//! host makes after the hook returns `wait` ([`run`]), without holding a proxy worker.
//!
//! Owns what a call may be and where it may go: only `http://` and `https://` URLs whose host
//! and port the route grants, never to addresses the proxy must not reach (link-local, cloud
//! metadata, and in a cluster loopback: the proxy's own admin port), with bounded sizes and a
//! deadline per call. HTTPS certificates are verified against the system's roots: a plugin
//! calling an identity provider must know it is talking to it. Calls go out on one pooled
//! client per loopback policy. This module must not call into guests; the hook chain hands
//! the results to `on-http-responses`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::capability::Granted;
use crate::access::external::{Guarded, dialable};

/// Calls one guest call may queue.
pub const MAX_CALLS: usize = 4;
/// Times one plugin may wait for one request.
pub const MAX_ROUNDS: u8 = 4;
/// Largest request body a plugin may send.
pub const MAX_REQUEST_BODY: usize = 64 << 10;
/// Largest answer body a plugin is handed.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;
/// A call's deadline when the plugin gives none, and the longest it may ask for.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Most header bytes a plugin may send on one call.
const MAX_HEADER_BYTES: usize = 16 << 10;
/// Calls in flight at once, process-wide, and per namespace: what bounds the sockets and the
/// buffered answers (at most 1 MiB each) however many requests wait, and what keeps one
/// tenant's slow (or looping) service from taking every other tenant's share. A call over
/// either bound fails at once with `too-many`.
pub const MAX_IN_FLIGHT: usize = 256;
pub const MAX_IN_FLIGHT_PER_NAMESPACE: usize = 64;

/// Why a call was refused or failed (`http-error` in the WIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    NotGranted,
    Invalid,
    TooMany,
    Timeout,
    Failed,
    TooLarge,
}

/// A checked call, ready to go out.
#[derive(Debug)]
pub struct Call {
    request: Request<Full<Bytes>>,
    timeout: Duration,
    allow_loopback: bool,
    /// The route's namespace, whose share of calls this one takes.
    namespace: Arc<str>,
}

/// An answer, as the plugin is handed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// What a plugin asked for, before checking.
pub struct Asked {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

/// In a cluster, the hosts the operator lets plugins call at all (`--plugin-http-allow`): an
/// Ingress author's grant can only narrow it. Unset outside a cluster, where the operator
/// writes the Ingresses too.
static OPERATOR: OnceLock<Vec<HostPattern>> = OnceLock::new();

/// A host the operator allows: `HOST`, `*.SUFFIX` (any name under it), each with an optional
/// `:PORT` (none: any port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses one `--plugin-http-allow` entry.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim();
        let (wild, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let grant = super::capability::HostGrant::parse(rest)?;
        let host = if wild {
            format!(".{}", grant.host)
        } else {
            grant.host
        };
        Ok(HostPattern {
            host,
            port: grant.port,
        })
    }

    fn covers(&self, host: &str, port: u16) -> bool {
        let name = match self.host.strip_prefix('.') {
            Some(_) => host.ends_with(&self.host),
            None => host == self.host,
        };
        name && self.port.is_none_or(|p| p == port)
    }
}

/// Restricts plugins' calls to `patterns`, for the life of the process (set once at start in
/// a cluster; an empty list allows none). Loopback is then never reachable, whatever
/// `--allow-local-endpoints` says about backends.
pub fn restrict_to(patterns: Vec<HostPattern>) {
    let _ = OPERATOR.set(patterns);
}

/// Why the operator does not let plugins call `host:port`, if it does not.
pub fn operator_refuses(host: &str, port: u16) -> Option<String> {
    let allowed = OPERATOR.get()?;
    if allowed.iter().any(|p| p.covers(host, port)) {
        return None;
    }
    Some(format!(
        "the operator does not let plugins call `{host}:{port}` (wasmgress --plugin-http-allow)"
    ))
}

/// Checks a call against the route's grant; `queued` calls are already waiting.
pub fn check(asked: Asked, granted: &Granted, queued: usize) -> Result<Call, CallFailure> {
    if queued >= MAX_CALLS {
        return Err(CallFailure::TooMany);
    }
    let method = Method::from_bytes(asked.method.as_bytes()).map_err(|_| CallFailure::Invalid)?;
    if method == Method::CONNECT {
        return Err(CallFailure::Invalid);
    }
    let uri: Uri = asked.url.parse().map_err(|_| CallFailure::Invalid)?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(CallFailure::Invalid),
    };
    let authority = uri.authority().ok_or(CallFailure::Invalid)?;
    if authority.as_str().contains('@') {
        return Err(CallFailure::Invalid);
    }
    let host = authority.host().to_ascii_lowercase();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    let port = authority.port_u16().unwrap_or(default_port);
    if !granted.allows_host(host, port, default_port) || operator_refuses(host, port).is_some() {
        return Err(CallFailure::NotGranted);
    }
    let allow_loopback = granted.allow_loopback && OPERATOR.get().is_none();
    // A literal address never reaches the filtering resolver.
    dialable(&uri, allow_loopback).map_err(|_| CallFailure::NotGranted)?;
    if asked.body.len() > MAX_REQUEST_BODY {
        return Err(CallFailure::TooLarge);
    }
    let headers = headers(asked.headers)?;
    let mut request = Request::new(Full::new(Bytes::from(asked.body)));
    *request.method_mut() = method;
    *request.headers_mut() = headers;
    let host_value = HeaderValue::from_str(authority.as_str()).map_err(|_| CallFailure::Invalid)?;
    request.headers_mut().insert(HOST, host_value);
    *request.uri_mut() = uri;
    let timeout = match asked.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_TIMEOUT),
    };
    Ok(Call {
        request,
        timeout,
        allow_loopback,
        namespace: granted.namespace.clone(),
    })
}

/// The plugin's headers, minus what frames or routes the message (refused, not dropped: a
/// plugin that sets them has a bug it should hear about).
fn headers(pairs: Vec<(String, Vec<u8>)>) -> Result<HeaderMap, CallFailure> {
    let mut map = HeaderMap::new();
    let mut bytes = 0;
    for (name, value) in pairs {
        bytes += name.len() + value.len();
        if bytes > MAX_HEADER_BYTES {
            return Err(CallFailure::TooLarge);
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| CallFailure::Invalid)?;
        if [CONNECTION, TRANSFER_ENCODING, TE, UPGRADE, HOST].contains(&name)
            || name.as_str() == "content-length"
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            return Err(CallFailure::Invalid);
        }
        let value = HeaderValue::from_bytes(&value).map_err(|_| CallFailure::Invalid)?;
        map.append(name, value);
    }
    Ok(map)
}

/// Makes every call at once and returns their results in the same order.
pub async fn run(calls: Vec<Call>) -> Vec<Result<Answer, CallFailure>> {
    let pending = calls.into_iter().map(one);
    futures_util::future::join_all(pending).await
}

/// A call's place among those in flight: process-wide, and in its namespace.
struct Slots {
    _global: OwnedSemaphorePermit,
    _namespace: OwnedSemaphorePermit,
}

fn slots(namespace: &Arc<str>) -> Option<Slots> {
    static GLOBAL: OnceLock<Arc<Semaphore>> = OnceLock::new();
    static NAMESPACES: OnceLock<Mutex<HashMap<Arc<str>, Arc<Semaphore>>>> = OnceLock::new();
    let global = GLOBAL.get_or_init(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT)));
    let global = global.clone().try_acquire_owned().ok()?;
    let ours = NAMESPACES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(namespace.clone())
        .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_NAMESPACE)))
        .clone();
    let namespace = ours.try_acquire_owned().ok()?;
    Some(Slots {
        _global: global,
        _namespace: namespace,
    })
}

async fn one(call: Call) -> Result<Answer, CallFailure> {
    let Some(_slots) = slots(&call.namespace) else {
        return Err(CallFailure::TooMany);
    };
    let client = client(call.allow_loopback);
    let work = async {
        let resp = client
            .request(call.request)
            .await
            .map_err(|_| CallFailure::Failed)?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    CallFailure::TooLarge
                } else {
                    CallFailure::Failed
                }
            })?
            .to_bytes();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers,
            body: Vec::from(body),
        })
    };
    tokio::time::timeout(call.timeout, work)
        .await
        .unwrap_or(Err(CallFailure::Timeout))
}

type PluginClient = Client<hyper_rustls::HttpsConnector<HttpConnector<Guarded>>, Full<Bytes>>;

/// One pooled client per loopback policy, for the life of the process.
fn client(allow_loopback: bool) -> &'static PluginClient {
    static STRICT: OnceLock<PluginClient> = OnceLock::new();
    static LOOSE: OnceLock<PluginClient> = OnceLock::new();
    let cell = if allow_loopback { &LOOSE } else { &STRICT };
    cell.get_or_init(|| {
        let mut http = HttpConnector::new_with_resolver(Guarded::new(allow_loopback));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(MAX_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(verifying_tls())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .build(https)
    })
}

/// TLS that verifies servers against the system's roots (none found: every HTTPS call fails,
/// which is the safe way to be wrong).
fn verifying_tls() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates found: plugins' HTTPS calls will fail");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; unreachable in practice.
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::capability::{Grant, NoSecrets};

    fn granted(grant: &str, loopback: bool) -> Granted {
        let grant = Grant::parse(grant).unwrap();
        let mut g = Granted::resolve(&grant, "p", "ns", &NoSecrets).unwrap();
        g.allow_loopback = loopback;
        g
    }

    fn asked(url: &str) -> Asked {
        Asked {
            method: "GET".into(),
            url: url.into(),
            headers: vec![("x-a".into(), b"1".to_vec())],
            body: Vec::new(),
            timeout_ms: 0,
        }
    }

    #[test]
    fn only_granted_hosts_and_ports() {
        let g = granted("http(auth.example.com, 127.0.0.1:8080)", true);
        assert!(check(asked("https://auth.example.com/keys"), &g, 0).is_ok());
        // A bare host: the scheme's default port only.
        assert!(check(asked("http://auth.example.com/keys"), &g, 0).is_ok());
        assert!(check(asked("http://auth.example.com:443/keys"), &g, 0).is_err());
        assert!(check(asked("http://127.0.0.1:8080/x"), &g, 0).is_ok());
        for bad in [
            "http://127.0.0.1:8081/x",
            "http://other.example.com/",
            "https://auth.example.com:8443/",
            "http://user@127.0.0.1:8080/",
        ] {
            assert!(check(asked(bad), &g, 0).is_err(), "{bad}");
        }
        assert_eq!(
            check(asked("ftp://auth.example.com/"), &g, 0).err(),
            Some(CallFailure::Invalid)
        );
        assert_eq!(
            check(asked("https://auth.example.com/"), &g, MAX_CALLS).err(),
            Some(CallFailure::TooMany)
        );
    }

    /// A grant naming a loopback or metadata address still never reaches it in a cluster.
    #[test]
    fn forbidden_addresses_stay_forbidden() {
        let g = granted("http(127.0.0.1:8080, 169.254.169.254)", false);
        assert_eq!(
            check(asked("http://127.0.0.1:8080/"), &g, 0).err(),
            Some(CallFailure::NotGranted)
        );
        let g = granted("http(169.254.169.254)", true);
        assert_eq!(
            check(asked("http://169.254.169.254/latest/meta-data"), &g, 0).err(),
            Some(CallFailure::NotGranted)
        );
    }

    #[test]
    fn operator_patterns() {
        let exact = HostPattern::parse("idp.example.com").unwrap();
        assert!(exact.covers("idp.example.com", 443) && exact.covers("idp.example.com", 8080));
        assert!(!exact.covers("x.idp.example.com", 443));
        let wild = HostPattern::parse("*.example.com:443").unwrap();
        assert!(wild.covers("idp.example.com", 443) && wild.covers("a.b.example.com", 443));
        assert!(!wild.covers("example.com", 443) && !wild.covers("idp.example.com", 80));
        assert!(!wild.covers("evilexample.com", 443));
        assert!(HostPattern::parse("*.").is_err() && HostPattern::parse("a b").is_err());
    }

    #[test]
    fn framing_headers_are_refused() {
        let g = granted("http(a.example)", true);
        for name in ["host", "content-length", "transfer-encoding", "connection"] {
            let mut a = asked("http://a.example/");
            a.headers.push((name.into(), b"1".to_vec()));
            assert_eq!(check(a, &g, 0).err(), Some(CallFailure::Invalid), "{name}");
        }
        let mut a = asked("http://a.example/");
        a.headers.push(("x-b".into(), b"a\r\nb".to_vec()));
        assert_eq!(check(a, &g, 0).err(), Some(CallFailure::Invalid));
        let mut a = asked("http://a.example/");
        a.body = vec![0; MAX_REQUEST_BODY + 1];
        assert_eq!(check(a, &g, 0).err(), Some(CallFailure::TooLarge));
    }
}
