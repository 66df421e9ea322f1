//! Request mirroring (ingress-nginx `mirror-target`, `mirror-request-body`, `mirror-host`):
//! a copy of each request of a route goes to another URL, and its answer is thrown away.
//!
//! A copy never slows or fails the request it copies: it runs in its own task; its body is fed
//! from the request body's frames as they pass on their way upstream (a reference count per
//! frame, no copy of the bytes) through a small bounded queue, and a copy that cannot keep up is
//! cut off rather than waited for; at most [`MAX_IN_FLIGHT`] copies run per process, and
//! beyond that a copy is dropped. Every copy is counted on `/metrics` as sent, failed or
//! dropped. Copies go through the same guarded resolver as external authentication: never to
//! link-local or metadata addresses, nor to loopback in a cluster.
//!
//! This module owns the copies; the request itself is `proxy::forward`'s.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Uri};
use http_body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::access::external::Guarded;
use crate::policy::{self, Part, RequestVars};

/// Copies running at once, per process.
pub const MAX_IN_FLIGHT: usize = 256;
/// Frames of a copy's body waiting for the mirror before the copy is cut off.
const QUEUE: usize = 16;
/// The longest a copy may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// Copies by outcome, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// The process's copy counters.
pub fn counts() -> &'static Counts {
    static COUNTS: OnceLock<Counts> = OnceLock::new();
    COUNTS.get_or_init(Counts::default)
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A route's mirror, as compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The copy's URL, rendered per request.
    pub target: Box<[Part]>,
    /// The copy's `Host`; `None`: the target's authority.
    pub host: Option<HeaderValue>,
    /// The copy carries the request body.
    pub body: bool,
    /// Loopback targets are allowed (folder mode, or `--allow-local-endpoints`).
    pub allow_loopback: bool,
}

/// Hop-by-hop headers, never copied.
static HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
];

impl Mirror {
    /// Starts the copy of a request (its head as the upstream gets it); returns where the
    /// request body's frames go when the copy carries them.
    pub fn start(&self, parts: &Parts, vars: &RequestVars<'_>, has_body: bool) -> Option<Tee> {
        let counts = counts();
        if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = Slot;
        let Some(uri) = self.target_uri(vars) else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut headers = parts.headers.clone();
        for name in &HOP {
            headers.remove(name);
        }
        let host = self
            .host
            .clone()
            .or_else(|| HeaderValue::from_str(uri.authority()?.as_str()).ok());
        if let Some(host) = host {
            headers.insert(header::HOST, host);
        }
        let carries = self.body && has_body;
        if !carries {
            headers.remove(header::CONTENT_LENGTH);
        }
        let cut = Arc::new(AtomicBool::new(false));
        let (tee, body) = if carries {
            let (tx, rx) = mpsc::channel(QUEUE);
            (
                Some(Tee {
                    tx,
                    cut: cut.clone(),
                    finished: false,
                }),
                CopyBody::Stream {
                    rx,
                    cut: cut.clone(),
                },
            )
        } else {
            (None, CopyBody::Empty)
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let client = client(self.allow_loopback);
        tokio::spawn(async move {
            let _slot = slot;
            let sent = tokio::time::timeout(DEADLINE, async {
                let resp = client.request(req).await.map_err(|_| ())?;
                // Read and dropped, so the connection can serve the next copy.
                http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map_err(|_| ())
            })
            .await;
            // Each copy is counted once: a cut-off copy was counted dropped when it was cut.
            if !cut.load(Ordering::Relaxed) {
                let outcome = match sent {
                    Ok(Ok(_)) => &counts.sent,
                    _ => &counts.failed,
                };
                outcome.fetch_add(1, Ordering::Relaxed);
            }
        });
        tee
    }

    /// Checks at compile time that the target's (literal) address may be reached.
    pub fn check(&self) -> Result<(), String> {
        let Some(Part::Literal(head)) = self.target.first() else {
            return Err(
                "the mirror target must start with a literal http:// or https:// URL".into(),
            );
        };
        let rest = head
            .strip_prefix("http://")
            .or_else(|| head.strip_prefix("https://"))
            .ok_or("the mirror target must be an http:// or https:// URL")?;
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        // `http://host$request_uri` (ingress-nginx's own example) is fine: that variable starts
        // with `/`; any other variable right after the host could change the host.
        let path_follows = matches!(
            self.target.get(1),
            None | Some(Part::Variable(policy::Variable::RequestUri))
        );
        if authority.is_empty() || authority.len() == rest.len() && !path_follows {
            return Err("the mirror target's host must be written out, not a variable".into());
        }
        let uri: Uri = format!("http://{authority}/")
            .parse()
            .map_err(|_| format!("the mirror target's host `{authority}` is not valid"))?;
        crate::access::external::dialable(&uri, self.allow_loopback)
            .map_err(|why| why.replace("auth URL", "mirror target"))
    }

    /// The copy's URL for this request, if it renders to a URL copies may go to.
    fn target_uri(&self, vars: &RequestVars<'_>) -> Option<Uri> {
        let uri: Uri = policy::render(&self.target, vars).parse().ok()?;
        crate::access::external::dialable(&uri, self.allow_loopback).ok()?;
        Some(uri)
    }
}

/// Frees a copy's place when its task ends.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request body's frames go for its copy (see [`crate::body::Upload`]). Dropped
/// before [`finish`](Tee::finish), it cuts the copy off: a copy never passes for whole when
/// its request body did not go through.
#[derive(Debug)]
pub struct Tee {
    tx: mpsc::Sender<Bytes>,
    cut: Arc<AtomicBool>,
    finished: bool,
}

impl Drop for Tee {
    fn drop(&mut self) {
        if !self.finished {
            self.cut();
        }
    }
}

impl Tee {
    /// The request body ended: so does the copy's, whole.
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// Passes a frame on; `false` when the copy is cut off (its queue was full) or already
    /// over (it failed or was answered without the rest of the body).
    pub fn send(&self, data: &Bytes) -> bool {
        match self.tx.try_send(data.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut();
                false
            }
            // The copy's task ended and counted itself.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The copy cannot have the whole body: it is cut off, and counted as dropped (its task
    /// then fails on the cut body and does not count it again).
    pub fn cut(&self) {
        if self.tx.is_closed() {
            return;
        }
        if !self.cut.swap(true, Ordering::Relaxed) {
            counts().dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A copy's body: nothing, or the request body's frames until the tee ends (complete) or is
/// cut (an error, so the mirror never takes a truncated body for a whole one).
enum CopyBody {
    Empty,
    Stream {
        rx: mpsc::Receiver<Bytes>,
        cut: Arc<AtomicBool>,
    },
}

/// The copy body's failure: it was cut off.
#[derive(Debug)]
struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the copy could not keep up and was cut off")
    }
}

impl std::error::Error for Cut {}

impl Body for CopyBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        match self.get_mut() {
            CopyBody::Empty => Poll::Ready(None),
            CopyBody::Stream { rx, cut } => match rx.poll_recv(cx) {
                Poll::Ready(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(None) if cut.load(Ordering::Relaxed) => Poll::Ready(Some(Err(Cut))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, CopyBody::Empty)
    }
}

type MirrorClient = Client<hyper_rustls::HttpsConnector<HttpConnector<Guarded>>, CopyBody>;

/// One pooled client per loopback policy, for the life of the process.
fn client(allow_loopback: bool) -> MirrorClient {
    static STRICT: OnceLock<MirrorClient> = OnceLock::new();
    static LOOSE: OnceLock<MirrorClient> = OnceLock::new();
    let cell = if allow_loopback { &LOOSE } else { &STRICT };
    cell.get_or_init(|| {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(crate::access::external::guarded_connector(allow_loopback))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_cuts_the_copy_and_the_copy_body_fails() {
        let (tx, rx) = mpsc::channel(1);
        let cut = Arc::new(AtomicBool::new(false));
        let tee = Tee {
            tx,
            cut: cut.clone(),
            finished: false,
        };
        let mut body = CopyBody::Stream { rx, cut };
        assert!(tee.send(&Bytes::from_static(b"one")));
        assert!(!tee.send(&Bytes::from_static(b"two")), "the queue is full");
        tee.finish();
        let first = http_body_util::BodyExt::frame(&mut body).await;
        assert!(matches!(first, Some(Ok(_))));
        let next = http_body_util::BodyExt::frame(&mut body).await;
        assert!(
            matches!(next, Some(Err(Cut))),
            "a cut copy never looks complete"
        );
    }

    #[tokio::test]
    async fn a_whole_body_ends_cleanly() {
        let (tx, rx) = mpsc::channel(4);
        let cut = Arc::new(AtomicBool::new(false));
        let tee = Tee {
            tx,
            cut: cut.clone(),
            finished: false,
        };
        let body = CopyBody::Stream {
            rx,
            cut: cut.clone(),
        };
        assert!(tee.send(&Bytes::from_static(b"a")));
        assert!(tee.send(&Bytes::from_static(b"b")));
        tee.finish();
        let all = http_body_util::BodyExt::collect(body)
            .await
            .expect("complete")
            .to_bytes();
        assert_eq!(&all[..], b"ab");
    }

    #[tokio::test]
    async fn a_tee_dropped_unfinished_cuts_its_copy() {
        let (tx, rx) = mpsc::channel(4);
        let cut = Arc::new(AtomicBool::new(false));
        let tee = Tee {
            tx,
            cut: cut.clone(),
            finished: false,
        };
        let body = CopyBody::Stream { rx, cut };
        assert!(tee.send(&Bytes::from_static(b"half")));
        drop(tee);
        assert!(http_body_util::BodyExt::collect(body).await.is_err());
    }
}
