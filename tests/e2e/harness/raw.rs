//! Raw bytes on a socket: for requests a normal client would fix or refuse to send (`..` in the
//! target, two `Host` headers, absolute-form, HTTP/1.0 without `Host`, a PROXY protocol header,
//! a body that stalls, hand-made HTTP/2 frames), and for watching when the proxy closes a
//! connection. Responses are parsed into the harness's [`Resp`], so `seen` and `backend` work.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{EXCHANGE_LIMIT, Resp};

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 frame types used by the hand-made frames.
pub const H2_HEADERS: u8 = 0x1;
pub const H2_SETTINGS: u8 = 0x4;
pub const H2_GOAWAY: u8 = 0x7;
pub const H2_CONTINUATION: u8 = 0x9;
/// HTTP/2 HEADERS flags.
pub const H2_END_STREAM: u8 = 0x1;
pub const H2_END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream id) and `payload`.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload fits a u32");
    assert!(
        len < 1 << 24,
        "an HTTP/2 frame payload is at most 2^24-1 bytes"
    );
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A PROXY protocol v2 header (binary) for a TCP over IPv4 connection from `src` to `dst`.
pub fn proxy_v2_header(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21); // version 2, command PROXY
    out.push(0x11); // AF_INET, STREAM
    out.extend_from_slice(&12u16.to_be_bytes());
    out.extend_from_slice(&src.ip().octets());
    out.extend_from_slice(&dst.ip().octets());
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// A raw byte connection that can read HTTP/1.x responses off the wire one at a time.
pub struct Raw<S> {
    io: S,
    /// Bytes read but not yet consumed by a response.
    buf: Vec<u8>,
}

impl Raw<TcpStream> {
    /// A plain TCP connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let _ = tcp.set_nodelay(true);
        Self::new(tcp)
    }
}

/// How a connection ended, as [`Raw::closed_within`] saw it.
#[derive(Debug)]
pub struct Closed {
    /// Everything the peer sent before closing (by end of stream or a reset).
    pub received: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes` and flushes.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes `bytes`, panicking with `what` if the connection refuses them.
    pub async fn send(&mut self, bytes: &[u8], what: &str) {
        self.write(bytes)
            .await
            .unwrap_or_else(|e| panic!("{what}: write failed: {e}"));
    }

    /// The next response on the connection, within [`EXCHANGE_LIMIT`].
    pub async fn response(&mut self) -> Result<Resp, String> {
        self.response_within(EXCHANGE_LIMIT).await
    }

    /// The next response on the connection, within `limit`.
    pub async fn response_within(&mut self, limit: Duration) -> Result<Resp, String> {
        tokio::time::timeout(limit, self.read_response())
            .await
            .map_err(|_| format!("no complete response within {limit:?}"))?
    }

    /// Reads until the peer closes the connection (end of stream or an error), at most `limit`:
    /// `Some` with what arrived before the close, `None` if the connection is still open.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Closed> {
        let mut received = std::mem::take(&mut self.buf);
        let read_all = async {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                }
            }
        };
        match tokio::time::timeout(limit, read_all).await {
            Ok(()) => Some(Closed { received }),
            Err(_) => None,
        }
    }

    /// Reads more bytes into the buffer; an error at end of stream.
    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.io.read(&mut chunk).await {
            Ok(0) => Err(format!(
                "the connection closed after {} unconsumed bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read failed: {e}")),
        }
    }

    /// Takes a line ending in CRLF off the buffer (without the CRLF).
    async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn exactly(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn read_response(&mut self) -> Result<Resp, String> {
        let status_line = self.line().await?;
        let status_line = String::from_utf8_lossy(&status_line).into_owned();
        let mut words = status_line.splitn(3, ' ');
        let version = match words.next() {
            Some("HTTP/1.1") => Version::HTTP_11,
            Some("HTTP/1.0") => Version::HTTP_10,
            _ => return Err(format!("not an HTTP/1.x status line: {status_line:?}")),
        };
        let status = words
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| format!("no status in {status_line:?}"))?;
        let mut headers = HeaderMap::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| format!("header line without ':': {line:?}"))?;
            let name = HeaderName::from_bytes(&line[..colon])
                .map_err(|e| format!("header name {:?}: {e}", &line[..colon]))?;
            let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
                .map_err(|e| format!("header value of {name}: {e}"))?;
            headers.append(name, value);
        }
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let length = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body = if status.is_informational() || status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let size = self.line().await?;
                let size = String::from_utf8_lossy(&size);
                let size = size.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|e| format!("chunk size {size:?}: {e}"))?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                body.extend(self.exactly(size).await?);
                self.exactly(2).await?;
            }
            body
        } else if let Some(n) = length {
            self.exactly(n).await?
        } else {
            // Delimited by the end of the connection.
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.io.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(format!("read a close-delimited body: {e}")),
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Resp {
            status,
            version,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// Sends `request` on a fresh TCP connection to `addr` and reads one response.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut raw = Raw::connect(addr).await;
    let shown = String::from_utf8_lossy(&request[..request.len().min(200)]).into_owned();
    raw.send(request, &shown).await;
    raw.response()
        .await
        .unwrap_or_else(|e| panic!("raw request {shown:?}: {e}"))
}
