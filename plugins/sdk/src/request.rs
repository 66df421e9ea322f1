//! [`Request`]: the request a hook runs for, over the host's `request` handle.

use crate::bindings::wasmgress::plugin::types::{self, RequestError, RouteInfo, TlsInfo};
use alloc::string::String;
use alloc::vec::Vec;

/// The request a hook runs for. Everything it returns is the proxy's view (normalised path,
/// checked authority, client address after PROXY protocol and trusted forwarding headers),
/// so nothing here can be forged by the client. Each read is one call into the host: read
/// what you need once.
pub struct Request<'a> {
    handle: &'a types::Request,
}

impl<'a> Request<'a> {
    /// Wrap the host's handle (done by the export glue).
    pub fn new(handle: &'a types::Request) -> Self {
        Request { handle }
    }

    /// The method, as it will go upstream.
    pub fn method(&self) -> String {
        self.handle.method()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> String {
        self.handle.scheme()
    }

    /// Host and optional port, as the client sent it.
    pub fn authority(&self) -> String {
        self.handle.authority()
    }

    /// Path and query: the normalised path with the original query, or what a request hook
    /// set.
    pub fn path(&self) -> String {
        self.handle.path()
    }

    /// The request id (`X-Request-ID`).
    pub fn id(&self) -> String {
        self.handle.id()
    }

    /// The client's IP address.
    pub fn client_addr(&self) -> String {
        self.handle.client_addr()
    }

    /// SNI and the verified client certificate's subject and issuer; `None` over plain HTTP.
    pub fn tls(&self) -> Option<TlsInfo> {
        self.handle.tls()
    }

    /// The route the request matched (kind, namespace, name, Service).
    pub fn route(&self) -> RouteInfo {
        self.handle.route()
    }

    /// A value this plugin kept for this request.
    pub fn get_value(&self, key: &str) -> Option<Vec<u8>> {
        self.handle.get_value(key)
    }

    /// Keep a small value (at most 4 KiB, 16 keys) for this plugin's later hooks of this
    /// request.
    pub fn set_value(&self, key: &str, value: &[u8]) -> Result<(), RequestError> {
        self.handle.set_value(key, value)
    }

    /// Change the method sent upstream (request hook only).
    pub fn set_method(&self, method: &str) -> Result<(), RequestError> {
        self.handle.set_method(method)
    }

    /// Change the path sent upstream, keeping the query (request hook only); it replaces
    /// `rewrite-target`'s.
    pub fn set_path(&self, path: &str) -> Result<(), RequestError> {
        self.handle.set_path(path)
    }

    /// Replace the query sent upstream, `None` removes it (request hook only).
    pub fn set_query(&self, query: Option<&str>) -> Result<(), RequestError> {
        self.handle.set_query(query)
    }

    /// Send the request to another backend instead of the route's Service (request hook
    /// only): `SERVICE:PORT` exactly as the route grants it to this plugin
    /// (`backends(SERVICE:PORT, ...)` in `wasmgress.io/plugin.<name>.capabilities`), a Service
    /// of the route's namespace; [`RequestError::NotGranted`] otherwise. The rest of the route
    /// (timeouts, protocol, header edits) stays; a backend without ready endpoints answers 503.
    pub fn set_backend(&self, backend: &str) -> Result<(), RequestError> {
        self.handle.set_backend(backend)
    }
}
