//! wasmgress: a Kubernetes ingress controller whose annotation behaviours are sandboxed
//! WebAssembly plugins.
//!
//! Data flows one way: [`source`] (files) -> [`source::Snapshot`] -> [`compile`] ->
//! [`route::RouteTable`] + [`tls::CertStore`] -> [`proxy`]. [`run`] wires the loop; [`admin`]
//! answers probes; [`demo`] is the quickstart.

pub mod access;
pub mod admin;
pub mod affinity;
pub mod body;
pub mod canary;
pub mod cluster;
pub mod compat;
pub mod compile;
pub mod cors;
pub mod demo;
pub mod diagnostic;
pub mod metrics;
pub mod mirror;
pub mod plugin;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod run;
pub mod source;
pub mod tls;
pub mod upstream;
pub mod webhook;
