//! The harness: a folder of manifests, real echo backends, the binary under test, and HTTP and
//! TLS clients to talk to it.

pub mod backend;
pub mod browser;
pub mod certs;
pub mod client;
pub mod grpc;
pub mod manifests;
pub mod process;
pub mod raw;
pub mod recorder;
pub mod slow;
pub mod yaml;

pub use backend::Backend;
pub use client::{Conn, Req, Resp};
pub use manifests::{Ingress, Manifests, Port, exact, implementation_specific, prefix};
pub use process::Wasmgress;
pub mod plugins;
pub mod ws;
