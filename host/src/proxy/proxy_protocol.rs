//! The PROXY protocol (HAProxy's, v1 text and v2 binary) that cloud load balancers put in
//! front of a connection to say whom it is really from (`--use-proxy-protocol`).
//!
//! Reads exactly the header's bytes off the connection, parsed by the `ppp` crate, and nothing
//! of what follows. With the option on, every connection must start with a header, as with
//! nginx's `listen ... proxy_protocol`: one without it is closed, never served as the load
//! balancer's own traffic.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature; v1 starts with `PROXY `.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line (the protocol's own limit).
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
}

/// Reads the header: `Some(source)` for a proxied connection, `None` when the balancer speaks
/// for itself (v2 `LOCAL`, v1 `UNKNOWN`: health checks), whose own address then stands.
pub async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Error> {
    let mut start = [0u8; 16];
    stream.read_exact(&mut start).await?;
    if start[..12] == V2_SIGNATURE {
        read_v2(stream, start).await
    } else if start.starts_with(b"PROXY ") {
        read_v1(stream, start).await
    } else {
        Err(Error::Missing)
    }
}

async fn read_v2(stream: &mut TcpStream, start: [u8; 16]) -> Result<Option<SocketAddr>, Error> {
    let len = usize::from(u16::from_be_bytes([start[14], start[15]]));
    let mut header = Vec::with_capacity(16 + len);
    header.extend_from_slice(&start);
    header.resize(16 + len, 0);
    stream.read_exact(&mut header[16..]).await?;
    let parsed = ppp::v2::Header::try_from(header.as_slice())
        .map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    })
}

/// Reads the rest of a v1 line byte by byte (it is short, and nothing after it may be taken).
async fn read_v1(stream: &mut TcpStream, start: [u8; 16]) -> Result<Option<SocketAddr>, Error> {
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(Error::Malformed("v1 line longer than 107 bytes".into()));
        }
        line.push(stream.read_u8().await?);
    }
    let text = std::str::from_utf8(&line).map_err(|e| Error::Malformed(e.to_string()))?;
    let parsed = ppp::v1::Header::try_from(text).map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}
