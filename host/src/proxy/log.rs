//! Phase 9, log: the access log (one line per request or tunnel on stdout, JSON or text) and
//! the per-route request metrics.
//!
//! A [`Record`] is started when a request arrives, filled in by the phases (the view's host
//! and normalised path, the route, the upstream) and written when its response body ends
//! (or is dropped), so durations and byte counts cover the whole exchange, streams included.
//! Lines are formatted on the request's thread and written by one writer thread, so a slow
//! stdout never blocks a request: when the writer falls behind, lines are dropped and counted.
//! With `--access-log off` no record is made at all.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// `--access-log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Off,
    Json,
    Text,
}

/// Lines dropped because the writer could not keep up.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

static SINK: OnceLock<(Format, mpsc::SyncSender<String>)> = OnceLock::new();

/// Starts the writer thread; the first call decides the format for the process.
pub fn init(format: Format) {
    if format == Format::Off {
        return;
    }
    SINK.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<String>(16 * 1024);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                loop {
                    // Flush whenever the queue runs dry, so lines are prompt but batched.
                    let line = match rx.try_recv() {
                        Ok(line) => line,
                        Err(mpsc::TryRecvError::Empty) => {
                            let _ = out.flush();
                            match rx.recv() {
                                Ok(line) => line,
                                Err(_) => return,
                            }
                        }
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    };
                    let _ = out.write_all(line.as_bytes());
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer");
        }
        (format, tx)
    });
}

/// Whether records should be made at all.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// What one line says.
#[derive(Debug)]
pub struct Record {
    pub start: Instant,
    pub time: SystemTime,
    pub client: IpAddr,
    pub host: String,
    pub method: String,
    pub path: String,
    /// `http1`, `h2`, `grpc` or `websocket`.
    pub protocol: &'static str,
    pub ingress: Option<Arc<str>>,
    pub request_id: Option<HeaderValue>,
    pub upstream: Option<SocketAddr>,
    pub upstream_duration: Option<Duration>,
    pub status: u16,
    pub grpc_status: Option<HeaderValue>,
    /// Request body bytes, counted as they are forwarded.
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: u64,
}

impl Record {
    /// Writes the line now (for responses made by the proxy, and tunnels when they end).
    pub fn finish(self) {
        let Some((format, tx)) = SINK.get() else {
            return;
        };
        let line = match format {
            Format::Off => return,
            Format::Json => self.json(),
            Format::Text => self.text(),
        };
        if tx.try_send(line).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn json(&self) -> String {
        let text =
            |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut line = serde_json::json!({
            "time": rfc3339(self.time),
            "client": self.client.to_string(),
            "host": self.host,
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol,
            "status": self.status,
            "grpc_status": text(&self.grpc_status),
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out,
            "duration_ms": ms(self.start.elapsed()),
            "upstream": self.upstream.map(|a| a.to_string()),
            "upstream_duration_ms": self.upstream_duration.map(ms),
            "ingress": self.ingress.as_deref(),
            "request_id": text(&self.request_id),
        })
        .to_string();
        line.push('\n');
        line
    }

    fn text(&self) -> String {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        format!(
            "{} {} {} \"{} {}\" {} {} {} {} {:.3}ms upstream={} ingress={} id={}\n",
            rfc3339(self.time),
            self.client,
            self.host,
            self.method,
            self.path,
            self.protocol,
            self.status,
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out,
            self.start.elapsed().as_secs_f64() * 1000.0,
            dash(self.upstream.map(|a| a.to_string())),
            dash(self.ingress.as_deref().map(str::to_owned)),
            dash(
                self.request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            ),
        )
    }
}

impl Record {
    /// A record for a request that has just arrived (the raw host and target, until the view
    /// replaces them).
    pub fn start(parts: &http::request::Parts, conn: &super::Conn) -> Self {
        let host = match parts.uri.authority() {
            Some(a) => a.as_str(),
            None => parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        };
        Record {
            start: Instant::now(),
            time: SystemTime::now(),
            client: conn.remote.ip(),
            host: host.to_owned(),
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str)
                .to_owned(),
            protocol: "",
            ingress: None,
            request_id: parts.headers.get(&super::forward::X_REQUEST_ID).cloned(),
            upstream: None,
            upstream_duration: None,
            status: 0,
            grpc_status: None,
            bytes_in: Arc::default(),
            bytes_out: 0,
        }
    }

    /// What the view made of the request: the client, the host and the path routed on.
    pub fn seen(&mut self, view: &super::view::RequestView) {
        self.client = view.client;
        view.host().clone_into(&mut self.host);
        self.path = view.target().into_owned();
    }
}

/// Phase 9 for one response: counts it, and hands its record to the body, which writes the
/// line when the response ends.
pub fn finish(
    resp: http::Response<super::InnerBody>,
    mut record: Option<Box<Record>>,
    stats: Option<Arc<crate::metrics::RouteStats>>,
    protocol: usize,
    method: &http::Method,
    started: Instant,
) -> http::Response<super::ProxyBody> {
    use http_body_util::Either;
    let (parts, body) = resp.into_parts();
    let grpc = protocol == super::view::GRPC;
    // Trailers-only gRPC answers carry their status in the headers.
    let grpc_status = if grpc {
        parts.headers.get(&super::local::GRPC_STATUS)
    } else {
        None
    };
    if let Some(s) = &stats {
        s.record(protocol, method, parts.status, started.elapsed());
        if let Some(code) = grpc_status {
            s.grpc_status(code);
        }
    }
    if let Some(r) = record.as_mut() {
        r.protocol = crate::metrics::PROTOCOLS[protocol];
        r.status = parts.status.as_u16();
        r.grpc_status = grpc_status.cloned();
    }
    let body = match body {
        Either::Left(streamed) => {
            // gRPC statuses usually come in trailers, at the end of the stream.
            let trailers_to = stats.filter(|_| grpc && grpc_status.is_none());
            Either::Left(Logged::new(streamed, record, trailers_to))
        }
        Either::Right(made) => {
            if let Some(r) = record {
                r.finish();
            }
            Either::Right(made)
        }
    };
    http::Response::from_parts(parts, body)
}

/// UTC, to the millisecond, without a date crate.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// A response body that writes its request's line when it ends or is dropped, and counts the
/// gRPC status its trailers carry.
pub struct Logged<B> {
    inner: B,
    record: Option<Box<Record>>,
    grpc_stats: Option<Arc<crate::metrics::RouteStats>>,
}

impl<B> Logged<B> {
    pub fn new(
        inner: B,
        record: Option<Box<Record>>,
        grpc_stats: Option<Arc<crate::metrics::RouteStats>>,
    ) -> Self {
        Self {
            inner,
            record,
            grpc_stats,
        }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish();
        }
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(record), Some(data)) = (this.record.as_mut(), frame.data_ref()) {
                record.bytes_out += data.len() as u64;
            } else if let Some(status) = frame
                .trailers_ref()
                .and_then(|t| t.get(&super::local::GRPC_STATUS))
            {
                if let Some(stats) = &this.grpc_stats {
                    stats.grpc_status(status);
                }
                if let Some(record) = this.record.as_mut() {
                    record.grpc_status = Some(status.clone());
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_556_146_123);
        assert_eq!(rfc3339(t), "2026-11-24T21:35:46.123Z");
        let leap_day = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap_day), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn json_lines_carry_the_fields_users_grep_for() {
        let record = Record {
            start: Instant::now(),
            time: SystemTime::UNIX_EPOCH,
            client: "192.0.2.1".parse().expect("ip"),
            host: "a.test".into(),
            method: "GET".into(),
            path: "/x?y=1".into(),
            protocol: "h2",
            ingress: Some("default/web".into()),
            request_id: Some(HeaderValue::from_static("abc")),
            upstream: Some("10.0.0.1:8080".parse().expect("addr")),
            upstream_duration: Some(Duration::from_millis(2)),
            status: 200,
            grpc_status: None,
            bytes_in: Arc::new(AtomicU64::new(5)),
            bytes_out: 7,
        };
        let line: serde_json::Value =
            serde_json::from_str(&record.json()).expect("one JSON object");
        for key in [
            "time",
            "client",
            "host",
            "method",
            "path",
            "protocol",
            "status",
            "grpc_status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "upstream",
            "upstream_duration_ms",
            "ingress",
            "request_id",
        ] {
            assert!(line.get(key).is_some(), "{key} missing from {line}");
        }
        assert_eq!(line["bytes_in"], 5);
        assert_eq!(line["upstream"], "10.0.0.1:8080");
    }
}
