//! A route's body and trailers hooks as a [`Filter`] for the proxy's streaming bodies: each
//! piece of a request body (towards the upstream) or of an upstream's response body (towards
//! the client) goes through the chain as it arrives, never buffered whole.
//!
//! Owns the request copy body hooks see: taken when the body starts (after the request hooks
//! for requests, after the response hooks for responses), so values a body hook sets are seen
//! by its later body calls only. This module must not know the proxy's body types; it is the
//! filter they call.

use bytes::Bytes;
use http::HeaderMap;

use super::hooks::{BodyOutcome, Direction, HookChain, MAX_BODY_CHUNK};
use super::request::HookRequest;
use crate::body::{Cut, Filter};

/// The body hooks of one route for one body.
pub struct BodyHooks {
    chain: HookChain,
    request: Option<Box<HookRequest>>,
    direction: Direction,
}

impl BodyHooks {
    /// The request body's hooks, if the chain has any.
    pub fn request(chain: &HookChain, request: Option<&HookRequest>) -> Option<Self> {
        chain
            .has_request_body_hooks()
            .then(|| Self::new(chain, request, Direction::ToUpstream))
    }

    /// The response body's hooks, if the chain has any.
    pub fn response(chain: &HookChain, request: Option<&HookRequest>) -> Option<Self> {
        chain
            .has_response_body_hooks()
            .then(|| Self::new(chain, request, Direction::ToClient))
    }

    fn new(chain: &HookChain, request: Option<&HookRequest>, direction: Direction) -> Self {
        BodyHooks {
            chain: chain.clone(),
            request: request.map(|r| Box::new(r.clone())),
            direction,
        }
    }
}

impl Filter for BodyHooks {
    const MAX_CHUNK: usize = MAX_BODY_CHUNK;

    fn data(&mut self, piece: Bytes, end: bool) -> Result<Bytes, Cut> {
        match self
            .chain
            .run_body(self.direction, &mut self.request, piece, end)
        {
            BodyOutcome::Forward(out) => Ok(out),
            BodyOutcome::Abort => Err(Cut),
        }
    }

    fn trailers(&mut self, trailers: &mut HeaderMap) -> Result<(), Cut> {
        if self
            .chain
            .run_trailers(self.direction, &mut self.request, trailers)
        {
            Ok(())
        } else {
            Err(Cut)
        }
    }
}
