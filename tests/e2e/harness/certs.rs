//! A test certificate authority (rcgen), leaf certificates as `kubernetes.io/tls` Secrets, and
//! rustls clients that trust only that CA (or, to look at the default certificate, nothing).

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::manifests;

/// A throwaway CA; every leaf it issues verifies against [`TestCa::roots`].
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// A rustls server configuration presenting this certificate (for TLS test backends).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let chain = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("leaf certificate");
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .expect("leaf key PEM")
            .expect("a key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        Arc::new(config)
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "wasmgress e2e test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        Self { issuer }
    }

    /// A leaf for `names` (DNS names, wildcards allowed) signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .expect("add the test CA to a root store");
        roots
    }
}

impl Leaf {
    /// This leaf as a `kubernetes.io/tls` Secret in [`manifests::NS`]; `string_data` picks
    /// `stringData` over base64 `data`.
    pub fn secret(&self, name: &str, string_data: bool) -> Value {
        manifests::tls_secret(
            manifests::NS,
            name,
            &self.cert_pem,
            &self.key_pem,
            string_data,
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting only `roots`, offering `alpn` and the given TLS versions.
pub fn client_config(
    roots: RootCertStore,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions supported by ring")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client that accepts any certificate, to look at what the server presents.
pub fn insecure_config(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TLS 1.2 and 1.3.
pub const BOTH_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Connects to `addr` and handshakes with `sni` (a DNS name, or an IP address: then no SNI is
/// sent). The error is the handshake's, so certificate failures can be told apart.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned())
        .unwrap_or_else(|e| panic!("{sni:?} is not a server name: {e}"));
    let handshake = TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(std::time::Duration::from_secs(30), handshake)
        .await
        .map_err(|_| std::io::Error::other("TLS handshake took longer than 30 s"))?
}

/// The negotiated ALPN protocol and the server's leaf certificate of a connection.
pub fn negotiated(
    stream: &TlsStream<TcpStream>,
) -> (Option<Vec<u8>>, Option<CertificateDer<'static>>) {
    let conn = stream.get_ref().1;
    (
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()),
    )
}

/// The negotiated TLS version of a connection.
pub fn version(stream: &TlsStream<TcpStream>) -> Option<rustls::ProtocolVersion> {
    stream.get_ref().1.protocol_version()
}

/// True when `err` is a rustls certificate rejection (as opposed to, say, a refused connection).
pub fn is_certificate_error(err: &std::io::Error) -> bool {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
}

#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl TestCa {
    /// This CA's certificate as PEM, for clients that take a PEM root (tonic).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }
}
