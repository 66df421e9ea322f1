//! The `request` handle of ABI 0.2.0: what a hook reads and changes through it, over the
//! [`HookRequest`](crate::plugin::request::HookRequest) lent to the store for the call.
//!
//! A handle used outside a hook call (there is no request in the store) traps the call: only
//! a guest that kept a borrow past its call could do that.

use super::{RequestHandle, StoreState, v0_2::wasmgress::plugin::types};
use crate::plugin::request::{HookRequest, RequestRefusal};
use wasmtime::component::Resource;

fn refusal(r: RequestRefusal) -> types::RequestError {
    match r {
        RequestRefusal::Invalid => types::RequestError::Invalid,
        RequestRefusal::TooLarge => types::RequestError::TooLarge,
        RequestRefusal::TooLate => types::RequestError::TooLate,
        RequestRefusal::NotGranted => types::RequestError::NotGranted,
    }
}

impl StoreState {
    fn lent(&mut self) -> wasmtime::Result<&mut HookRequest> {
        self.request.as_deref_mut().ok_or_else(|| {
            wasmtime::Error::msg("the request handle was used outside its hook call")
        })
    }
}

type Handle = Resource<RequestHandle>;

impl types::HostRequest for StoreState {
    fn method(&mut self, _: Handle) -> wasmtime::Result<String> {
        Ok(self.lent()?.method().as_str().to_string())
    }

    fn scheme(&mut self, _: Handle) -> wasmtime::Result<String> {
        Ok(self.lent()?.scheme().to_string())
    }

    fn authority(&mut self, _: Handle) -> wasmtime::Result<String> {
        Ok(self.lent()?.authority().to_string())
    }

    fn path(&mut self, _: Handle) -> wasmtime::Result<String> {
        Ok(self.lent()?.path().as_str().to_string())
    }

    fn id(&mut self, _: Handle) -> wasmtime::Result<String> {
        Ok(self.lent()?.id().to_string())
    }

    fn client_addr(&mut self, _: Handle) -> wasmtime::Result<String> {
        Ok(self.lent()?.client().to_string())
    }

    fn tls(&mut self, _: Handle) -> wasmtime::Result<Option<types::TlsInfo>> {
        let text = |v: &Option<http::HeaderValue>| {
            v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        Ok(self.lent()?.tls().map(|t| types::TlsInfo {
            sni: t.sni.as_deref().map(str::to_string),
            client_subject: text(&t.client_subject),
            client_issuer: text(&t.client_issuer),
        }))
    }

    fn route(&mut self, _: Handle) -> wasmtime::Result<types::RouteInfo> {
        Ok(match self.lent()?.route() {
            Some(r) => types::RouteInfo {
                kind: r.kind.to_string(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                service: r.service.clone(),
            },
            None => types::RouteInfo {
                kind: String::new(),
                namespace: String::new(),
                name: String::new(),
                service: String::new(),
            },
        })
    }

    fn get_value(&mut self, _: Handle, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.lent()?.value(&key).map(<[u8]>::to_vec))
    }

    fn set_value(
        &mut self,
        _: Handle,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::RequestError>> {
        Ok(self.lent()?.set_value(&key, value).map_err(refusal))
    }

    fn set_method(
        &mut self,
        _: Handle,
        method: String,
    ) -> wasmtime::Result<Result<(), types::RequestError>> {
        Ok(self.lent()?.set_method(&method).map_err(refusal))
    }

    fn set_path(
        &mut self,
        _: Handle,
        path: String,
    ) -> wasmtime::Result<Result<(), types::RequestError>> {
        Ok(self.lent()?.set_path(&path).map_err(refusal))
    }

    fn set_query(
        &mut self,
        _: Handle,
        query: Option<String>,
    ) -> wasmtime::Result<Result<(), types::RequestError>> {
        Ok(self.lent()?.set_query(query.as_deref()).map_err(refusal))
    }

    fn set_backend(
        &mut self,
        _: Handle,
        backend: String,
    ) -> wasmtime::Result<Result<(), types::RequestError>> {
        // The grant is the instance's own (its route's), checked here and not trusted later.
        let granted = self.granted.clone();
        let Some(name) = granted.backend(&backend) else {
            return Ok(Err(types::RequestError::NotGranted));
        };
        Ok(self.lent()?.set_backend(name).map_err(refusal))
    }

    fn drop(&mut self, _: Handle) -> wasmtime::Result<()> {
        // Only borrows are ever handed out; there is nothing to free.
        Ok(())
    }
}
