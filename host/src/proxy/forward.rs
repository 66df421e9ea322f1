//! Rewriting a request for its upstream and a response for its client: hop-by-hop headers,
//! `Host`, the `X-Forwarded-*` family ingress-nginx users rely on, and `X-Request-Id`.

use bytes::Bytes;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{CONNECTION, HOST, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers meaningful only on one connection (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass comparing names (no hashing) is cheaper than
    // the nine hashed removals below, which run only when there is something to remove.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::try_from(t.trim()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // Upgrade is hop-by-hop too; WebSocket tunnelling re-adds it deliberately.
    headers.remove(UPGRADE);
    debug_assert!(!headers.contains_key(TE) && !headers.contains_key(TRANSFER_ENCODING));
}

/// Whether `name` is one of [`HOP_BY_HOP`], `Connection` or `Upgrade`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION || name == UPGRADE || HOP_BY_HOP.contains(&name.as_str())
}

/// Sets what the upstream needs to know about the original request. `client_ip` is the
/// connection's formatted once; `host` (the request's host as sent, when it is a valid header
/// value) fills `Host` when missing and `X-Forwarded-Host`. `X-Request-Id` is the caller's to
/// ensure first ([`ensure_request_id`]), so hooks see it too.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    secure: bool,
    host: Option<&HeaderValue>,
) {
    // Up to five new entries: grow the map at most once.
    headers.reserve(5);
    if let Some(host) = host
        && !headers.contains_key(HOST)
    {
        // HTTP/2 carries the host in `:authority`; an HTTP/1.1 upstream needs the header.
        headers.insert(HOST, host.clone());
    }
    // The usual case (no earlier proxy) shares one buffer between both headers.
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) if !previous.is_empty() => {
            let mut joined = Vec::with_capacity(previous.len() + 2 + client_ip.len());
            joined.extend_from_slice(previous.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(joined))
                .unwrap_or_else(|_| client_ip.clone())
        }
        _ => client_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_REAL_IP.clone(), client_ip.clone());
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

/// Gives the request an `X-Request-Id` unless the client sent one; returns it.
pub fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    headers
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(request_id)
}

/// A new request id: 32 hex digits, a random per-process prefix and a counter, so ids are
/// unique across replicas without a random draw per request.
fn request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        u64::from_le_bytes(seed)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    for (i, byte) in prefix
        .to_be_bytes()
        .iter()
        .chain(&n.to_be_bytes())
        .enumerate()
    {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn appends_to_x_forwarded_for_and_fills_host() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            &HeaderValue::from_static("192.0.2.7"),
            true,
            Some(&HeaderValue::from_static("a.test")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["host"], "a.test");
    }

    #[test]
    fn request_ids_are_made_unique_and_a_clients_is_kept() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h)
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id.as_str());
        let mut again = HeaderMap::new();
        assert_ne!(ensure_request_id(&mut again), id.as_str(), "ids are unique");
        let mut kept = HeaderMap::new();
        kept.insert("x-request-id", HeaderValue::from_static("mine"));
        assert_eq!(
            ensure_request_id(&mut kept),
            "mine",
            "a client's id is passed on"
        );
    }
}
