//! Streaming bodies with idle timeouts, in both directions.
//!
//! A body is passed through frame by frame (never collected), so gRPC streams and large uploads
//! flow as they arrive. The idle timeout is nginx's semantics: the longest gap between two
//! frames, not a total. An expired gRPC response ends with `DEADLINE_EXCEEDED` trailers instead
//! of a bare reset, so the client sees a gRPC status. Request bodies are also limited in size
//! and report how far they got ([`Upload`], [`Progress`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::access::limit::Slot;
use crate::policy::ResponseRate;

/// Why a proxied body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Peer(#[from] hyper::Error),
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("a plugin cut the body off")]
    Aborted,
}

/// What an idle body does when its timeout expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnIdle {
    Fail,
    GrpcDeadline,
}

/// `B` with an idle timeout between frames.
pub struct Idle<B> {
    inner: B,
    // Created on the first wait, so a body that is always ready (or never polled, like an
    // empty GET body) never touches the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    // Frames only record the time; the timer is re-armed lazily when it fires, so a busy
    // stream costs one clock read per frame instead of one timer reset.
    last: Instant,
    on_idle: OnIdle,
    finished: bool,
    /// Data bytes passed, for the access log (only when it is on).
    counter: Option<Arc<AtomicU64>>,
    /// Bandwidth limit (`limit-rate`); boxed: rare, and every response carries the field.
    throttle: Option<Box<Throttle>>,
    /// Held until the body is dropped: the request's `limit-connections` slot.
    _slot: Option<Slot>,
}

/// nginx's `limit_rate_after` / `limit_rate` for one response: after `after` bytes, data
/// goes out no faster than `rate` bytes per second. A frame larger than what the budget allows
/// is split (a cheap `Bytes` slice), so even a one-frame response is paced.
struct Throttle {
    rate: u64,
    after: u64,
    sent: u64,
    /// When the first byte went out: the budget grows from there.
    began: Option<Instant>,
    /// Data taken from the upstream and not yet allowed out.
    pending: Option<Bytes>,
    wait: Option<Pin<Box<Sleep>>>,
}

/// Frames smaller than this are not cut out of a held frame: waiting a little longer beats
/// sending many tiny frames.
const THROTTLE_CHUNK: u64 = 8 << 10;

impl Throttle {
    /// Bytes that may go out at `now`.
    fn budget(&mut self, now: Instant) -> u64 {
        let began = *self.began.get_or_insert(now);
        let earned = (now - began).as_secs_f64() * self.rate as f64;
        (self.after + earned as u64).saturating_sub(self.sent)
    }

    /// The next piece of `pending` that may go out now, or `None` with the wait armed.
    fn release(&mut self, now: Instant) -> Option<Bytes> {
        let pending = self.pending.as_mut()?;
        let want = (pending.len() as u64).min(THROTTLE_CHUNK.max(1));
        let budget = self.budget(now);
        if budget < want {
            let short = (want - budget) as f64 / self.rate as f64;
            let due = now + Duration::from_secs_f64(short);
            self.wait = Some(Box::pin(tokio::time::sleep_until(due)));
            return None;
        }
        let n = budget.min(self.pending.as_ref().map_or(0, |p| p.len() as u64)) as usize;
        let pending = self.pending.as_mut()?;
        let out = if n >= pending.len() {
            self.pending.take()?
        } else {
            pending.split_to(n)
        };
        self.sent += out.len() as u64;
        Some(out)
    }
}

impl<B> Idle<B> {
    pub fn new(inner: B, timeout: Duration, on_idle: OnIdle) -> Self {
        Self {
            inner,
            sleep: None,
            timeout,
            last: Instant::now(),
            on_idle,
            finished: false,
            counter: None,
            throttle: None,
            _slot: None,
        }
    }

    /// Holds `slot` (a `limit-connections` count) until the body ends.
    pub fn holding(mut self, slot: Option<Slot>) -> Self {
        self._slot = slot;
        self
    }

    /// Limits the bandwidth once `rate.after_bytes` have passed.
    pub fn throttled(mut self, rate: Option<ResponseRate>) -> Self {
        self.throttle = rate.map(|r| {
            Box::new(Throttle {
                rate: r.bytes_per_second.max(1),
                after: r.after_bytes,
                sent: 0,
                began: None,
                pending: None,
                wait: None,
            })
        });
        self
    }

    /// Counts the data bytes that pass into `counter`.
    pub fn counting(mut self, counter: Option<Arc<AtomicU64>>) -> Self {
        self.counter = counter;
        self
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if this.throttle.is_some() {
            return this.poll_throttled(cx);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.last = Instant::now();
            if let (Some(counter), Some(Ok(f))) = (&this.counter, &frame)
                && let Some(data) = f.data_ref()
            {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::Peer)));
        }
        this.poll_idle(cx)
    }

    fn is_end_stream(&self) -> bool {
        let held = self.throttle.as_ref().is_some_and(|t| t.pending.is_some());
        self.finished || (!held && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self
            .throttle
            .as_ref()
            .and_then(|t| t.pending.as_ref())
            .map_or(0, |p| p.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

impl<B> Idle<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    /// The inner body is pending: wait for its next frame or the idle timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.last + this.timeout)));
        loop {
            ready!(sleep.as_mut().poll(cx));
            let due = this.last + this.timeout;
            if Instant::now() < due {
                sleep.as_mut().reset(due);
                continue;
            }
            this.finished = true;
            return Poll::Ready(Some(match this.on_idle {
                OnIdle::Fail => Err(BodyError::Idle(this.timeout)),
                OnIdle::GrpcDeadline => Ok(Frame::trailers(grpc_status_trailers(
                    4,
                    &format!("no message from upstream for {:?}", this.timeout),
                ))),
            }));
        }
    }

    /// `poll_frame` under a bandwidth limit: data is taken from the inner body one frame at a
    /// time and let out as the budget allows.
    fn poll_throttled(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(t) = self.throttle.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(wait) = t.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                t.wait = None;
                // The upstream was not read while we waited: that was not its idleness.
                self.last = Instant::now();
            }
            if t.pending.is_some() {
                match t.release(Instant::now()) {
                    Some(data) => {
                        if let Some(counter) = &self.counter {
                            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // The wait is armed: poll it next time round.
                    None => continue,
                }
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.last = Instant::now();
                    match frame.into_data() {
                        Ok(data) => t.pending = Some(data),
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    }
                }
                Poll::Ready(other) => {
                    self.last = Instant::now();
                    return Poll::Ready(other.map(|f| f.map_err(BodyError::Peer)));
                }
                Poll::Pending => return self.poll_idle(cx),
            }
        }
    }
}

/// How far a request body has got on its way upstream, shared between the body (which the
/// upstream connection polls) and the wait for the response head, so that wait can apply
/// nginx's timeouts: `proxy-send-timeout` while the upstream is not taking the body,
/// `proxy-read-timeout` once it has all of it, and nothing of ours while the client is the one
/// that is slow (the body's own `client-body-timeout` covers that).
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    state: AtomicU8,
    /// Nanoseconds from `base` to the last change of `state`.
    at: AtomicU64,
}

/// [`Progress`] states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Not polled yet: the upstream connection is still being made.
    NotStarted,
    /// A piece was handed to the upstream connection, which has not asked for more.
    Sending,
    /// The upstream connection asked for more and the client has not sent it yet.
    WaitingForClient,
    /// All of the body was handed over.
    Done,
    /// The body went over its size limit.
    TooLarge,
    /// The client fell silent for longer than `client-body-timeout`.
    ClientIdle,
}

const STAGES: [Stage; 6] = [
    Stage::NotStarted,
    Stage::Sending,
    Stage::WaitingForClient,
    Stage::Done,
    Stage::TooLarge,
    Stage::ClientIdle,
];

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            state: AtomicU8::new(0),
            at: AtomicU64::new(0),
        })
    }

    fn set(&self, stage: Stage) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at.store(nanos, Ordering::Relaxed);
        self.state.store(stage as u8, Ordering::Release);
    }

    pub fn stage(&self) -> Stage {
        STAGES[usize::from(self.state.load(Ordering::Acquire))]
    }

    /// When the wait for the upstream times out, as things stand: `None` while the client is
    /// the slow side. `start` bounds the upstream connection (`connect`) before the body moves.
    pub fn deadline(&self, connect: Duration, send: Duration, read: Duration) -> Option<Instant> {
        let at = self.base + Duration::from_nanos(self.at.load(Ordering::Relaxed));
        match self.stage() {
            Stage::NotStarted => Some(at + connect + send),
            Stage::Sending => Some(at + send),
            Stage::Done => Some(at + read),
            Stage::WaitingForClient | Stage::TooLarge | Stage::ClientIdle => None,
        }
    }
}

/// A client's request body on its way upstream: streamed frame by frame, limited in size
/// (`proxy-body-size`; 0 is no limit), bounded in client silence (`client-body-timeout`), and
/// reporting its [`Progress`].
pub struct Upload<B> {
    /// `None`: no body at all (a bodyless request sent again on another endpoint).
    inner: Option<Idle<B>>,
    limit: u64,
    seen: u64,
    progress: Option<Arc<Progress>>,
    /// A mirror's copy of the body (`mirror-request-body`), fed frame by frame.
    tee: Option<crate::mirror::Tee>,
}

impl<B> Upload<B> {
    pub fn new(inner: Idle<B>, limit: u64, progress: Option<Arc<Progress>>) -> Self {
        Self {
            inner: Some(inner),
            limit,
            seen: 0,
            progress,
            tee: None,
        }
    }

    /// Feeds a mirror's copy with the body's frames as they pass.
    pub fn with_tee(mut self, tee: Option<crate::mirror::Tee>) -> Self {
        self.tee = tee;
        self
    }

    /// No body: the end of stream at once.
    pub fn empty() -> Self {
        Self {
            inner: None,
            limit: 0,
            seen: 0,
            progress: None,
            tee: None,
        }
    }
}

impl<B> Body for Upload<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let end = inner.is_end_stream();
        if let Some(tee) = &this.tee {
            // The copy gets what goes upstream, and never holds it up: a copy that cannot
            // keep up is cut off (see `mirror`). `Some(whole)`: the copy's body is over.
            let over = match &polled {
                Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                    Some(d) if !tee.send(d) => Some(false),
                    _ => end.then_some(true),
                },
                Poll::Ready(Some(Err(_))) => Some(false),
                Poll::Ready(None) => Some(true),
                Poll::Pending => None,
            };
            if let Some(whole) = over
                && let Some(tee) = this.tee.take()
            {
                // Dropped unfinished, a tee cuts its copy off.
                if whole {
                    tee.finish();
                }
            }
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if this.limit > 0 && this.seen > this.limit {
                if let Some(progress) = &this.progress {
                    progress.set(Stage::TooLarge);
                }
                return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
            }
        }
        let Some(progress) = &this.progress else {
            return polled;
        };
        let stage = match &polled {
            Poll::Pending => Stage::WaitingForClient,
            Poll::Ready(None) | Poll::Ready(Some(Err(BodyError::Peer(_)))) => Stage::Done,
            Poll::Ready(Some(Err(_))) => Stage::ClientIdle,
            Poll::Ready(Some(Ok(_))) if end => Stage::Done,
            Poll::Ready(Some(Ok(_))) => Stage::Sending,
        };
        progress.set(stage);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A [`Filter`]'s verdict that the body must be cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut;

/// What a body passes through on its way (the route's body hooks, in the proxy): data in
/// pieces of at most [`Filter::MAX_CHUNK`] bytes, the end, then trailers.
pub trait Filter: Send + Sync {
    /// Largest piece handed to [`Filter::data`]; bigger frames are split.
    const MAX_CHUNK: usize;

    /// One piece of data (`end`: the body's last call; its piece may be empty). Returns what
    /// goes on instead (possibly nothing).
    fn data(&mut self, piece: Bytes, end: bool) -> Result<Bytes, Cut>;

    /// The body's trailers, edited in place.
    fn trailers(&mut self, trailers: &mut HeaderMap) -> Result<(), Cut>;
}

/// `B` passed through a [`Filter`], when there is one (none: `B` as it is, for the price of
/// one branch per frame). A body with no data at all is never passed (no call for a GET);
/// otherwise the filter's last data call has `end` set, before any trailers. Frames are
/// joined (up to [`Filter::MAX_CHUNK`]) before the filter sees them: what is there is taken at
/// once, and while less than [`JOIN_BELOW`] bytes are gathered the body waits up to
/// [`JOIN_WAIT`] for more, as Nagle's algorithm does (hyper's HTTP/1.1 reader hands over one
/// chunk at a time, so "what is there" is one chunk). A client sending one-byte chunks thus
/// costs at most one filter call per millisecond or per kibibyte, not one per chunk; a stream
/// of bigger pieces is never held. Its length is unknown once filtered: the caller drops
/// `Content-Length`.
pub struct Hooked<B, F> {
    inner: B,
    /// Boxed: a body without hooks (nearly all of them) carries one pointer, not the state.
    filtering: Option<Box<Filtering<F>>>,
}

/// A hooked body's state.
struct Filtering<F> {
    filter: F,
    /// Data ready for the filter.
    rest: Bytes,
    /// Data being gathered: the first frame as it came, then any later ones joined.
    first: Option<Bytes>,
    joined: bytes::BytesMut,
    /// While a small gathering waits for more ([`JOIN_WAIT`]); made on the first wait.
    join_timer: Option<Pin<Box<Sleep>>>,
    /// The timer is set for the current gathering.
    join_armed: bool,
    /// Trailers taken from `inner`, not yet passed through the filter.
    inner_trailers: Option<HeaderMap>,
    /// `inner` has nothing after what was taken.
    inner_ended: bool,
    /// Some data was seen (so the filter owes an `end` call).
    seen: bool,
    /// The `end` call was made.
    end_called: bool,
    /// Filtered trailers to send after a last data frame.
    held: Option<HeaderMap>,
    done: bool,
}

impl<B, F> Hooked<B, F> {
    pub fn new(inner: B, filter: Option<F>) -> Self {
        Self {
            inner,
            filtering: filter.map(|f| Box::new(Filtering::new(f))),
        }
    }

    /// Passes the body through `filter` from now on.
    pub fn filter_with(&mut self, filter: F) {
        self.filtering = Some(Box::new(Filtering::new(filter)));
    }

    #[cfg(test)]
    fn filter(&self) -> Option<&F> {
        self.filtering.as_deref().map(|f| &f.filter)
    }
}

impl<F> Filtering<F> {
    fn new(filter: F) -> Self {
        Filtering {
            filter,
            rest: Bytes::new(),
            first: None,
            joined: bytes::BytesMut::new(),
            join_timer: None,
            join_armed: false,
            inner_trailers: None,
            inner_ended: false,
            seen: false,
            end_called: false,
            held: None,
            done: false,
        }
    }

    fn gathered(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    fn gather(&mut self, data: Bytes) {
        match self.first.take() {
            None if self.joined.is_empty() => self.first = Some(data),
            first => {
                if let Some(first) = first {
                    self.joined.extend_from_slice(&first);
                }
                self.joined.extend_from_slice(&data);
            }
        }
    }

    /// Whether the current small gathering has waited [`JOIN_WAIT`]; arms the timer on its
    /// first call for a gathering.
    fn join_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + JOIN_WAIT;
        let timer = self
            .join_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.join_armed {
            self.join_armed = true;
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn is_end_stream<B: Body>(&self, inner: &B) -> bool {
        // An empty body stays empty; otherwise the filter may still add to it.
        (self.done && self.held.is_none())
            || (!self.seen
                && self.gathered() == 0
                && self.inner_trailers.is_none()
                && self.held.is_none()
                && inner.is_end_stream())
    }
}

impl<F: Filter> Filtering<F> {
    /// Gathers what `inner` has, as described on [`Hooked`], into `rest`, then its trailers
    /// or its end. `Pending` while waiting for a first frame, or for more of a small gathering.
    fn take_ready<B>(&mut self, inner: &mut B, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        while self.gathered() < F::MAX_CHUNK && !self.inner_ended {
            let frame = match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending if self.gathered() == 0 => return Poll::Pending,
                Poll::Pending if self.gathered() < JOIN_BELOW && !self.join_expired(cx) => {
                    return Poll::Pending;
                }
                Poll::Pending => break,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    self.inner_ended = true;
                    break;
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    self.seen = true;
                    self.gather(data);
                    self.inner_ended = inner.is_end_stream();
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.inner_trailers = Some(trailers);
                        self.inner_ended = true;
                    }
                }
            }
        }
        self.join_armed = false;
        self.rest = match self.first.take() {
            Some(first) => first,
            None => self.joined.split().freeze(),
        };
        Poll::Ready(Ok(()))
    }

    /// The next frame out: filtered data, then the filter's end, then the trailers.
    fn poll_next<B>(
        &mut self,
        inner: &mut B,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        loop {
            if let Some(t) = self.held.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if self.rest.is_empty() && !self.inner_ended {
                if let Err(e) = ready!(self.take_ready(inner, cx)) {
                    return Poll::Ready(Some(Err(e)));
                }
                continue;
            }
            if !self.rest.is_empty() {
                let n = self.rest.len().min(F::MAX_CHUNK);
                let piece = self.rest.split_to(n);
                let end = self.rest.is_empty() && self.inner_ended && !self.end_called;
                self.end_called |= end;
                match self.filter.data(piece, end) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    Err(Cut) => return abort(&mut self.done),
                }
            }
            // `inner` ended: the filter's end call (if owed), then the trailers, then the end.
            self.done = true;
            let last = match end_call(&mut self.filter, self.seen, &mut self.end_called) {
                Ok(last) => last,
                Err(Cut) => return abort(&mut self.done),
            };
            if let Some(mut trailers) = self.inner_trailers.take() {
                if self.filter.trailers(&mut trailers).is_err() {
                    return abort(&mut self.done);
                }
                self.held = Some(trailers);
            }
            if let Some(out) = last {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }
}

/// Gathered data under this size waits (up to [`JOIN_WAIT`]) for more before a body filter
/// sees it.
pub const JOIN_BELOW: usize = 1024;
/// How long a small gathering waits for more.
pub const JOIN_WAIT: Duration = Duration::from_millis(1);

impl<B, F> Body for Hooked<B, F>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
    F: Filter,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match this.filtering.as_deref_mut() {
            None => Pin::new(&mut this.inner).poll_frame(cx),
            Some(f) => f.poll_next(&mut this.inner, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.filtering.as_deref() {
            None => self.inner.is_end_stream(),
            Some(f) => f.is_end_stream(&self.inner),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.filtering {
            None => self.inner.size_hint(),
            Some(_) if self.is_end_stream() => SizeHint::with_exact(0),
            Some(_) => SizeHint::default(),
        }
    }
}

/// The filter's `end` call, if the body had data and it was not made yet; what it returns, if
/// anything.
fn end_call<F: Filter>(
    filter: &mut F,
    seen: bool,
    called: &mut bool,
) -> Result<Option<Bytes>, Cut> {
    if !seen || *called {
        return Ok(None);
    }
    *called = true;
    let out = filter.data(Bytes::new(), true)?;
    Ok((!out.is_empty()).then_some(out))
}

fn abort(done: &mut bool) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    *done = true;
    Poll::Ready(Some(Err(BodyError::Aborted)))
}

/// `grpc-status` and a percent-encoded `grpc-message`, as trailers or trailers-only headers.
pub fn grpc_status_trailers(code: u32, message: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::try_from(percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    h
}

/// gRPC's grpc-message encoding: printable ASCII except `%` as is, everything else `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upper-cases data, appends `|end` at the end, marks trailers; counts calls.
    #[derive(Default)]
    struct Upper {
        calls: usize,
        ends: usize,
    }

    impl Filter for Upper {
        const MAX_CHUNK: usize = 8;

        fn data(&mut self, piece: Bytes, end: bool) -> Result<Bytes, Cut> {
            assert!(piece.len() <= Self::MAX_CHUNK);
            self.calls += 1;
            let mut out = piece.to_ascii_uppercase();
            if end {
                self.ends += 1;
                out.extend_from_slice(b"|end");
            }
            Ok(Bytes::from(out))
        }

        fn trailers(&mut self, trailers: &mut HeaderMap) -> Result<(), Cut> {
            trailers.insert("x-seen", HeaderValue::from_static("1"));
            Ok(())
        }
    }

    type Frames = http_body_util::StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BodyError>>>,
    >;

    fn frames(data: &[&str], trailers: bool) -> Frames {
        let mut v: Vec<Result<Frame<Bytes>, BodyError>> = data
            .iter()
            .map(|d| Ok(Frame::data(Bytes::copy_from_slice(d.as_bytes()))))
            .collect();
        if trailers {
            v.push(Ok(Frame::trailers(HeaderMap::new())));
        }
        http_body_util::StreamBody::new(futures_util::stream::iter(v))
    }

    async fn run(body: Frames) -> (String, Option<HeaderMap>, usize, usize) {
        use http_body_util::BodyExt;
        let mut hooked = Hooked::new(body, Some(Upper::default()));
        let mut out = Vec::new();
        let mut trailers = None;
        while let Some(frame) = hooked.frame().await {
            let frame = frame.expect("no error");
            match frame.into_data() {
                Ok(d) => out.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert!(hooked.is_end_stream());
        let f = hooked.filter().expect("filter");
        (
            String::from_utf8(out).expect("utf-8"),
            trailers,
            f.calls,
            f.ends,
        )
    }

    /// Tiny frames that are all there are joined: 12 one-byte frames make two calls of at most
    /// 8 bytes (the second one ends the body), nothing lost, trailers after, through the filter.
    #[tokio::test]
    async fn hooked_joins_ready_frames_and_ends_once() {
        let tiny: Vec<&str> = "abcdefghijkl".split_inclusive(|_| true).collect();
        let (out, trailers, calls, ends) = run(frames(&tiny, true)).await;
        assert_eq!(out, "ABCDEFGHIJKL|end");
        assert_eq!((calls, ends), (2, 1), "a full piece, then the last one");
        assert_eq!(
            trailers.and_then(|t| t.get("x-seen").cloned()),
            Some(HeaderValue::from_static("1"))
        );
    }

    /// A small piece followed by a pause waits [`JOIN_WAIT`] for more, then goes through on
    /// its own: a stream is never held longer (controllable clock).
    #[tokio::test(start_paused = true)]
    async fn hooked_holds_a_small_piece_only_briefly() {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(8);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let body = http_body_util::StreamBody::new(Box::pin(stream));
        let mut hooked = Hooked::new(body, Some(Upper::default()));
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .expect("send");
        let started = Instant::now();
        let frame = hooked.frame().await.expect("a frame").expect("no error");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"AB")));
        let waited = started.elapsed();
        assert!(waited >= JOIN_WAIT && waited < JOIN_WAIT * 3, "{waited:?}");
        assert_eq!(hooked.filter().map(|f| f.calls), Some(1));
        // Still open: the piece went through without an end.
        assert_eq!(hooked.filter().map(|f| f.ends), Some(0));
        drop(tx);
    }

    /// A big frame is cut into pieces; a body without data gets no call at all.
    #[tokio::test]
    async fn hooked_splits_big_frames_and_leaves_empty_bodies_alone() {
        let (out, _, calls, ends) = run(frames(&["0123456789abcdefXY"], false)).await;
        assert_eq!(out, "0123456789ABCDEFXY|end");
        assert!(calls >= 3 && ends == 1, "{calls} calls");
        let (out, trailers, calls, _) = run(frames(&[], false)).await;
        assert_eq!((out.as_str(), trailers.is_none(), calls), ("", true, 0));
    }

    /// One 128 KiB frame at 32 KiB/s after 16 KiB goes out in pieces no larger than the
    /// budget, the last one about 3.5 s in (a controllable clock: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn throttle_paces_even_a_single_frame() {
        let mut t = Throttle {
            rate: 32 << 10,
            after: 16 << 10,
            sent: 0,
            began: None,
            pending: Some(Bytes::from(vec![7u8; 128 << 10])),
            wait: None,
        };
        let t0 = Instant::now();
        let mut now = t0;
        let mut out = 0u64;
        while t.pending.is_some() {
            match t.release(now) {
                Some(piece) => {
                    out += piece.len() as u64;
                    let allowed = (16 << 10) as f64 + (now - t0).as_secs_f64() * (32 << 10) as f64;
                    assert!(out as f64 <= allowed + 1.0, "{out} bytes by {:?}", now - t0);
                }
                None => now = t.wait.take().expect("a wait is armed").deadline(),
            }
        }
        assert_eq!(out, 128 << 10);
        let took = (now - t0).as_secs_f64();
        assert!((3.4..=3.6).contains(&took), "{took}");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let h = grpc_status_trailers(14, "no way: 100% café");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no way: 100%25 caf%C3%A9");
    }
}
