//! The stage abstraction: every concern is one [`Stage`] with up to three phases, and a
//! pipeline is stages composed in order with [`Then`] (built by [`stages!`]).
//!
//! * **request**: look at the request and its context, then [`Flow::Continue`], or answer at
//!   once with [`Flow::Answer`] (429, 402, 409, a cached response...). Later stages then never
//!   run, so they never see a half-built context.
//! * **response**: look at or change the response on its way back. It runs for every stage of
//!   the pipeline, the last first, whether or not the request reached that stage: a stage whose
//!   request phase did not run (or answered) finds none of its own state in the context.
//! * **complete**: after the response body has ended or the client has left. Only pipelines
//!   with a stage that sets [`Stage::COMPLETES`] pay for it (the body is then wrapped).
//!
//! A stage is generic over the store driver `D` (the gateway uses [`fleetgate_store::Store`];
//! a library user may use a `RedisStore` or a `MemoryStore` directly).
//!
//! **Without waiting.** A phase that needs no store round trip (a header edit, a limit on the
//! in-process store, a lease-mode limit spending units it holds) can also be run as a plain
//! call: [`Stage::request_now`] and [`Stage::response_now`] do the phase and say so, or say
//! that it must wait and do nothing. A pipeline runs its stages that way for as long as they
//! allow ([`Stage::request_sync`], [`Stage::response_sync`]) and builds a future only for the
//! rest ([`Stage::request_from`], [`Stage::response_from`]): most requests on the in-process
//! store, or in lease mode, then never build, box and copy the pipeline's future (measured:
//! docs/architecture.md, "Where the time goes"). Either way the phases run in the same order
//! and each stage runs once.

use crate::context::{Completion, RequestCtx};
use crate::store_ctx::StageStore;
use bytes::Bytes;
use fleetgate_store::Store;
use http::request::Parts;
use http::Response;
use std::future::Future;

/// What the request phase decided.
pub enum Flow {
    /// Go on to the next stage (and, after the last, to the service or upstream).
    Continue,
    /// Answer the client with this now.
    Answer(Response<Bytes>),
}

/// One concern of the request path. See the module documentation for the phases.
pub trait Stage<D: StageStore = Store>: Send + Sync + 'static {
    /// Whether [`Stage::complete`] does anything (the pipeline wraps the body only if so).
    const COMPLETES: bool = false;

    /// How many stages this is: 1, or for a pipeline the number of stages it composes (which
    /// [`request_from`](Stage::request_from) and [`response_from`](Stage::response_from)
    /// count in).
    const STAGES: usize = 1;

    /// The way in.
    fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> impl Future<Output = Flow> + Send;

    /// The way in as a plain call, when this stage can decide without waiting: `Some(flow)` is
    /// what [`request`](Stage::request) would have returned, and the phase is done; `None`
    /// means it must wait, and nothing was done (the caller runs `request`). The default
    /// always waits.
    fn request_now(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Option<Flow> {
        let _ = (cx, req);
        None
    }

    /// The way out: change the response head (or its body's type-independent parts).
    fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) -> impl Future<Output = ()> + Send {
        let _ = (cx, resp);
        async {}
    }

    /// The way out as a plain call, when this stage can do it without waiting: `true` when it
    /// is done; `false` means it must wait, and nothing was done (the caller runs
    /// [`response`](Stage::response)). The default always waits.
    fn response_now<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) -> bool {
        let _ = (cx, resp);
        false
    }

    /// The way in, as far as it goes without waiting: `Ok(flow)` when every stage decided now;
    /// `Err(done)` when the stages before the first `done` continued and the next one must
    /// wait (finish with [`request_from`](Stage::request_from)`(done)`).
    fn request_sync(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Result<Flow, usize> {
        self.request_now(cx, req).ok_or(0)
    }

    /// The way in for the stages after the first `skip` (which already continued).
    fn request_from(
        &self,
        cx: &mut RequestCtx<'_, D>,
        req: &mut Parts,
        skip: usize,
    ) -> impl Future<Output = Flow> + Send {
        async move {
            if skip >= Self::STAGES {
                Flow::Continue
            } else {
                self.request(cx, req).await
            }
        }
    }

    /// The way out, as far as it goes without waiting (the last stage first): `Ok(())` when
    /// every stage is done; `Err(done)` when the last `done` stages are done and the one
    /// before them must wait (finish with [`response_from`](Stage::response_from)`(done)`).
    fn response_sync<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) -> Result<(), usize> {
        if self.response_now(cx, resp) {
            Ok(())
        } else {
            Err(0)
        }
    }

    /// The way out for the stages before the last `skip` (which are done).
    fn response_from<B: Send>(
        &self,
        cx: &mut RequestCtx<'_, D>,
        resp: &mut Response<B>,
        skip: usize,
    ) -> impl Future<Output = ()> + Send {
        async move {
            if skip < Self::STAGES {
                self.response(cx, resp).await;
            }
        }
    }

    /// After the body ended or the client left.
    fn complete(&self, done: &Completion) {
        let _ = done;
    }
}

/// `A`, then `B`: the way in runs `A` first, the way out `B` first.
pub struct Then<A, B>(pub A, pub B);

impl<D: StageStore, A: Stage<D>, B: Stage<D>> Stage<D> for Then<A, B> {
    const COMPLETES: bool = A::COMPLETES || B::COMPLETES;
    const STAGES: usize = A::STAGES + B::STAGES;

    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        match self.0.request(cx, req).await {
            // The rest as plain calls as far as they go: the futures of the stages that decide
            // now are never built (each would be a copy of its whole state, per request).
            Flow::Continue => match self.1.request_sync(cx, req) {
                Ok(flow) => flow,
                Err(done) => self.1.request_from(cx, req, done).await,
            },
            answer => answer,
        }
    }

    async fn response<Bd: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<Bd>) {
        self.1.response(cx, resp).await;
        if let Err(done) = self.0.response_sync(cx, resp) {
            self.0.response_from(cx, resp, done).await;
        }
    }

    fn request_sync(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Result<Flow, usize> {
        match self.0.request_sync(cx, req)? {
            Flow::Continue => self.1.request_sync(cx, req).map_err(|done| A::STAGES + done),
            answer => Ok(answer),
        }
    }

    async fn request_from(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts, skip: usize) -> Flow {
        if skip >= A::STAGES {
            return self.1.request_from(cx, req, skip - A::STAGES).await;
        }
        match self.0.request_from(cx, req, skip).await {
            // The rest as plain calls as far as they go: the futures of the stages that decide
            // now are never built (each would be a copy of its whole state, per request).
            Flow::Continue => match self.1.request_sync(cx, req) {
                Ok(flow) => flow,
                Err(done) => self.1.request_from(cx, req, done).await,
            },
            answer => answer,
        }
    }

    fn response_sync<Bd: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<Bd>) -> Result<(), usize> {
        self.1.response_sync(cx, resp)?;
        self.0.response_sync(cx, resp).map_err(|done| B::STAGES + done)
    }

    async fn response_from<Bd: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<Bd>, skip: usize) {
        if skip >= B::STAGES {
            return self.0.response_from(cx, resp, skip - B::STAGES).await;
        }
        self.1.response_from(cx, resp, skip).await;
        if let Err(done) = self.0.response_sync(cx, resp) {
            self.0.response_from(cx, resp, done).await;
        }
    }

    fn complete(&self, done: &Completion) {
        self.1.complete(done);
        self.0.complete(done);
    }
}

/// A concern a route may leave out: `None` costs one branch per phase.
impl<D: StageStore, S: Stage<D>> Stage<D> for Option<S> {
    const COMPLETES: bool = S::COMPLETES;
    const STAGES: usize = S::STAGES;

    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        match self {
            Some(s) => s.request(cx, req).await,
            None => Flow::Continue,
        }
    }

    async fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        if let Some(s) = self {
            s.response(cx, resp).await;
        }
    }

    fn request_sync(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Result<Flow, usize> {
        match self {
            Some(s) => s.request_sync(cx, req),
            None => Ok(Flow::Continue),
        }
    }

    async fn request_from(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts, skip: usize) -> Flow {
        match self {
            // One stage: its own phase, not wrapped in the default `request_from` (which would
            // move the stage's future once more).
            Some(s) if S::STAGES == 1 => match skip {
                0 => s.request(cx, req).await,
                _ => Flow::Continue,
            },
            Some(s) => s.request_from(cx, req, skip).await,
            None => Flow::Continue,
        }
    }

    fn response_sync<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) -> Result<(), usize> {
        match self {
            Some(s) => s.response_sync(cx, resp),
            None => Ok(()),
        }
    }

    async fn response_from<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>, skip: usize) {
        match self {
            // One stage: its own phase (see `request_from`).
            Some(s) if S::STAGES == 1 && skip == 0 => s.response(cx, resp).await,
            Some(_) if S::STAGES == 1 => {}
            Some(s) => s.response_from(cx, resp, skip).await,
            None => {}
        }
    }

    fn complete(&self, done: &Completion) {
        if let Some(s) = self {
            s.complete(done);
        }
    }
}

/// The empty pipeline.
impl<D: StageStore> Stage<D> for () {
    const STAGES: usize = 0;

    async fn request(&self, _cx: &mut RequestCtx<'_, D>, _req: &mut Parts) -> Flow {
        Flow::Continue
    }

    fn request_now(&self, _cx: &mut RequestCtx<'_, D>, _req: &mut Parts) -> Option<Flow> {
        Some(Flow::Continue)
    }

    fn response_now<B: Send>(&self, _cx: &mut RequestCtx<'_, D>, _resp: &mut Response<B>) -> bool {
        true
    }
}

/// Stages in order, each optional: `stages![A, B, C]` is the type
/// `Then<Option<A>, Then<Option<B>, Then<Option<C>, ()>>>`, and `stages![a, b, c]` in
/// expression position (`a: Option<A>`...) builds it.
#[macro_export]
macro_rules! stages {
    () => { () };
    ($first:ty $(, $rest:ty)* $(,)?) => {
        $crate::stage::Then<Option<$first>, $crate::stages!($($rest),*)>
    };
}

/// Builds the value of a [`stages!`] type: `pipeline![a, b]` is `Then(a, Then(b, ()))`.
#[macro_export]
macro_rules! pipeline {
    () => { () };
    ($first:expr $(, $rest:expr)* $(,)?) => {
        $crate::stage::Then($first, $crate::pipeline!($($rest),*))
    };
}
