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

    /// The way in.
    fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> impl Future<Output = Flow> + Send;

    /// The way out: change the response head (or its body's type-independent parts).
    fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) -> impl Future<Output = ()> + Send {
        let _ = (cx, resp);
        async {}
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

    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        match self.0.request(cx, req).await {
            Flow::Continue => self.1.request(cx, req).await,
            answer => answer,
        }
    }

    async fn response<Bd: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<Bd>) {
        self.1.response(cx, resp).await;
        self.0.response(cx, resp).await;
    }

    fn complete(&self, done: &Completion) {
        self.1.complete(done);
        self.0.complete(done);
    }
}

/// A concern a route may leave out: `None` costs one branch per phase.
impl<D: StageStore, S: Stage<D>> Stage<D> for Option<S> {
    const COMPLETES: bool = S::COMPLETES;

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

    fn complete(&self, done: &Completion) {
        if let Some(s) = self {
            s.complete(done);
        }
    }
}

/// The empty pipeline.
impl<D: StageStore> Stage<D> for () {
    async fn request(&self, _cx: &mut RequestCtx<'_, D>, _req: &mut Parts) -> Flow {
        Flow::Continue
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
