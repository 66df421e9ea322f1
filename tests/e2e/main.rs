//! End-to-end tests for wasmgress: each test writes a folder of Kubernetes manifests, starts
//! real echo backends and the real `wasmgress` binary on ephemeral ports, and talks to it with
//! real HTTP/1.1, HTTP/2 and TLS clients. Which backend answered proves where a request went.

mod access;
mod affinity;
mod apiserver;
mod harness;

mod balancing;
mod canary;
mod classes;
mod client_tls;
mod cors;
mod deploy;
mod edge;
mod errors;
mod example_plugins;
mod external_auth;
mod forwarding;
mod grpc;
mod kubernetes;
mod limits;
mod loading;
mod mirror;
mod observability;
mod plugin_io;
mod plugin_platform;
mod plugin_template;
mod plugins;
mod quickstart;
mod redirect;
mod rejection;
mod reload;
mod retries;
mod routing;
mod services;
mod tls;
mod validate;
mod websocket;
mod websocket_messages;
