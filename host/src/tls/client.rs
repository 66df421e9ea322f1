//! Client certificates (mTLS) with nginx's semantics: ingress-nginx's `auth-tls-*` annotations.
//!
//! nginx never fails a handshake over the client certificate: it completes the handshake, keeps
//! what the client presented, and decides per request from `$ssl_client_verify` (`SUCCESS`,
//! `NONE` or `FAILED:<reason>`). This module reproduces that in two halves:
//!
//! - the handshake ([`ClientAuth::server_config`]): a *soft* verifier requests a certificate
//!   (never requires one), advertises the CA's subject names, accepts whatever chain is presented,
//!   but checks the client's handshake signature, so a client can only present a certificate
//!   whose private key it holds;
//! - the verdict ([`ClientAuth::verify`]): after the handshake, the presented chain is verified
//!   for real (CA bundle, CRLs, depth, the current time) into a [`ClientCert`], which carries
//!   what nginx puts in `$ssl_client_verify`, `$ssl_client_s_dn`, `$ssl_client_i_dn` and
//!   `$ssl_client_escaped_cert`.
//!
//! It owns the soft handshake verifier and the per-connection verdict, nothing else: it never
//! sees requests and knows nothing of routing. Answering 400, matching `auth-tls-match-cn` against
//! [`ClientCert::subject_dn`] and setting upstream headers belong to the request path; the one
//! piece of nginx's per-request rule that depends on verification details is
//! [`VerifyMode::admits`], kept here beside the reasons it reads.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// nginx's `ssl_verify_client` modes that request a certificate (`off` = no config at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    On,
    Optional,
    OptionalNoCa,
}

impl VerifyMode {
    /// Whether a request on a connection with this verdict goes on (`false`: nginx answers 400).
    ///
    /// nginx (`ngx_http_process_request`): any verification error rejects the request, except
    /// that `optional_no_ca` lets through the errors that only say the chain does not lead to a
    /// trusted CA (`ngx_ssl_verify_error_optional`); `on` also rejects a connection without a
    /// certificate. Everything else (expired, revoked, too long, ...) is rejected in every mode.
    pub fn admits(self, cert: &ClientCert) -> bool {
        match (self, cert.status) {
            (_, Status::Success) => true,
            (VerifyMode::On, _) => false,
            (_, Status::None) => true,
            (VerifyMode::Optional, Status::Failed) => false,
            (VerifyMode::OptionalNoCa, Status::Failed) => Reason::UNTRUSTED_ONLY
                .iter()
                .any(|reason| cert.verify == reason.header_text()),
        }
    }
}

/// Why a `ca.crt` / `ca.crl` pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("ca.crt is not valid PEM: {0}")]
    CaPem(std::io::Error),
    #[error("ca.crt holds no certificate (no `-----BEGIN CERTIFICATE-----` block)")]
    NoCaCertificate,
    #[error("certificate #{index} in ca.crt is not a usable CA certificate: {source}")]
    BadCaCertificate { index: usize, source: rustls::Error },
    #[error("ca.crl is not valid PEM: {0}")]
    CrlPem(std::io::Error),
    #[error("ca.crl holds no CRL (neither a `-----BEGIN X509 CRL-----` block nor DER)")]
    NoCrl,
    #[error("ca.crl is not a CRL: neither PEM nor DER")]
    CrlEncoding,
    #[error("ca.crl is not a CRL: {0:?}")]
    BadCrl(rustls::CertRevocationListError),
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(VerifierBuilderError),
}

/// One trust configuration (a CA bundle, an optional CRL, a depth), built once per Ingress at
/// compile time.
pub struct ClientAuth {
    /// rustls's own verifier for this CA bundle and these CRLs: the trust decision after the
    /// handshake, and the signature checks during it.
    strict: Arc<dyn ClientCertVerifier>,
    /// The bundle's certificates as given, to recognise a trust anchor the client sent along.
    anchors: Vec<CertificateDer<'static>>,
    /// nginx's `ssl_verify_depth`, at least 1.
    depth: u32,
    crls: usize,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Subjects say which CAs without dumping certificates; there is no key material here.
        let cas: Vec<String> = self
            .anchors
            .iter()
            .map(|der| match X509Certificate::from_der(der) {
                Ok((_, cert)) => rfc2253(cert.subject()),
                Err(_) => "<unparsable>".to_owned(),
            })
            .collect();
        f.debug_struct("ClientAuth")
            .field("cas", &cas)
            .field("crls", &self.crls)
            .field("depth", &self.depth)
            .finish()
    }
}

/// The most `verify_client_cert` calls spent on the depth rule for one chain (see
/// [`ClientAuth::short_path_exists`]); past it the chain counts as too long.
const MAX_PATH_TRIES: usize = 32;

impl ClientAuth {
    /// `ca_pem`: one or more PEM certificates; `crl`: PEM or DER CRL(s), optional; `depth`: nginx's
    /// ssl_verify_depth (1 = the client certificate must be issued directly by a CA in the bundle;
    /// 2 = one intermediate allowed; ...). 0 is treated as 1.
    pub fn new(
        ca_pem: &[u8],
        crl: Option<&[u8]>,
        depth: u32,
    ) -> Result<ClientAuth, ClientAuthError> {
        let anchors = rustls_pemfile::certs(&mut &ca_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientAuthError::CaPem)?;
        if anchors.is_empty() {
            return Err(ClientAuthError::NoCaCertificate);
        }
        let mut roots = RootCertStore::empty();
        for (index, der) in anchors.iter().enumerate() {
            // Every certificate must parse: nginx refuses a ca.crt with a broken one, and
            // skipping it silently would distrust clients with no hint why.
            roots
                .add(der.clone())
                .map_err(|source| ClientAuthError::BadCaCertificate { index, source })?;
        }
        let crls = match crl {
            Some(bytes) => parse_crls(bytes)?,
            None => Vec::new(),
        };
        let crl_count = crls.len();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The defaults are what nginx does with `ssl_crl` (OpenSSL's CRL_CHECK | CRL_CHECK_ALL):
        // every certificate of the path below the anchor needs a CRL from its issuer, and a
        // certificate whose status is unknown fails. OpenSSL also refuses an expired CRL, which
        // rustls only does when asked.
        let strict = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls)
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| match e {
                VerifierBuilderError::InvalidCrl(crl) => ClientAuthError::BadCrl(crl),
                other => ClientAuthError::Verifier(other),
            })?;
        Ok(ClientAuth {
            strict,
            anchors,
            depth: depth.max(1),
            crls: crl_count,
            provider,
        })
    }

    /// A server config requesting (never requiring) a client certificate as described above, with
    /// this certificate resolver, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
    pub fn server_config(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
    ) -> Arc<rustls::ServerConfig> {
        let soft = Arc::new(SoftVerifier {
            strict: self.strict.clone(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_client_cert_verifier(soft)
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The verdict on what the client presented (end entity first; `None` or empty = nothing).
    ///
    /// Call it once per connection, after the handshake, with the connection's
    /// `peer_certificates()` (rustls keeps them on resumed sessions too), as nginx verifies once
    /// per handshake, not per request.
    pub fn verify(&self, chain: Option<&[CertificateDer<'_>]>) -> ClientCert {
        self.verify_at(chain, UnixTime::now())
    }

    fn verify_at(&self, chain: Option<&[CertificateDer<'_>]>, now: UnixTime) -> ClientCert {
        let Some((leaf, presented)) = chain.and_then(<[_]>::split_first) else {
            return ClientCert {
                status: Status::None,
                verify: http::HeaderValue::from_static("NONE"),
                subject_dn: None,
                issuer_dn: None,
                escaped_pem: None,
            };
        };
        let parsed = X509Certificate::from_der(leaf).ok().map(|(_, cert)| cert);
        let (status, verify) = match self.judge(leaf, presented, parsed.as_ref(), now) {
            Ok(()) => (Status::Success, http::HeaderValue::from_static("SUCCESS")),
            Err(reason) => (
                Status::Failed,
                http::HeaderValue::from_static(reason.header_text()),
            ),
        };
        // The names and the certificate are reported even when verification failed, as nginx
        // does: the upstream (or a log) may want to know who was refused.
        let dn = |name: &X509Name<'_>| http::HeaderValue::from_str(&rfc2253(name)).ok();
        ClientCert {
            status,
            verify,
            subject_dn: parsed.as_ref().and_then(|c| dn(c.subject())),
            issuer_dn: parsed.as_ref().and_then(|c| dn(c.issuer())),
            escaped_pem: http::HeaderValue::from_str(&escape_uri_component(&pem(leaf))).ok(),
        }
    }

    fn judge(
        &self,
        leaf: &CertificateDer<'_>,
        presented: &[CertificateDer<'_>],
        parsed: Option<&X509Certificate<'_>>,
        now: UnixTime,
    ) -> Result<(), Reason> {
        if let Err(err) = self.strict.verify_client_cert(leaf, presented, now) {
            return Err(Reason::of(&err, parsed, presented));
        }
        // The depth rule, counted on the verified path as OpenSSL does: at most depth - 1
        // intermediates between the client certificate and a CA of the bundle. webpki does not
        // say which path it found, so first drop what can never lengthen a shortest path (copies
        // of the bundle's own certificates, which clients often send along), and only if more
        // remain than allowed, search for a short enough path.
        let allowed = usize::try_from(self.depth - 1).unwrap_or(usize::MAX);
        let candidates: Vec<&CertificateDer<'_>> = presented
            .iter()
            .filter(|cert| !self.anchors.iter().any(|a| a.as_ref() == cert.as_ref()))
            .collect();
        if candidates.len() <= allowed || self.short_path_exists(leaf, &candidates, allowed, now) {
            Ok(())
        } else {
            Err(Reason::ChainTooLong)
        }
    }

    /// Whether a path with at most `allowed` intermediates exists (`candidates.len() > allowed`).
    ///
    /// A path uses each presented certificate at most once, so one with `k <= allowed`
    /// intermediates exists exactly when verification succeeds given some `allowed` of the
    /// candidates (any `allowed` of them that include those `k`), and any success given only
    /// `allowed` certificates is such a path. For the default depth 1 that is one call with no
    /// intermediates; the number of calls is bounded by [`MAX_PATH_TRIES`].
    fn short_path_exists(
        &self,
        leaf: &CertificateDer<'_>,
        candidates: &[&CertificateDer<'_>],
        allowed: usize,
        now: UnixTime,
    ) -> bool {
        let mut pick: Vec<usize> = (0..allowed).collect();
        for _ in 0..MAX_PATH_TRIES {
            let subset: Vec<CertificateDer<'_>> = pick
                .iter()
                .filter_map(|&i| candidates.get(i))
                .map(|cert| CertificateDer::from(cert.as_ref()))
                .collect();
            if self.strict.verify_client_cert(leaf, &subset, now).is_ok() {
                return true;
            }
            if !next_combination(&mut pick, candidates.len()) {
                return false;
            }
        }
        false
    }
}

/// Advances `pick` (strictly increasing indices below `n`) to the next combination in
/// lexicographic order; `false` when it was the last.
fn next_combination(pick: &mut [usize], n: usize) -> bool {
    let Some(room) = n.checked_sub(pick.len()) else {
        return false;
    };
    for i in (0..pick.len()).rev() {
        if pick[i] < room + i {
            pick[i] += 1;
            for j in i + 1..pick.len() {
                pick[j] = pick[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// `ca.crl` as nginx takes it: PEM (one or more `X509 CRL` blocks) or DER (one or more CRLs
/// back to back). The CRLs themselves are parsed by rustls when the verifier is built.
fn parse_crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, ClientAuthError> {
    let crls = if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        rustls_pemfile::crls(&mut &bytes[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientAuthError::CrlPem)?
    } else {
        split_der(bytes)
            .ok_or(ClientAuthError::CrlEncoding)?
            .into_iter()
            .map(|der| CertificateRevocationListDer::from(der.to_vec()))
            .collect()
    };
    if crls.is_empty() {
        return Err(ClientAuthError::NoCrl);
    }
    Ok(crls)
}

/// Splits back-to-back DER SEQUENCEs; `None` unless the bytes are exactly that.
fn split_der(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (&tag, rest) = bytes.split_first()?;
        let (&first, rest) = rest.split_first()?;
        if tag != 0x30 {
            return None;
        }
        let (len, rest) = match first {
            0..=0x7f => (usize::from(first), rest),
            0x81..=0x84 => {
                let n = usize::from(first & 0x7f);
                let (len_bytes, rest) = rest.split_at_checked(n)?;
                let len = len_bytes
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                (len, rest)
            }
            _ => return None,
        };
        let header = bytes.len() - rest.len();
        let (item, after) = bytes.split_at_checked(header.checked_add(len)?)?;
        out.push(item);
        bytes = after;
    }
    Some(out)
}

/// The handshake half: asks for a certificate, lets any through, checks possession of its key.
#[derive(Debug)]
struct SoftVerifier {
    /// The real verifier for the same bundle. Its handshake-signature checks need no trust
    /// decision (they check the client's signature with the public key of the certificate it
    /// presented, with the provider's algorithms), so they are used as they are.
    strict: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for SoftVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Never mandatory: a client without a certificate gets `NONE`, not a failed handshake.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// The bundle's subjects, so a client holding several certificates picks the right one, as
    /// with nginx's `ssl_client_certificate`.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.strict.root_hint_subjects()
    }

    /// Accepts any chain: the trust decision is [`ClientAuth::verify`]'s, after the handshake,
    /// so that a bad certificate yields `FAILED:<reason>` rather than a handshake failure.
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    /// Must stay a real check: without it a client could present anyone's certificate.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls12_signature(message, cert, dss)
    }

    /// Must stay a real check: without it a client could present anyone's certificate.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.strict.supported_verify_schemes()
    }
}

/// What the proxy tells the upstream and decides on, per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub status: Status,
    /// `SUCCESS`, `NONE` or `FAILED:<short reason>` (nginx's $ssl_client_verify).
    pub verify: http::HeaderValue,
    /// nginx's $ssl_client_s_dn / $ssl_client_i_dn (RFC 2253 form: `CN=client,O=Example Org`, most
    /// specific RDN first, `,`-separated, special characters escaped as RFC 2253 says), even when
    /// verification failed; None without a certificate.
    pub subject_dn: Option<http::HeaderValue>,
    pub issuer_dn: Option<http::HeaderValue>,
    /// nginx's $ssl_client_escaped_cert: the end-entity certificate as PEM, URL-encoded.
    pub escaped_pem: Option<http::HeaderValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    None,
    Failed,
}

/// Why verification failed, worded as OpenSSL's `X509_verify_cert_error_string` (what nginx puts
/// after `FAILED:`) where there is an equivalent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    SelfSigned,
    SelfSignedInChain,
    UnknownIssuer,
    Expired,
    NotYetValid,
    Revoked,
    CrlUnavailable,
    CrlExpired,
    CrlSignature,
    CrlSigner,
    Signature,
    Purpose,
    InvalidCa,
    PathLength,
    ChainTooLong,
    NameConstraints,
    CriticalExtension,
    Malformed,
    Other,
}

impl Reason {
    /// What `optional_no_ca` forgives: the chain is fine but leads to no CA of the bundle.
    const UNTRUSTED_ONLY: [Reason; 3] = [
        Reason::SelfSigned,
        Reason::SelfSignedInChain,
        Reason::UnknownIssuer,
    ];

    fn header_text(self) -> &'static str {
        match self {
            Reason::SelfSigned => "FAILED:self-signed certificate",
            Reason::SelfSignedInChain => "FAILED:self-signed certificate in certificate chain",
            Reason::UnknownIssuer => "FAILED:unable to get local issuer certificate",
            Reason::Expired => "FAILED:certificate has expired",
            Reason::NotYetValid => "FAILED:certificate is not yet valid",
            Reason::Revoked => "FAILED:certificate revoked",
            Reason::CrlUnavailable => "FAILED:unable to get certificate CRL",
            Reason::CrlExpired => "FAILED:CRL has expired",
            Reason::CrlSignature => "FAILED:CRL signature failure",
            Reason::CrlSigner => "FAILED:key usage does not include CRL signing",
            Reason::Signature => "FAILED:certificate signature failure",
            Reason::Purpose => "FAILED:unsupported certificate purpose",
            Reason::InvalidCa => "FAILED:invalid CA certificate",
            Reason::PathLength => "FAILED:path length constraint exceeded",
            Reason::ChainTooLong => "FAILED:certificate chain too long",
            Reason::NameConstraints => "FAILED:name constraints violation",
            Reason::CriticalExtension => "FAILED:unhandled critical extension",
            Reason::Malformed => "FAILED:certificate malformed",
            Reason::Other => "FAILED:certificate rejected",
        }
    }

    #[allow(deprecated)] // The deprecated variants can still be produced; they are matched too.
    fn of(
        err: &rustls::Error,
        leaf: Option<&X509Certificate<'_>>,
        presented: &[CertificateDer<'_>],
    ) -> Reason {
        use rustls::CertRevocationListError as Crl;
        use rustls::CertificateError as Cert;
        match err {
            rustls::Error::InvalidCertificate(e) => match e {
                Cert::BadEncoding => Reason::Malformed,
                Cert::Expired | Cert::ExpiredContext { .. } => Reason::Expired,
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => Reason::NotYetValid,
                Cert::Revoked => Reason::Revoked,
                Cert::UnhandledCriticalExtension => Reason::CriticalExtension,
                Cert::UnknownIssuer => Reason::untrusted(leaf, presented),
                Cert::UnknownRevocationStatus => Reason::CrlUnavailable,
                Cert::ExpiredRevocationList | Cert::ExpiredRevocationListContext { .. } => {
                    Reason::CrlExpired
                }
                Cert::BadSignature
                | Cert::UnsupportedSignatureAlgorithm
                | Cert::UnsupportedSignatureAlgorithmContext { .. }
                | Cert::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    Reason::Signature
                }
                Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => Reason::Purpose,
                // rustls passes the remaining webpki errors on as `Other`, whose text is the
                // webpki variant's name; an unknown one is still a failure, just less precise.
                Cert::Other(other) => {
                    let text = other.to_string();
                    match text.split(['(', ' ', '{']).next().unwrap_or_default() {
                        "EndEntityUsedAsCa" => Reason::InvalidCa,
                        "CaUsedAsEndEntity" | "EmptyEkuExtension" => Reason::Purpose,
                        "PathLenConstraintViolated" => Reason::PathLength,
                        "MaximumPathDepthExceeded" => Reason::ChainTooLong,
                        "NameConstraintViolation" => Reason::NameConstraints,
                        "UnsupportedCriticalExtension" => Reason::CriticalExtension,
                        _ => Reason::Other,
                    }
                }
                _ => Reason::Other,
            },
            rustls::Error::InvalidCertRevocationList(e) => match e {
                Crl::IssuerInvalidForCrl => Reason::CrlSigner,
                Crl::BadSignature
                | Crl::UnsupportedSignatureAlgorithm
                | Crl::UnsupportedSignatureAlgorithmContext { .. }
                | Crl::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    Reason::CrlSignature
                }
                _ => Reason::CrlUnavailable,
            },
            _ => Reason::Other,
        }
    }

    /// OpenSSL's three words for "leads to no trusted CA", told apart as it does.
    fn untrusted(leaf: Option<&X509Certificate<'_>>, presented: &[CertificateDer<'_>]) -> Reason {
        let self_issued =
            |cert: &X509Certificate<'_>| cert.subject().as_raw() == cert.issuer().as_raw();
        if leaf.is_some_and(self_issued) {
            return Reason::SelfSigned;
        }
        // Bounded: a chain is rarely longer, and this only words the reason.
        let in_chain = presented
            .iter()
            .take(8)
            .any(|der| X509Certificate::from_der(der).is_ok_and(|(_, cert)| self_issued(&cert)));
        if in_chain {
            Reason::SelfSignedInChain
        } else {
            Reason::UnknownIssuer
        }
    }
}

/// A distinguished name as OpenSSL's `X509_NAME_print_ex(.., XN_FLAG_RFC2253)` prints it (what
/// nginx uses for `$ssl_client_s_dn` since 1.11.6): attributes in reverse encoding order, `+`
/// inside a multi-valued RDN and `,` between RDNs, short names, unknown attribute types as a
/// dotted OID with the value's DER in hex (`#...`), RFC 2253 escapes, and control characters
/// and every non-ASCII byte as `\XX`. The result is printable ASCII, so always a header value.
fn rfc2253(name: &X509Name<'_>) -> String {
    let mut attributes = Vec::new();
    for (set, rdn) in name.iter().enumerate() {
        for attribute in rdn.iter() {
            attributes.push((set, attribute));
        }
    }
    let mut out = String::new();
    let mut previous = None;
    for (set, attribute) in attributes.into_iter().rev() {
        if let Some(prev) = previous {
            out.push(if prev == set { '+' } else { ',' });
        }
        previous = Some(set);
        let oid = attribute.attr_type().to_id_string();
        let value = attribute.attr_value();
        match short_name(&oid) {
            Some(short) => {
                out.push_str(short);
                out.push('=');
                match decode_string(value.header.tag().0, value.data) {
                    Some(text) => escape_value(&text, &mut out),
                    None => dump_der(value, &mut out),
                }
            }
            None => {
                out.push_str(&oid);
                out.push('=');
                dump_der(value, &mut out);
            }
        }
    }
    out
}

/// OpenSSL's short names for the attribute types found in distinguished names.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.13" => "description",
        "2.5.4.15" => "businessCategory",
        "2.5.4.17" => "postalCode",
        "2.5.4.18" => "postOfficeBox",
        "2.5.4.20" => "telephoneNumber",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.45" => "x500UniqueIdentifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.72" => "role",
        "2.5.4.97" => "organizationIdentifier",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.3.6.1.4.1.311.60.2.1.1" => "jurisdictionL",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        _ => return None,
    })
}

/// The text of a string value, decoded as OpenSSL does (`tag2nbyte`): UTF8String as UTF-8,
/// BMPString as UCS-2, UniversalString as UCS-4, the one-byte types (including T61) as Latin-1.
/// `None` for any other type or a malformed string: then the DER is dumped in hex.
fn decode_string(tag: u32, data: &[u8]) -> Option<String> {
    match tag {
        12 => std::str::from_utf8(data).ok().map(str::to_owned),
        18 | 19 | 20 | 22 | 23 | 24 | 26 => Some(data.iter().map(|&b| char::from(b)).collect()),
        30 => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        28 => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// RFC 2253 escaping as OpenSSL's `ASN1_STRFLGS_RFC2253` does it.
fn escape_value(text: &str, out: &mut String) {
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\u{20}'..='\u{7e}' => out.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
        }
    }
}

/// `#` and the value's whole DER encoding in hex, re-encoding the header x509-parser split off.
fn dump_der(value: &x509_parser::der_parser::asn1_rs::Any<'_>, out: &mut String) {
    let header = &value.header;
    let mut der = Vec::with_capacity(value.data.len() + 8);
    let class = (header.class() as u8) << 6;
    let constructed = if header.is_constructed() { 0x20 } else { 0 };
    let tag = header.tag().0;
    if tag < 31 {
        der.push(class | constructed | tag as u8);
    } else {
        der.push(class | constructed | 0x1f);
        let mut groups = Vec::new();
        let mut rest = tag;
        loop {
            groups.push((rest & 0x7f) as u8);
            rest >>= 7;
            if rest == 0 {
                break;
            }
        }
        let last = groups.len() - 1;
        for (i, group) in groups.iter().rev().enumerate() {
            der.push(if i == last { *group } else { group | 0x80 });
        }
    }
    let len = value.data.len();
    if len < 0x80 {
        der.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        der.push(0x80 | (bytes.len() - skip) as u8);
        der.extend_from_slice(&bytes[skip..]);
    }
    der.extend_from_slice(value.data);
    out.push('#');
    for b in der {
        out.push_str(&format!("{b:02X}"));
    }
}

/// The certificate as OpenSSL's `PEM_write_bio_X509` writes it (64-column base64, `\n`), which
/// is what nginx escapes for `$ssl_client_escaped_cert`.
fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// nginx's `ngx_escape_uri(.., NGX_ESCAPE_URI_COMPONENT)`: everything but RFC 3986's unreserved
/// characters as `%XX` (upper-case hex).
fn escape_uri_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        DistinguishedName as Dn, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
        KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber, date_time_ymd,
    };
    use rustls::client::ResolvesClientCert;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::server::ClientHello;
    use rustls::sign::CertifiedKey;
    use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Ca = CertifiedIssuer<'static, KeyPair>;

    fn name(cn: &str) -> Dn {
        // Encoded O first, CN last, as CAs usually do: RFC 2253 prints it CN first.
        let mut dn = Dn::new();
        dn.push(DnType::OrganizationName, "Example");
        dn.push(DnType::CommonName, cn);
        dn
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    fn root(cn: &str) -> Ca {
        CertifiedIssuer::self_signed(ca_params(cn), KeyPair::generate().expect("key")).expect("ca")
    }

    fn intermediate(cn: &str, parent: &Issuer<'_, KeyPair>) -> Ca {
        let key = KeyPair::generate().expect("key");
        CertifiedIssuer::signed_by(ca_params(cn), key, parent).expect("intermediate")
    }

    struct Client {
        der: CertificateDer<'static>,
        key: KeyPair,
    }

    impl Client {
        fn private_key(&self) -> PrivateKeyDer<'static> {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
        }
    }

    fn client_with(
        cn: &str,
        serial: u64,
        issuer: Option<&Issuer<'_, KeyPair>>,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Client {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        let cert = match issuer {
            Some(issuer) => params.signed_by(&key, issuer),
            None => params.self_signed(&key),
        }
        .expect("client certificate");
        Client {
            der: cert.der().clone(),
            key,
        }
    }

    fn client(cn: &str, serial: u64, issuer: &Issuer<'_, KeyPair>) -> Client {
        client_with(cn, serial, Some(issuer), |_| {})
    }

    fn crl(
        issuer: &Issuer<'_, KeyPair>,
        revoked: &[u64],
        next_update_year: i32,
    ) -> rcgen::CertificateRevocationList {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2000, 1, 1),
            next_update: date_time_ymd(next_update_year, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: date_time_ymd(2000, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .expect("crl")
    }

    fn auth(ca: &Ca) -> ClientAuth {
        ClientAuth::new(ca.pem().as_bytes(), None, 1).expect("client auth")
    }

    fn chain(certs: &[&CertificateDer<'static>]) -> Vec<CertificateDer<'static>> {
        certs.iter().map(|c| (*c).clone()).collect()
    }

    fn text(value: &Option<http::HeaderValue>) -> Option<&str> {
        value.as_ref().map(|v| v.to_str().expect("ascii"))
    }

    // --- In-process TLS: a server certificate the client trusts, and both ends over a duplex.

    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);

    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    struct Server {
        resolver: Arc<Fixed>,
        roots: Arc<RootCertStore>,
    }

    fn server() -> Server {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["server.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("server certificate");
        let signer = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        ))
        .expect("signer");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        Server {
            resolver: Arc::new(Fixed(Arc::new(CertifiedKey::new(
                vec![cert.der().clone()],
                signer,
            )))),
            roots: Arc::new(roots),
        }
    }

    #[derive(Debug)]
    enum Identity {
        None,
        Chain(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        /// Any certified key (possibly one whose key does not match), recording the CA hints.
        Resolver(Arc<Recorder>),
    }

    #[derive(Debug)]
    struct Recorder {
        key: Arc<CertifiedKey>,
        hints: Mutex<Vec<Vec<u8>>>,
    }

    impl ResolvesClientCert for Recorder {
        fn resolve(&self, hints: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            *self.hints.lock().expect("lock") = hints.iter().map(|h| h.to_vec()).collect();
            Some(self.key.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    fn client_config(
        server: &Server,
        version: &'static SupportedProtocolVersion,
        identity: Identity,
    ) -> Arc<ClientConfig> {
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .expect("version")
                .with_root_certificates(server.roots.clone());
        let mut config = match identity {
            Identity::None => builder.with_no_client_auth(),
            Identity::Chain(chain, key) => {
                builder.with_client_auth_cert(chain, key).expect("identity")
            }
            Identity::Resolver(resolver) => builder.with_client_cert_resolver(resolver),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    #[derive(Debug)]
    struct Session {
        verdict: ClientCert,
        alpn: Option<Vec<u8>>,
        version: Option<ProtocolVersion>,
        kind: Option<HandshakeKind>,
    }

    /// One connection: handshake, a ping/pong both ways (so both ends saw the handshake
    /// through), then the verdict on what the server's connection holds. `Err` if the server
    /// side failed.
    async fn connect(
        auth: &ClientAuth,
        server_config: Arc<rustls::ServerConfig>,
        client_config: Arc<ClientConfig>,
    ) -> Result<Session, String> {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let server_side = async move {
            let mut tls = acceptor
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let mut ping = [0u8; 4];
            tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
            tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let conn = tls.get_ref().1;
            Ok::<_, String>(Session {
                verdict: auth.verify(conn.peer_certificates()),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                version: conn.protocol_version(),
                kind: conn.handshake_kind(),
            })
        };
        let client_side = async move {
            let name = ServerName::try_from("server.test").expect("name");
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"ping").await?;
            tls.flush().await?;
            let mut pong = [0u8; 4];
            tls.read_exact(&mut pong).await?;
            Ok::<_, std::io::Error>(())
        };
        let (server_result, _client_result) =
            tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(server_side, client_side)
            })
            .await
            .map_err(|_| "timed out".to_owned())?;
        server_result
    }

    const VERSIONS: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    #[tokio::test]
    async fn no_certificate_completes_the_handshake_with_none() {
        let ca = root("Example CA");
        let auth = auth(&ca);
        let server = server();
        for version in VERSIONS {
            let config = client_config(&server, version, Identity::None);
            let session = connect(&auth, auth.server_config(server.resolver.clone()), config)
                .await
                .expect("handshake without a certificate");
            assert_eq!(session.version, Some(version.version));
            assert_eq!(session.alpn.as_deref(), Some(&b"h2"[..]));
            let verdict = session.verdict;
            assert_eq!(verdict.status, Status::None);
            assert_eq!(verdict.verify, "NONE");
            assert_eq!(
                (verdict.subject_dn.as_ref(), verdict.issuer_dn.as_ref()),
                (None, None)
            );
            assert_eq!(verdict.escaped_pem, None);
            assert!(!VerifyMode::On.admits(&verdict));
            assert!(VerifyMode::Optional.admits(&verdict));
            assert!(VerifyMode::OptionalNoCa.admits(&verdict));
        }
        assert_eq!(auth.verify(Some(&[])).status, Status::None);
        assert_eq!(auth.verify(None).status, Status::None);
    }

    #[tokio::test]
    async fn a_good_certificate_succeeds_with_its_names() {
        let ca = root("Example CA");
        let auth = auth(&ca);
        let server = server();
        let good = client("client.test", 7, &ca);
        for version in VERSIONS {
            let identity = Identity::Chain(vec![good.der.clone()], good.private_key());
            let config = client_config(&server, version, identity);
            let session = connect(&auth, auth.server_config(server.resolver.clone()), config)
                .await
                .expect("handshake");
            assert_eq!(session.version, Some(version.version));
            let verdict = session.verdict;
            assert_eq!(verdict.status, Status::Success);
            assert_eq!(verdict.verify, "SUCCESS");
            assert_eq!(text(&verdict.subject_dn), Some("CN=client.test,O=Example"));
            assert_eq!(text(&verdict.issuer_dn), Some("CN=Example CA,O=Example"));
            assert!(VerifyMode::On.admits(&verdict));
        }
    }

    #[tokio::test]
    async fn the_server_advertises_the_bundle_subjects() {
        let (ca, other) = (root("Example CA"), root("Other CA"));
        let bundle = format!("{}{}", ca.pem(), other.pem());
        let auth = ClientAuth::new(bundle.as_bytes(), None, 1).expect("bundle");
        let good = client("client.test", 7, &ca);
        let server = server();
        let signer =
            rustls::crypto::ring::sign::any_supported_type(&good.private_key()).expect("signer");
        let recorder = Arc::new(Recorder {
            key: Arc::new(CertifiedKey::new(vec![good.der.clone()], signer)),
            hints: Mutex::new(Vec::new()),
        });
        let config = client_config(
            &server,
            &rustls::version::TLS13,
            Identity::Resolver(recorder.clone()),
        );
        let session = connect(&auth, auth.server_config(server.resolver.clone()), config)
            .await
            .expect("handshake");
        assert_eq!(session.verdict.status, Status::Success);
        let expected: Vec<Vec<u8>> = [ca.der(), other.der()]
            .iter()
            .map(|der| {
                let (_, cert) = X509Certificate::from_der(der).expect("parse");
                cert.subject().as_raw().to_vec()
            })
            .collect();
        assert_eq!(*recorder.hints.lock().expect("lock"), expected);
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_completes_the_handshake_and_fails() {
        let (ca, other) = (root("Example CA"), root("Other CA"));
        let auth = auth(&ca);
        let server = server();
        let stranger = client("stranger.test", 9, &other);
        let identity = Identity::Chain(vec![stranger.der.clone()], stranger.private_key());
        let config = client_config(&server, &rustls::version::TLS13, identity);
        let verdict = connect(&auth, auth.server_config(server.resolver.clone()), config)
            .await
            .expect("handshake still completes")
            .verdict;
        assert_eq!(verdict.status, Status::Failed);
        assert_eq!(
            verdict.verify,
            "FAILED:unable to get local issuer certificate"
        );
        assert_eq!(
            text(&verdict.subject_dn),
            Some("CN=stranger.test,O=Example")
        );
        assert_eq!(text(&verdict.issuer_dn), Some("CN=Other CA,O=Example"));
        assert!(verdict.escaped_pem.is_some());
        assert!(!VerifyMode::On.admits(&verdict));
        assert!(!VerifyMode::Optional.admits(&verdict));
        assert!(VerifyMode::OptionalNoCa.admits(&verdict));

        let lone = client_with("lone.test", 3, None, |_| {});
        let verdict = auth.verify(Some(&[lone.der]));
        assert_eq!(verdict.verify, "FAILED:self-signed certificate");
        assert!(VerifyMode::OptionalNoCa.admits(&verdict));
    }

    #[tokio::test]
    async fn a_client_that_does_not_hold_the_key_cannot_complete_the_handshake() {
        let ca = root("Example CA");
        let auth = auth(&ca);
        let server = server();
        let victim = client("victim.test", 11, &ca);
        // Same algorithm (P-256) so the client can sign; the wrong key, so the signature is bad.
        let wrong = KeyPair::generate().expect("key");
        let signer = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(wrong.serialize_der()),
        ))
        .expect("signer");
        let impostor = Arc::new(Recorder {
            key: Arc::new(CertifiedKey::new(vec![victim.der.clone()], signer)),
            hints: Mutex::new(Vec::new()),
        });
        for version in VERSIONS {
            let config = client_config(&server, version, Identity::Resolver(impostor.clone()));
            let err = connect(&auth, auth.server_config(server.resolver.clone()), config)
                .await
                .expect_err("a bad CertificateVerify must fail the handshake");
            assert!(err.contains("BadSignature"), "{version:?}: {err}");
        }
        // The same certificate with its own key is fine: the failure above is the signature.
        let identity = Identity::Chain(vec![victim.der.clone()], victim.private_key());
        let config = client_config(&server, &rustls::version::TLS13, identity);
        let ok = connect(&auth, auth.server_config(server.resolver.clone()), config).await;
        assert_eq!(ok.expect("handshake").verdict.status, Status::Success);
    }

    #[tokio::test]
    async fn a_resumed_session_keeps_the_certificate() {
        let ca = root("Example CA");
        let auth = auth(&ca);
        let server = server();
        let good = client("client.test", 7, &ca);
        for version in VERSIONS {
            let server_config = auth.server_config(server.resolver.clone());
            let identity = Identity::Chain(vec![good.der.clone()], good.private_key());
            let config = client_config(&server, version, identity);
            let first = connect(&auth, server_config.clone(), config.clone())
                .await
                .expect("first");
            assert_eq!(first.kind, Some(HandshakeKind::Full));
            let again = connect(&auth, server_config, config).await.expect("second");
            assert_eq!(again.kind, Some(HandshakeKind::Resumed), "{version:?}");
            assert_eq!(again.verdict, first.verdict);
            assert_eq!(again.verdict.status, Status::Success);
        }
    }

    #[tokio::test]
    async fn revoked_certificates_fail() {
        let ca = root("Example CA");
        let server = server();
        let (revoked, fine) = (
            client("revoked.test", 13, &ca),
            client("fine.test", 14, &ca),
        );
        let list = crl(&ca, &[13], 2100);
        for encoded in [list.pem().expect("pem").into_bytes(), list.der().to_vec()] {
            let auth = ClientAuth::new(ca.pem().as_bytes(), Some(&encoded), 1).expect("crl");
            let identity = Identity::Chain(vec![revoked.der.clone()], revoked.private_key());
            let config = client_config(&server, &rustls::version::TLS13, identity);
            let verdict = connect(&auth, auth.server_config(server.resolver.clone()), config)
                .await
                .expect("handshake still completes")
                .verdict;
            assert_eq!(verdict.verify, "FAILED:certificate revoked");
            assert_eq!(text(&verdict.subject_dn), Some("CN=revoked.test,O=Example"));
            assert!(!VerifyMode::OptionalNoCa.admits(&verdict));
            assert_eq!(
                auth.verify(Some(std::slice::from_ref(&fine.der))).status,
                Status::Success
            );
        }
        // Two CRLs back to back in DER, as in PEM.
        let other = root("Other CA");
        let both = [crl(&other, &[], 2100).der().to_vec(), list.der().to_vec()].concat();
        let auth = ClientAuth::new(ca.pem().as_bytes(), Some(&both), 1).expect("two DER CRLs");
        assert_eq!(auth.crls, 2);
        assert_eq!(
            auth.verify(Some(std::slice::from_ref(&revoked.der))).verify,
            "FAILED:certificate revoked"
        );
        // An expired CRL fails everything it covers, as in OpenSSL.
        let stale = crl(&ca, &[], 2001).pem().expect("pem");
        let auth = ClientAuth::new(ca.pem().as_bytes(), Some(stale.as_bytes()), 1).expect("crl");
        assert_eq!(
            auth.verify(Some(std::slice::from_ref(&fine.der))).verify,
            "FAILED:CRL has expired"
        );
    }

    #[test]
    fn certificate_validity_is_checked_at_the_current_time() {
        let ca = root("Example CA");
        let auth = auth(&ca);
        let expired = client_with("old.test", 5, Some(&ca), |p| {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        });
        let verdict = auth.verify(Some(std::slice::from_ref(&expired.der)));
        assert_eq!(verdict.verify, "FAILED:certificate has expired");
        assert_eq!(text(&verdict.subject_dn), Some("CN=old.test,O=Example"));
        assert!(!VerifyMode::OptionalNoCa.admits(&verdict));
        let early = client_with("early.test", 6, Some(&ca), |p| {
            p.not_before = date_time_ymd(2999, 1, 1);
            p.not_after = date_time_ymd(3000, 1, 1);
        });
        assert_eq!(
            auth.verify(Some(&[early.der])).verify,
            "FAILED:certificate is not yet valid"
        );
        let server_only = client_with("server-only.test", 8, Some(&ca), |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        assert_eq!(
            auth.verify(Some(&[server_only.der])).verify,
            "FAILED:unsupported certificate purpose"
        );
    }

    #[tokio::test]
    async fn depth_counts_the_intermediates_of_the_verified_path() {
        let ca = root("Example CA");
        let sub = intermediate("Example Sub CA", &ca);
        let leaf = client("deep.test", 21, &sub);
        let server = server();
        let presented = chain(&[&leaf.der, sub.der()]);
        let mut verdicts = Vec::new();
        for depth in [0, 1, 2, 3] {
            let auth = ClientAuth::new(ca.pem().as_bytes(), None, depth).expect("auth");
            let identity = Identity::Chain(presented.clone(), leaf.private_key());
            let config = client_config(&server, &rustls::version::TLS13, identity);
            let session = connect(&auth, auth.server_config(server.resolver.clone()), config)
                .await
                .expect("handshake");
            verdicts.push(session.verdict.verify.to_str().expect("ascii").to_owned());
        }
        assert_eq!(
            verdicts,
            [
                "FAILED:certificate chain too long",
                "FAILED:certificate chain too long",
                "SUCCESS",
                "SUCCESS"
            ]
        );
        let deep = ClientAuth::new(ca.pem().as_bytes(), None, 2).expect("auth");
        let verdict = deep.verify(Some(&presented));
        assert_eq!(
            text(&verdict.issuer_dn),
            Some("CN=Example Sub CA,O=Example")
        );
        // Without the intermediate, there is no path at all.
        assert_eq!(
            deep.verify(Some(std::slice::from_ref(&leaf.der))).verify,
            "FAILED:unable to get local issuer certificate"
        );

        // What the client sends beyond the path does not count: the root itself, or strangers.
        let shallow = auth(&ca);
        let direct = client("direct.test", 22, &ca);
        let stranger = root("Stranger CA");
        for extra in [ca.der(), stranger.der(), sub.der()] {
            let verdict = shallow.verify(Some(&chain(&[&direct.der, extra])));
            assert_eq!(verdict.verify, "SUCCESS");
        }
        let noisy = chain(&[&leaf.der, stranger.der(), sub.der(), ca.der()]);
        assert_eq!(deep.verify(Some(&noisy)).verify, "SUCCESS");
        assert_eq!(
            shallow.verify(Some(&noisy)).verify,
            "FAILED:certificate chain too long"
        );

        // A CA certificate listed in ca.crt is an anchor, intermediate or not.
        let bundle = format!("{}{}", ca.pem(), sub.pem());
        let both = ClientAuth::new(bundle.as_bytes(), None, 1).expect("bundle");
        assert_eq!(both.verify(Some(&presented)).verify, "SUCCESS");
    }

    #[test]
    fn crls_cover_every_level_of_the_path() {
        let ca = root("Example CA");
        let sub = intermediate("Example Sub CA", &ca);
        let leaf = client("deep.test", 21, &sub);
        let presented = chain(&[&leaf.der, sub.der()]);
        let root_crl = crl(&ca, &[], 2100).pem().expect("pem");
        let auth =
            ClientAuth::new(ca.pem().as_bytes(), Some(root_crl.as_bytes()), 2).expect("auth");
        // nginx with ssl_crl checks every level (CRL_CHECK_ALL): the intermediate's CRL is missing.
        assert_eq!(
            auth.verify(Some(&presented)).verify,
            "FAILED:unable to get certificate CRL"
        );
        let both = format!("{root_crl}{}", crl(&sub, &[21], 2100).pem().expect("pem"));
        let auth = ClientAuth::new(ca.pem().as_bytes(), Some(both.as_bytes()), 2).expect("auth");
        assert_eq!(
            auth.verify(Some(&presented)).verify,
            "FAILED:certificate revoked"
        );
        let both = format!("{root_crl}{}", crl(&sub, &[99], 2100).pem().expect("pem"));
        let auth = ClientAuth::new(ca.pem().as_bytes(), Some(both.as_bytes()), 2).expect("auth");
        assert_eq!(auth.verify(Some(&presented)).verify, "SUCCESS");
    }

    #[test]
    fn a_non_ca_cannot_issue() {
        let ca = root("Example CA");
        let auth = ClientAuth::new(ca.pem().as_bytes(), None, 3).expect("auth");
        let mut params = CertificateParams::default();
        params.distinguished_name = name("not-a-ca.test");
        let key = KeyPair::generate().expect("key");
        let not_ca = CertifiedIssuer::signed_by(params, key, &ca).expect("leaf as issuer");
        let leaf = client("below.test", 31, &not_ca);
        assert_eq!(
            auth.verify(Some(&chain(&[&leaf.der, not_ca.der()]))).verify,
            "FAILED:invalid CA certificate"
        );
    }

    fn url_decode(text: &str) -> Vec<u8> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn escaped_pem_round_trips() {
        let ca = root("Example CA");
        let auth = auth(&ca);
        let good = client("client.test", 7, &ca);
        let verdict = auth.verify(Some(std::slice::from_ref(&good.der)));
        let escaped = text(&verdict.escaped_pem).expect("escaped pem");
        assert!(
            escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{escaped}"
        );
        assert!(
            escaped.ends_with("-----END%20CERTIFICATE-----%0A"),
            "{escaped}"
        );
        assert!(
            escaped
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
        );
        let pem = url_decode(escaped);
        let lines: Vec<&[u8]> = pem.split(|&b| b == b'\n').collect();
        assert!(lines.iter().all(|line| line.len() <= 64));
        let parsed = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        assert_eq!(parsed, vec![good.der.clone()]);
        // nginx's URI-component set: unreserved characters stay, everything else is escaped.
        assert_eq!(
            escape_uri_component("aZ09-._~ +/=\n%"),
            "aZ09-._~%20%2B%2F%3D%0A%25"
        );
    }

    #[test]
    fn names_are_escaped_as_rfc_2253_says() {
        let ca = root("Example CA");
        let auth = auth(&ca);
        let odd = client_with("x", 41, Some(&ca), |p| {
            let mut dn = Dn::new();
            dn.push(DnType::CountryName, "DE");
            dn.push(DnType::OrganizationName, "Acme, Inc.");
            dn.push(DnType::OrganizationalUnitName, " padded ");
            dn.push(DnType::CommonName, "#a+b\"c\\d<e>f;g=h é\u{1}\u{7f}");
            p.distinguished_name = dn;
        });
        let verdict = auth.verify(Some(&[odd.der]));
        assert_eq!(verdict.status, Status::Success);
        assert_eq!(
            text(&verdict.subject_dn),
            Some(r#"CN=\#a\+b\"c\\d\<e\>f\;g=h \C3\A9\01\7F,OU=\ padded\ ,O=Acme\, Inc.,C=DE"#)
        );
    }

    /// DER TLV with a short-form length (enough for these names).
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        assert!(content.len() < 0x80);
        [&[tag, content.len() as u8][..], content].concat()
    }

    fn atv(oid: &[u8], value: Vec<u8>) -> Vec<u8> {
        tlv(0x30, &[tlv(0x06, oid), value].concat())
    }

    fn format_name(der: &[u8]) -> String {
        let (_, name) = X509Name::from_der(der).expect("name");
        rfc2253(&name)
    }

    #[test]
    fn names_decode_and_dump_as_openssl_does() {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        const O: &[u8] = &[0x55, 0x04, 0x0a];
        const UID: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01];
        const PRIVATE: &[u8] = &[0x2a, 0x03, 0x04]; // 1.2.3.4
        let multi = tlv(
            0x31,
            &[atv(CN, tlv(0x0c, b"a")), atv(UID, tlv(0x0c, b"b"))].concat(),
        );
        let unknown = tlv(0x31, &atv(PRIVATE, tlv(0x0c, b"x")));
        let bmp = tlv(0x31, &atv(O, tlv(0x1e, &[0x00, 0xe9, 0x00, b'z'])));
        let t61 = tlv(0x31, &atv(O, tlv(0x14, &[b'n', 0xe9])));
        let bad_utf8 = tlv(0x31, &atv(CN, tlv(0x0c, &[0xff])));
        let integer = tlv(0x31, &atv(CN, tlv(0x02, &[0x05])));
        let name = tlv(
            0x30,
            &[multi, unknown, bmp, t61, bad_utf8, integer].concat(),
        );
        assert_eq!(
            format_name(&name),
            r"CN=#020105,CN=#0C01FF,O=n\C3\A9,O=\C3\A9z,1.2.3.4=#0C0178,UID=b+CN=a"
        );
        assert_eq!(format_name(&[0x30, 0x00]), "");
        // Header values never fail on what the formatter produces.
        assert!(http::HeaderValue::from_str(&format_name(&name)).is_ok());
    }

    #[test]
    fn malformed_certificates_fail_without_panicking() {
        let ca = root("Example CA");
        let list = crl(&ca, &[], 2100).pem().expect("pem");
        let auth = ClientAuth::new(ca.pem().as_bytes(), Some(list.as_bytes()), 2).expect("auth");
        let good = client("client.test", 7, &ca);
        let der = good.der.as_ref();
        for len in 0..der.len() {
            let cut = CertificateDer::from(&der[..len]);
            let verdict = auth.verify(Some(std::slice::from_ref(&cut)));
            assert_eq!(verdict.status, Status::Failed, "length {len}");
            assert!(verdict.escaped_pem.is_some());
            let behind = auth.verify(Some(&[good.der.clone(), cut]));
            assert!(behind.status != Status::None);
        }
        let mut flipped = der.to_vec();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
            let verdict = auth.verify(Some(&[CertificateDer::from(flipped.clone())]));
            assert_eq!(verdict.status, Status::Failed, "byte {i}");
            flipped[i] ^= 0x5a;
        }
        let garbage = auth.verify(Some(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]));
        assert_eq!(garbage.verify, "FAILED:certificate malformed");
        assert_eq!((garbage.subject_dn, garbage.issuer_dn), (None, None));
    }

    #[test]
    fn new_says_what_is_wrong() {
        let ca = root("Example CA");
        let ca_pem = ca.pem();
        let err = |ca: &[u8], crl: Option<&[u8]>| ClientAuth::new(ca, crl, 1).expect_err("error");
        assert!(matches!(err(b"", None), ClientAuthError::NoCaCertificate));
        assert!(matches!(
            err(b"not pem at all", None),
            ClientAuthError::NoCaCertificate
        ));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(err(broken, None), ClientAuthError::CaPem(_)));
        let not_a_cert =
            format!("{ca_pem}-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n");
        let e = err(not_a_cert.as_bytes(), None);
        assert!(
            matches!(e, ClientAuthError::BadCaCertificate { index: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("certificate #1 in ca.crt"), "{e}");
        let e = err(ca_pem.as_bytes(), Some(b""));
        assert!(matches!(e, ClientAuthError::NoCrl), "{e}");
        let e = err(ca_pem.as_bytes(), Some(ca_pem.as_bytes()));
        assert!(matches!(e, ClientAuthError::NoCrl), "{e}");
        let e = err(ca_pem.as_bytes(), Some(b"garbage"));
        assert!(matches!(e, ClientAuthError::CrlEncoding), "{e}");
        let e = err(ca_pem.as_bytes(), Some(&[0x30, 0x03, 1, 2, 3]));
        assert!(matches!(e, ClientAuthError::BadCrl(_)), "{e}");
        assert!(e.to_string().starts_with("ca.crl is not a CRL"), "{e}");
        let e = err(
            ca_pem.as_bytes(),
            Some(b"-----BEGIN X509 CRL-----\n!!!!\n-----END X509 CRL-----\n"),
        );
        assert!(matches!(e, ClientAuthError::CrlPem(_)), "{e}");
        // A certificate is DER too, but not a CRL.
        let e = err(ca_pem.as_bytes(), Some(ca.der()));
        assert!(matches!(e, ClientAuthError::BadCrl(_)), "{e}");

        let auth = ClientAuth::new(ca_pem.as_bytes(), None, 0).expect("depth 0");
        assert_eq!(auth.depth, 1);
        let debug = format!("{auth:?}");
        assert!(
            debug.contains("CN=Example CA,O=Example") && debug.contains("depth: 1"),
            "{debug}"
        );
    }

    #[test]
    fn verify_modes_follow_nginx() {
        let verdict = |status, verify: Reason| ClientCert {
            status,
            verify: http::HeaderValue::from_static(verify.header_text()),
            subject_dn: None,
            issuer_dn: None,
            escaped_pem: None,
        };
        let untrusted = verdict(Status::Failed, Reason::UnknownIssuer);
        let in_chain = verdict(Status::Failed, Reason::SelfSignedInChain);
        let expired = verdict(Status::Failed, Reason::Expired);
        let too_long = verdict(Status::Failed, Reason::ChainTooLong);
        for v in [&untrusted, &in_chain, &expired, &too_long] {
            assert!(!VerifyMode::On.admits(v) && !VerifyMode::Optional.admits(v));
        }
        assert!(VerifyMode::OptionalNoCa.admits(&untrusted));
        assert!(VerifyMode::OptionalNoCa.admits(&in_chain));
        assert!(!VerifyMode::OptionalNoCa.admits(&expired));
        assert!(!VerifyMode::OptionalNoCa.admits(&too_long));
    }

    #[test]
    fn every_reason_is_a_short_header_value() {
        use Reason::*;
        let all = [
            SelfSigned,
            SelfSignedInChain,
            UnknownIssuer,
            Expired,
            NotYetValid,
            Revoked,
            CrlUnavailable,
            CrlExpired,
            CrlSignature,
            CrlSigner,
            Signature,
            Purpose,
            InvalidCa,
            PathLength,
            ChainTooLong,
            NameConstraints,
            CriticalExtension,
            Malformed,
            Other,
        ];
        for reason in all {
            let text = reason.header_text();
            assert!(text.starts_with("FAILED:") && text.len() < 64, "{text}");
            assert!(http::HeaderValue::from_str(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn combinations_and_der_splitting() {
        let mut pick = vec![0, 1];
        let mut seen = vec![pick.clone()];
        while next_combination(&mut pick, 4) {
            seen.push(pick.clone());
        }
        assert_eq!(seen, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]);
        assert!(!next_combination(&mut [], 3));
        assert!(!next_combination(&mut [0, 1, 2], 2));
        let long = [&[0x30, 0x81, 0x80][..], &[7u8; 0x80][..]].concat();
        let both = [&long[..], &[0x30, 0x00][..]].concat();
        assert_eq!(split_der(&both), Some(vec![&long[..], &[0x30, 0x00][..]]));
        assert_eq!(split_der(&[0x30, 0x05, 1]), None);
        assert_eq!(split_der(&[0x31, 0x00]), None);
        assert_eq!(split_der(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(split_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
