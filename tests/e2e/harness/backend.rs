//! Real echo backends (`wasmgress_examples::echo`) on loopback ports, and the Service and
//! EndpointSlice objects that point at them.

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::manifests::{self, NS, Port, ServicePort};

/// An echo backend answering with its `name`; stopped when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend called `name` on 127.0.0.1 and an ephemeral port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an echo backend on 127.0.0.1:0");
        Self::serve(name, listener)
    }

    /// Starts a backend called `name` on exactly `addr`.
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self::serve(name, TcpListener::bind(addr).await?))
    }

    fn serve(name: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("backend local address");
        let task = tokio::spawn(wasmgress_examples::echo::serve(listener, name.to_owned()));
        Self {
            name: name.to_owned(),
            addr,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn ip(&self) -> String {
        self.addr.ip().to_string()
    }

    /// A Service named after the backend (port 80 `http`, targetPort = the backend's port) and an
    /// EndpointSlice with the backend as its one ready endpoint, in [`NS`].
    pub fn objects(&self) -> Vec<Value> {
        self.objects_in(NS, &self.name)
    }

    /// Like [`Backend::objects`], with the Service called `service` in namespace `ns`.
    pub fn objects_in(&self, ns: &str, service: &str) -> Vec<Value> {
        vec![
            manifests::service(
                ns,
                service,
                &[ServicePort {
                    name: Some("http"),
                    port: 80,
                    target: Port::Number(self.port()),
                }],
            ),
            manifests::endpoint_slice(
                ns,
                service,
                &format!("{service}-slice"),
                &[(Some("http"), self.port())],
                &[manifests::ready(&self.ip())],
            ),
        ]
    }
}

/// Starts backends on the same port at each of `ips` (loopback addresses such as 127.0.0.2),
/// like pods of one Deployment: one EndpointSlice can then list them all with one port.
pub async fn same_port(names_and_ips: &[(&str, IpAddr)]) -> Vec<Backend> {
    'attempt: for _ in 0..20 {
        let (first_name, first_ip) = names_and_ips[0];
        let first = Backend::start_on(first_name, SocketAddr::new(first_ip, 0))
            .await
            .expect("bind the first backend");
        let port = first.port();
        let mut all = vec![first];
        for &(name, ip) in &names_and_ips[1..] {
            match Backend::start_on(name, SocketAddr::new(ip, port)).await {
                Ok(b) => all.push(b),
                Err(_) => continue 'attempt,
            }
        }
        return all;
    }
    panic!("could not bind backends on one shared port at {names_and_ips:?}");
}

/// A loopback port that nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port to release");
    listener.local_addr().expect("local address").port()
}

/// Starts one backend per name and returns them with their Services and EndpointSlices.
pub async fn several(names: &[&str]) -> (Vec<Backend>, Vec<Value>) {
    let mut backends = Vec::new();
    let mut objects = Vec::new();
    for name in names {
        let b = Backend::start(name).await;
        objects.extend(b.objects());
        backends.push(b);
    }
    (backends, objects)
}

/// A loopback port that accepts no more connections: a listener that never accepts, whose
/// accept queue is already full, so further connection attempts hang until their own timeout
/// (Linux drops SYNs to a full accept queue). Keep the returned value alive while it is used.
pub struct Unresponsive {
    pub port: u16,
    _listener: tokio::net::TcpListener,
    _queued: Vec<tokio::net::TcpStream>,
}

pub async fn unresponsive_port() -> Unresponsive {
    let socket = tokio::net::TcpSocket::new_v4().expect("create a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind 127.0.0.1:0");
    let listener = socket.listen(0).expect("listen with a zero backlog");
    let addr = listener.local_addr().expect("local address");
    let mut queued = Vec::new();
    for _ in 0..16 {
        let attempt = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        match attempt {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue of {addr}: {e}"),
            // A connection attempt now hangs: the queue is full.
            Err(_) => {
                return Unresponsive {
                    port: addr.port(),
                    _listener: listener,
                    _queued: queued,
                };
            }
        }
    }
    panic!("the accept queue of {addr} never filled up");
}
