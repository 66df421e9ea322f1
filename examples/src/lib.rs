//! Demo backends for the quickstart and the end-to-end tests.
//!
//! Each module is a small, real server a user could point an Ingress at. They own nothing of the
//! proxy and must never depend on it: the tests use them as independent peers.

pub mod echo;
pub mod greeter;
pub mod ws_echo;
