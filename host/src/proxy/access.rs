//! Phase 4, access: who may reach a route.
//!
//! Runs after routing and before any plugin hook or upstream contact, and answers (401, 403,
//! 429...) or passes. IP allow and deny lists, authentication and rate limits slot in here,
//! cheapest first, reading the client address the view computed; no route carries such a
//! policy yet (an Ingress that asks for one is refused at compile time), so every request
//! passes.

use http::Response;

use super::{Exchange, InnerBody};

/// The access decision for this exchange: `None` lets it through.
pub fn check(_exchange: &Exchange<'_>) -> Option<Response<InnerBody>> {
    None
}
