//! Certificates: parsing `kubernetes.io/tls` Secrets, the store SNI picks from, and the
//! downstream rustls configuration.
//!
//! `compile` fills a [`CertStore`] per generation; the proxy's [`SniResolver`] reads whichever
//! generation is current at handshake time, so a rotated Secret is served from the next
//! handshake on without touching open connections. Hosts whose Ingresses ask for client
//! certificates carry their trust ([`client`]) in the same store, looked up by the same SNI.
//! This module never reads files or the API.

pub mod client;

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate and key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt is not valid PEM: {0}")]
    BadCertificate(std::io::Error),
    #[error("tls.key holds no PEM private key")]
    NoKey,
    #[error("tls.key is not valid PEM: {0}")]
    BadKey(std::io::Error),
    #[error("tls.key is not a supported private key: {0}")]
    UnsupportedKey(rustls::Error),
    #[error("tls.key does not belong to the certificate in tls.crt: {0}")]
    Mismatch(rustls::Error),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Parses a PEM chain and key into something rustls can serve, checking that they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let chain = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertError::BadCertificate)?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(CertError::BadKey)?
        .ok_or(CertError::NoKey)?;
    signed(chain, key)
}

fn signed(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertError> {
    let signer = any_supported_type(&key).map_err(CertError::UnsupportedKey)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(CertError::Mismatch)?;
    Ok(certified)
}

/// The certificate served when no Ingress covers the requested name, like ingress-nginx's
/// "Fake Certificate": self-signed, so clients that verify will refuse it.
pub fn default_certificate() -> Result<CertifiedKey, CertError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wasmgress default certificate");
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| CertError::UnsupportedKey(rustls::Error::General(e.to_owned())))?;
    signed(vec![cert.der().clone()], key)
}

/// Whether `key`'s certificate names cover `host` (a DNS name, or `*.suffix`: then any one
/// label under the suffix must be covered, as by a wildcard certificate).
pub fn names_cover(key: &CertifiedKey, host: &str) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let probe = match host.strip_prefix("*.") {
        // A label no real certificate lists on its own.
        Some(suffix) => format!("wasmgress-wildcard-probe.{suffix}"),
        None => host.to_owned(),
    };
    rustls::pki_types::ServerName::try_from(probe)
        .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
}

/// Certificates by host name: exact names, then one-label wildcards, then the default.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Hosts whose handshakes ask for a client certificate, by name (`*.suffix` for
    /// wildcards), as certificates are.
    client_auth: HashMap<String, Arc<ClientAuthHost>>,
}

/// A route's client certificate rules (ingress-nginx `auth-tls-*`), checked per request by
/// `proxy::client_tls` against what the connection's handshake established.
#[derive(Debug)]
pub struct ClientTls {
    pub auth: Arc<client::ClientAuth>,
    pub mode: client::VerifyMode,
    /// Where refused requests are redirected (302) instead of answered 400.
    pub error_page: Option<http::HeaderValue>,
    /// Send the certificate upstream (`ssl-client-cert`).
    pub pass_certificate: bool,
    /// The subject DN must match, else 403.
    pub match_cn: Option<regex::Regex>,
}

/// A host's client certificate trust, and the server config its handshakes use (built on the
/// first handshake: it needs the listener's certificate resolver).
#[derive(Debug)]
pub struct ClientAuthHost {
    pub auth: Arc<client::ClientAuth>,
    config: std::sync::OnceLock<Arc<rustls::ServerConfig>>,
}

impl ClientAuthHost {
    pub fn new(auth: Arc<client::ClientAuth>) -> Self {
        ClientAuthHost {
            auth,
            config: std::sync::OnceLock::new(),
        }
    }

    /// The server config requesting a certificate, with the listener's `resolver`.
    pub fn server_config(
        &self,
        resolver: &Arc<dyn ResolvesServerCert>,
    ) -> Arc<rustls::ServerConfig> {
        self.config
            .get_or_init(|| self.auth.server_config(resolver.clone()))
            .clone()
    }
}

impl CertStore {
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
            client_auth: HashMap::new(),
        }
    }

    /// Asks for client certificates on `host` (`*.suffix` for a wildcard). When the host
    /// already asks, keeps that and returns it (first Ingress wins, as for certificates).
    pub fn insert_client_auth(
        &mut self,
        host: &str,
        auth: Arc<client::ClientAuth>,
    ) -> Result<(), Arc<client::ClientAuth>> {
        match self.client_auth.entry(host.to_ascii_lowercase()) {
            std::collections::hash_map::Entry::Occupied(e) => Err(e.get().auth.clone()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Arc::new(ClientAuthHost::new(auth)));
                Ok(())
            }
        }
    }

    /// The client certificate trust for a TLS server name: exact, then one-label wildcard.
    pub fn client_auth(&self, server_name: Option<&str>) -> Option<Arc<ClientAuthHost>> {
        if self.client_auth.is_empty() {
            return None;
        }
        let name = server_name?.to_ascii_lowercase();
        self.client_auth
            .get(&name)
            .or_else(|| {
                let (_, suffix) = name.split_once('.')?;
                self.client_auth.get(&format!("*.{suffix}"))
            })
            .cloned()
    }

    /// Adds a certificate for `host` (`*.suffix` for a wildcard). When the host already has one,
    /// keeps it and returns it: precedence is insertion order.
    pub fn insert(&mut self, host: &str, key: Arc<CertifiedKey>) -> Result<(), Arc<CertifiedKey>> {
        let host = host.to_ascii_lowercase();
        let (map, name) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
            None => (&mut self.exact, host),
        };
        match map.entry(name) {
            std::collections::hash_map::Entry::Occupied(e) => Err(e.get().clone()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(key);
                Ok(())
            }
        }
    }

    fn lookup(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(host).or_else(|| {
            let (_, suffix) = host.split_once('.')?;
            self.wildcard.get(suffix)
        })
    }

    /// Whether an Ingress configured TLS for this (lowercase) host.
    pub fn covers(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }

    /// The certificate for a TLS server name, or the default.
    pub fn resolve(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        server_name
            .and_then(|name| self.lookup(&name.to_ascii_lowercase()).cloned())
            .unwrap_or_else(|| self.default.clone())
    }
}

/// Picks the certificate by SNI from whatever store is current when the handshake happens.
pub struct SniResolver<F> {
    current: F,
}

impl<F> SniResolver<F>
where
    F: Fn(Option<&str>) -> Arc<CertifiedKey> + Send + Sync,
{
    pub fn new(current: F) -> Self {
        Self { current }
    }
}

impl<F> std::fmt::Debug for SniResolver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl<F> ResolvesServerCert for SniResolver<F>
where
    F: Fn(Option<&str>) -> Arc<CertifiedKey> + Send + Sync,
{
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some((self.current)(hello.server_name()))
    }
}

/// Downstream TLS: 1.2 and 1.3 (all rustls speaks), ALPN h2 then http/1.1.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn parses_matching_pairs_and_refuses_mismatches() {
        let (cert_a, key_a) = pair("a.test");
        let (_, key_b) = pair("b.test");
        certified_key(cert_a.as_bytes(), key_a.as_bytes()).expect("matching pair");
        assert!(matches!(
            certified_key(cert_a.as_bytes(), key_b.as_bytes()),
            Err(CertError::Mismatch(_))
        ));
        assert!(matches!(
            certified_key(b"nothing", key_a.as_bytes()),
            Err(CertError::NoCertificate)
        ));
    }

    #[test]
    fn store_picks_exact_then_wildcard_then_default() {
        let default = Arc::new(default_certificate().expect("default"));
        let mk = |n: &str| {
            let (c, k) = pair(n);
            Arc::new(certified_key(c.as_bytes(), k.as_bytes()).expect("pair"))
        };
        let (exact, wild) = (mk("a.test"), mk("*.test"));
        let mut store = CertStore::new(default.clone());
        store.insert("a.test", exact.clone()).expect("first");
        store.insert("*.test", wild.clone()).expect("first");
        let kept = store
            .insert("A.test", mk("again"))
            .expect_err("first certificate wins");
        assert!(Arc::ptr_eq(&kept, &exact));
        assert!(Arc::ptr_eq(&store.resolve(Some("A.TEST")), &exact));
        assert!(Arc::ptr_eq(&store.resolve(Some("b.test")), &wild));
        assert!(Arc::ptr_eq(&store.resolve(Some("c.b.test")), &default));
        assert!(Arc::ptr_eq(&store.resolve(None), &default));
        assert!(store.covers("b.test") && !store.covers("other"));
    }
}
