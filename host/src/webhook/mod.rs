//! The validating admission webhook: `wasmgress webhook --addr ADDR --tls-cert F --tls-key F`.
//!
//! The API server POSTs an AdmissionReview v1 to `/validate` (the path in
//! deploy/base/webhook.yaml) for each create or update of an Ingress; the webhook runs the
//! controller's own compile, plugins' `configure` included, on the current snapshot with that
//! Ingress in it, and denies it with compile's diagnostics when compile would reject it
//! ([`review`] holds that decision). It never renders or runs configuration text: it only
//! compiles, and compile only parses (a `configuration-snippet` is read by the snippet plugin's
//! safe subset and refused otherwise, inside the plugin sandbox and its deadline).
//!
//! This module owns the HTTPS listener (certificate files reloaded when cert-manager rotates
//! them), request limits (body size, the 2 s answer bound, how many compiles run at once) and
//! the HTTP answers. It must not touch what the controller serves: the view it is handed is
//! read-only, and nothing it compiles is ever published. Where the view comes from (files or
//! the Kubernetes API, plugins from ConfigMaps) is the caller's business.

pub mod review;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::compile;
use crate::source::Snapshot;
use crate::tls::{self, CertError};
pub use review::{BadReview, Verdict, review};

/// The path the ValidatingWebhookConfiguration calls.
pub const PATH: &str = "/validate";
/// Kubernetes objects are at most 1.5 MiB and a review of an update carries two of them.
pub const MAX_BODY: usize = 4 << 20;
/// The bound is 2 s from request to answer; the compile gets this much of it, the rest
/// is for reading, parsing and answering.
pub const COMPILE_BUDGET: Duration = Duration::from_millis(1800);
/// How long a client may take to complete the TLS handshake, send its headers or its body.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after `stop`.
const DRAIN: Duration = Duration::from_secs(5);

/// What the webhook validates against: the latest snapshot from the source (files or the
/// Kubernetes API) and the compile options (identity, defaults, plugin registry incl. plugins
/// loaded from ConfigMaps).
#[derive(Clone, Debug)]
pub struct View {
    pub snapshot: Arc<Snapshot>,
    pub options: Arc<compile::Options>,
}

/// The `webhook` command's flags.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub addr: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read the webhook's TLS file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `files` names the certificate file, the key file, or both (when they do not match).
    #[error("cannot use {files} for the webhook's TLS: {source}")]
    Certificate {
        files: String,
        #[source]
        source: CertError,
    },
    #[error("cannot listen on {addr} (webhook listener): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Loads the certificate, binds, logs `listening listener="webhook" addr=...` and serves until
/// `stop` resolves, then gives open connections a few seconds to finish. The certificate and
/// key files are re-read (at the next connection) whenever they change; a broken new pair is
/// logged and the old one kept.
pub async fn serve(
    options: WebhookOptions,
    view: watch::Receiver<Arc<View>>,
    stop: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    // Certificate first: the readiness probe is a TCP check, so the port must not open before
    // the webhook can complete a handshake.
    let certs = Arc::new(CertFiles::load(&options.tls_cert, &options.tls_key)?);
    let bind = |source| WebhookError::Bind {
        addr: options.addr,
        source,
    };
    let listener = TcpListener::bind(options.addr).await.map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    tracing::info!(listener = "webhook", addr = %local, "listening");
    serve_listener(listener, certs, view, stop).await;
    Ok(())
}

/// What every request handler shares.
struct Shared {
    view: watch::Receiver<Arc<View>>,
    /// Compiles running at once. A compile is CPU-bound and cannot be cancelled once started
    /// (a timed-out one runs to its end on its blocking thread, holding its permit), so a burst
    /// of hostile reviews queues here, inside their own deadlines, instead of piling up threads.
    compiles: Arc<Semaphore>,
}

async fn serve_listener(
    listener: TcpListener,
    certs: Arc<CertFiles>,
    view: watch::Receiver<Arc<View>>,
    stop: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls::server_config(certs.clone()));
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Arc::new(Shared {
        view,
        compiles: Arc::new(Semaphore::new(parallel)),
    });
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = "webhook", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let (acceptor, certs, shared) = (acceptor.clone(), certs.clone(), shared.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Before the handshake, so the first connection after a rotation gets the new pair.
            certs.refresh();
            let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                // TCP readiness probes and scanners end here; nothing worth a log line.
                Ok(Err(e)) => {
                    tracing::debug!(listener = "webhook", error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(IO_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = "webhook", error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = "webhook",
            "connections still open after the drain period; closing"
        );
    }
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: the webhook answers POST {PATH}"),
        );
    }
    if req.method() != Method::POST {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} takes POST of an AdmissionReview"),
        );
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return resp;
    }
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an AdmissionReview is at most {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let collected = tokio::time::timeout(
        IO_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time".into(),
            );
        }
    };
    let view = shared.view.borrow().clone();
    match answer(&body, view, &shared.compiles, COMPILE_BUDGET).await {
        Ok(review) => {
            let mut resp = Response::new(Full::new(Bytes::from(review.to_string())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(Refused::Bad(e)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(Refused::Internal) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "validation failed inside the webhook; see its log".into(),
        ),
    }
}

/// Why a review got no AdmissionReview back; either way the API server applies failurePolicy.
#[derive(Debug)]
enum Refused {
    Bad(BadReview),
    /// The compile panicked: our bug, not the user's object.
    Internal,
}

/// [`review::review`] under a deadline: the compile runs on a blocking thread (it is CPU-bound
/// and calls into plugins), at most `compiles` at once, and a review not decided within
/// `budget` is denied.
async fn answer(
    body: &[u8],
    view: Arc<View>,
    compiles: &Arc<Semaphore>,
    budget: Duration,
) -> Result<serde_json::Value, Refused> {
    let parsed = review::parse(body).map_err(Refused::Bad)?;
    let verdict = match parsed.work {
        review::Work::Done(v) => v,
        review::Work::Judge(candidate) => {
            let compiles = compiles.clone();
            let work = async move {
                // Never closed, so acquiring only waits.
                let permit = compiles.acquire_owned().await;
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    review::judge(candidate, &view)
                })
                .await
            };
            match tokio::time::timeout(budget, work).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::error!(uid = %parsed.uid, error = %e, "validating an Ingress failed");
                    return Err(Refused::Internal);
                }
                Err(_) => {
                    tracing::warn!(
                        uid = %parsed.uid,
                        budget_ms = budget.as_millis(),
                        "validation did not finish in time; denied"
                    );
                    Verdict::timed_out()
                }
            }
        }
    };
    Ok(review::respond(&parsed.uid, &verdict))
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What a file looked like when last read: a rotation (cert-manager, or the kubelet swapping
/// a Secret volume's symlink) changes its modification time or size.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The serving certificate, from two PEM files that are re-read when they change.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files' stamps at the last read, good or bad, so a broken pair is read (and logged)
    /// once rather than at every connection, and retried when either file changes again.
    seen: Mutex<(Stamp, Stamp)>,
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertFiles {
    fn load(cert: &Path, key: &Path) -> Result<Self, WebhookError> {
        // Stamps before reading: a change while reading is then seen as a change next time.
        let seen = (stamp(cert), stamp(key));
        let pair = read_pair(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(pair),
            seen: Mutex::new(seen),
        })
    }

    /// Re-reads the files if they changed since the last read. Two `stat`s per connection, and
    /// the API server keeps its connections open, so this is cheap enough to do inline.
    fn refresh(&self) {
        let now = (stamp(&self.cert), stamp(&self.key));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return;
        }
        *seen = now;
        match read_pair(&self.cert, &self.key) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                tracing::info!(
                    listener = "webhook",
                    cert = %self.cert.display(),
                    "TLS certificate reloaded"
                );
            }
            Err(e) => tracing::error!(
                listener = "webhook",
                error = %e,
                "cannot reload the TLS certificate; still serving the previous one"
            ),
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| WebhookError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    tls::certified_key(&cert_pem, &key_pem).map_err(|source| {
        let files = match source {
            CertError::NoCertificate | CertError::BadCertificate(_) => cert.display().to_string(),
            CertError::NoKey | CertError::BadKey(_) | CertError::UnsupportedKey(_) => {
                key.display().to_string()
            }
            CertError::Mismatch(_) | CertError::Generate(_) => {
                format!("{} and {}", cert.display(), key.display())
            }
        };
        WebhookError::Certificate { files, source }
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, ServerName};
    use serde_json::{Value, json};
    use tokio_rustls::TlsConnector;

    use super::review::tests::{SNIPPET, annotate, body, ingress, response, view};
    use super::*;

    fn semaphore() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(2))
    }

    /// Hostile input is answered correctly through the same bounded path `serve` uses: the
    /// assertions are on the answers (a timeout would be a denial with another message), not
    /// on how long they took.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_hostile_objects_within_the_bound() {
        let v = Arc::new(view(vec![]));
        let bounded = |b: Vec<u8>| {
            let v = v.clone();
            async move {
                answer(&b, v, &semaphore(), COMPILE_BUDGET)
                    .await
                    .expect("a well-formed review")
            }
        };

        // A 1 MiB annotation value nobody owns: a warning, clipped, and the Ingress is allowed.
        let huge = "v".repeat(1 << 20);
        let object = annotate(
            ingress("big", "big.test", "/", "web"),
            "nginx.ingress.kubernetes.io/not-a-thing",
            &huge,
        );
        let a = bounded(body("CREATE", object)).await;
        let r = response(&a);
        assert_eq!(r["allowed"], true, "{}", r["status"]);
        assert_eq!(r["warnings"].as_array().map(Vec::len), Some(1), "{r}");

        // A 1 MiB snippet of allowed directives hiding a Lua one at the end: refused (by name,
        // or by the plugin's own deadline on a slow machine: a denial either way), and the
        // answer stays small whatever the plugin echoes.
        let snippet = format!(
            "{}content_by_lua 'ngx.say(1)';",
            "proxy_set_header X-A b;\n".repeat((1 << 20) / 24)
        );
        let object = annotate(
            ingress("hidden", "hidden.test", "/", "web"),
            SNIPPET,
            &snippet,
        );
        let a = bounded(body("CREATE", object)).await;
        let r = response(&a);
        assert_eq!(r["allowed"], false, "{r}");
        let m = r["status"]["message"].as_str().unwrap_or("");
        assert!(
            m.starts_with("error: Ingress default/hidden: metadata.annotations")
                && m.contains("plugin snippet: ")
                && m.len() < 4096,
            "{m}"
        );

        // 5,000 paths: all good is allowed; all broken is denied with a bounded message.
        let paths = |service: &str| -> Vec<Value> {
            (0..5000)
                .map(|i| {
                    json!({"path": format!("/p{i}"), "pathType": "Prefix",
                           "backend": {"service": {"name": service, "port": {"number": 80}}}})
                })
                .collect()
        };
        let mut many = ingress("many", "many.test", "/", "web");
        many["spec"]["rules"][0]["http"]["paths"] = json!(paths("web"));
        let a = bounded(body("CREATE", many.clone())).await;
        assert_eq!(response(&a)["allowed"], true, "{}", response(&a)["status"]);

        many["spec"]["rules"][0]["http"]["paths"] = json!(paths("missing"));
        let a = bounded(body("CREATE", many)).await;
        let r = response(&a);
        assert_eq!(r["allowed"], false, "{r}");
        let m = r["status"]["message"].as_str().unwrap_or("");
        assert!(
            m.contains("paths[0].backend.service.name: Service default/missing not found")
                && m.ends_with("and 4980 more errors"),
            "{m}"
        );
    }

    /// Waiting for a compile slot counts against the deadline: with every slot taken by
    /// compiles that have not finished, a review is denied when its time is up.
    #[tokio::test]
    async fn a_review_not_decided_in_time_is_denied() {
        let v = Arc::new(view(vec![]));
        let busy = Arc::new(Semaphore::new(1));
        let _held = busy.clone().acquire_owned().await.expect("permit");
        let b = body("CREATE", ingress("slow", "slow.test", "/", "web"));
        let a = answer(&b, v, &busy, Duration::from_millis(50))
            .await
            .expect("answered");
        let r = response(&a);
        assert_eq!(r["allowed"], false, "{r}");
        assert_eq!(r["status"]["code"], 504, "{r}");
        assert_eq!(
            r["status"]["message"], "validation did not finish within 2 s",
            "{r}"
        );
    }

    struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params
                .distinguished_name
                .push(DnType::CommonName, "webhook test CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let key = KeyPair::generate().expect("CA key");
            Self(CertifiedIssuer::self_signed(params, key).expect("CA"))
        }

        /// A PEM certificate and key for `localhost`, and the certificate's DER.
        fn leaf(&self, cn: &str) -> (String, String, CertificateDer<'static>) {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.0).expect("leaf");
            (cert.pem(), key.serialize_pem(), cert.der().clone())
        }
    }

    /// Writes a file and moves its mtime, so a rewrite within the clock's granularity is
    /// still seen as a change.
    fn write(path: &Path, text: &str, age: u64) {
        std::fs::write(path, text).expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(SystemTime::now() + Duration::from_secs(age))
            .expect("set mtime");
    }

    /// One request over a fresh TLS connection; the status, the body and the certificate the
    /// server presented.
    async fn call(
        addr: SocketAddr,
        ca: &Ca,
        h2: bool,
        path: &str,
        payload: Vec<u8>,
    ) -> (StatusCode, Vec<u8>, CertificateDer<'static>) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.0.der().clone()).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake with a certificate the CA signed");
        let (_, session) = tls.get_ref();
        let presented = session.peer_certificates().expect("certificates")[0].clone();
        assert_eq!(
            session.alpn_protocol(),
            Some(if h2 { &b"h2"[..] } else { &b"http/1.1"[..] })
        );
        let req = Request::post(format!("https://localhost{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .expect("request");
        let io = TokioIo::new(tls);
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2");
            tokio::spawn(conn);
            sender.send_request(req).await.expect("response")
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http/1.1");
            tokio::spawn(conn);
            sender.send_request(req).await.expect("response")
        };
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, bytes.to_vec(), presented)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_reviews_over_tls_and_follows_certificate_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = Ca::new();
        let (cert_pem, key_pem, first) = ca.leaf("first");
        write(&cert, &cert_pem, 0);
        write(&key, &key_pem, 0);

        // Errors name the file.
        let missing = dir.path().join("nope.key");
        let e = CertFiles::load(&cert, &missing).expect_err("missing key");
        assert!(e.to_string().contains("nope.key"), "{e}");
        let e = CertFiles::load(&key, &key).expect_err("a key is not a certificate");
        assert!(
            e.to_string().contains("tls.key for the webhook's TLS"),
            "{e}"
        );

        let certs = Arc::new(CertFiles::load(&cert, &key).expect("certificate"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_views, rx) = watch::channel(Arc::new(view(vec![])));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(listener, certs, rx, async {
            let _ = stop_rx.await;
        }));

        let good = body("CREATE", ingress("web", "a.test", "/", "web"));
        for h2 in [false, true] {
            let (status, bytes, presented) = call(addr, &ca, h2, PATH, good.clone()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(presented, first);
            let answer: Value = serde_json::from_slice(&bytes).expect("JSON answer");
            assert_eq!(response(&answer)["allowed"], true, "{answer}");
        }
        let lua = annotate(
            ingress("lua", "lua.test", "/", "web"),
            SNIPPET,
            "lua_code_cache off;",
        );
        let (status, bytes, _) = call(addr, &ca, true, PATH, body("UPDATE", lua)).await;
        assert_eq!(status, StatusCode::OK);
        let answer: Value = serde_json::from_slice(&bytes).expect("JSON answer");
        assert_eq!(response(&answer)["allowed"], false, "{answer}");

        let (status, _, _) = call(addr, &ca, false, "/other", good.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, bytes, _) = call(addr, &ca, false, PATH, b"{\"apiVersion\":".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            String::from_utf8_lossy(&bytes).starts_with("not an AdmissionReview: "),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let (status, _, _) = call(addr, &ca, true, PATH, vec![b' '; MAX_BODY + 1]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        // Rotation: the next connection gets the new pair.
        let (cert_pem, key_pem, second) = ca.leaf("second");
        write(&key, &key_pem, 10);
        write(&cert, &cert_pem, 10);
        let (_, _, presented) = call(addr, &ca, false, PATH, good.clone()).await;
        assert_eq!(presented, second, "rotated certificate served");

        // A broken rotation keeps the previous pair.
        write(&cert, "not a certificate", 20);
        let (status, _, presented) = call(addr, &ca, false, PATH, good.clone()).await;
        assert_eq!((status, presented), (StatusCode::OK, second));

        stop_tx.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .expect("no panic");
    }
}
