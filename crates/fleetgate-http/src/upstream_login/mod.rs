//! Upstream login, once for the fleet (`upstreams.NAME.login:`): the gateway logs in to the
//! upstream, captures a cookie, header or JSON field of the answer, keeps it in the store
//! (sealed when `encryption_key` is set) and puts it onto every proxied request.
//!
//! * **One login for the fleet.** An instance without a credential reads the store; when
//!   there is none, it takes the login's lease lock (its fencing token becomes the
//!   credential's generation), logs in, stores the credential, announces it on a channel and
//!   releases the lock. Every other request, on any instance, waits for that one: on this
//!   instance behind an in-process single flight, on others by watching the channel with a
//!   bounded poll of the store, so a lost notice only delays them by one poll.
//! * **One re-login per stale credential.** A request answered with a `refresh_on` status
//!   (default 401) asks for a credential newer than the one it carried: the first such
//!   request in the fleet logs in again; every other one (30 at once, on any instance) finds
//!   the newer generation in the store and uses it. The request is sent again once with the
//!   new credential when its body was kept (up to `retry_body_limit`).
//! * **No login loop.** A failed login (timeout, unreachable, redirect, HTML, another
//!   status, no capturable field) is stored as the fleet's failure for a backoff that doubles
//!   per consecutive failure (`backoff` to `max_backoff`): until it passes, requests get 502
//!   at once, on every instance, without calling the login endpoint.
//! * **Store failures** follow `on_store_error` through [`StoreCtx::decide`]: `local` (the
//!   default) logs in for this instance alone and keeps the credential in memory, checking the
//!   store again every second so the fleet's credential is used once the store is back;
//!   `closed` answers 503.
//!
//! The credential is never logged, and neither `Debug` of [`Credential`] nor of
//! [`LoginConfig`] shows it.
//!
//! The HTTP call itself is a [`LoginClient`]: the gateway sends it over its pool of
//! connections to the upstream's targets; a library user passes any client (see
//! [`layer::LoginLayer`] for an outbound tower layer that does all of this around a client).

mod capture;
mod config;
pub mod layer;
mod record;
mod seal;

pub use capture::{capture_name, credential as capture_credential, inject as inject_credential};
pub use config::{Capture, Inject, LoginConfig, DEFAULT_RETRY_BODY_LIMIT, MAX_RETRY_BODY_LIMIT};
pub use seal::{SealKey, Sealer, Unsealable};

use crate::metrics::DecisionMetrics;
use crate::refusal::json_error;
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::{Concern, Keyspace, StoreKey, Subscription};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use metrics::Counter;
use parking_lot::Mutex;
use record::{wall_ms, Record};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const UPSTREAM_LOGINS: &str = "fleetgate_upstream_logins_total";
/// The login's store calls under its failure policy (`fallback_local`, `fallback_closed`).
pub const UPSTREAM_LOGIN_STORE_DECISIONS: &str = "fleetgate_upstream_login_store_decisions_total";

/// Largest login answer read.
pub const MAX_LOGIN_ANSWER_BYTES: usize = 64 * 1024;

/// How often a waiting instance reads the store again when no notice came.
const POLL: Duration = Duration::from_millis(100);
/// How often an instance holding a credential of its own (the store failed) asks the store
/// again.
const RECHECK: Duration = Duration::from_secs(1);
/// How long an instance keeps to itself a failure it read from the store before reading again.
const FAILURE_CACHE: Duration = Duration::from_secs(1);

/// A boxed future, as [`LoginClient`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends the login request (its URI is the path and query; the client chooses the target and
/// sets `Host`) and answers the response with at most [`MAX_LOGIN_ANSWER_BYTES`] of body, or
/// why no answer came. Redirects are not followed.
pub trait LoginClient: Send + Sync {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>>;
}

/// Why a login gave no credential. Messages hold neither the credential nor the answer's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    #[error("the login endpoint did not answer within {0} ms")]
    Timeout(u128),
    #[error("the login endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the login endpoint redirected ({status}) to {location:?} instead of answering; point `login.path` at the API's login, not a login page")]
    Redirected { status: u16, location: String },
    #[error("the login endpoint answered HTML (a login page?) instead of the credential")]
    Html,
    #[error("the login endpoint answered {0}")]
    Status(u16),
    #[error("the login endpoint's answer is not JSON")]
    NotJson,
    #[error("the login endpoint's answer has no {0}")]
    Missing(String),
    #[error("the login endpoint's {0} is empty or not usable in a header")]
    Unusable(String),
}

impl LoginFailure {
    /// The `outcome` label of `fleetgate_upstream_logins_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            LoginFailure::Timeout(_) => "timeout",
            LoginFailure::Unreachable(_) => "unreachable",
            LoginFailure::Redirected { .. } => "redirect",
            LoginFailure::Html => "html",
            LoginFailure::Status(_) => "status",
            LoginFailure::NotJson => "not_json",
            LoginFailure::Missing(_) | LoginFailure::Unusable(_) => "missing_field",
        }
    }
}

/// Why a request has no credential to carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The login made for this request (here or on another instance) failed.
    #[error("{0}")]
    Failed(String),
    /// A recent login failed; the fleet waits before the next try.
    #[error("the last login failed ({reason}); the next try is in at most {} s", retry_after.as_secs().max(1))]
    BackingOff { reason: String, retry_after: Duration },
    /// Another instance's login took longer than the bound on waiting for it.
    #[error("no credential came within {} ms of waiting for another instance's login", .0.as_millis())]
    WaitedTooLong(Duration),
    /// The store failed and `on_store_error` is `closed`.
    #[error("the store is unavailable and the login's on_store_error is closed")]
    StoreDown,
}

impl LoginError {
    /// The answer to the request: 502 with a JSON body (`upstream_login_failed`, Retry-After
    /// while backing off), or 503 (`store_unavailable`) under `closed`.
    pub fn answer(&self, upstream: &str) -> Response<Bytes> {
        let message = format!("upstream {upstream}: login failed: {self}");
        match self {
            LoginError::StoreDown => json_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &message, &[]),
            LoginError::BackingOff { retry_after, .. } => {
                let mut resp = json_error(StatusCode::BAD_GATEWAY, "upstream_login_failed", &message, &[]);
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
                resp
            }
            _ => json_error(StatusCode::BAD_GATEWAY, "upstream_login_failed", &message, &[]),
        }
    }
}

/// A credential to put onto requests. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    value: Arc<str>,
    /// The fleet's generation (the login's fencing token), or this instance's own count for
    /// a credential made while the store failed (`local`).
    pub generation: u64,
    /// Made by this instance alone, while the store failed.
    pub local: bool,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("value", &"<redacted>")
            .field("generation", &self.generation)
            .field("local", &self.local)
            .finish()
    }
}

impl Credential {
    /// The captured value (to inject; never log it).
    pub fn expose(&self) -> &str {
        &self.value
    }
}

/// Login counters of one upstream (`fleetgate_upstream_logins_total{upstream, outcome}`):
/// `ok` (a login for the fleet), `ok_local` (a login for this instance alone, the store having
/// failed), each failure's reason ([`LoginFailure::outcome`]), `backoff` (a request answered
/// 502 because a recent login failed), `waited_too_long`, `store_unavailable`.
struct LoginMetrics {
    ok: Counter,
    ok_local: Counter,
    backoff: Counter,
    waited_too_long: Counter,
    store_unavailable: Counter,
    upstream: String,
}

impl LoginMetrics {
    fn new(upstream: &str) -> Self {
        let c = |outcome: &'static str| metrics::counter!(UPSTREAM_LOGINS, "upstream" => upstream.to_string(), "outcome" => outcome);
        LoginMetrics {
            ok: c("ok"),
            ok_local: c("ok_local"),
            backoff: c("backoff"),
            waited_too_long: c("waited_too_long"),
            store_unavailable: c("store_unavailable"),
            upstream: upstream.to_string(),
        }
    }

    fn failure(&self, f: &LoginFailure) {
        metrics::counter!(UPSTREAM_LOGINS, "upstream" => self.upstream.clone(), "outcome" => f.outcome()).increment(1);
    }

    fn error(&self, e: &LoginError) {
        match e {
            LoginError::BackingOff { .. } => self.backoff.increment(1),
            LoginError::WaitedTooLong(_) => self.waited_too_long.increment(1),
            LoginError::StoreDown => self.store_unavailable.increment(1),
            // Counted where the login failed.
            LoginError::Failed(_) => {}
        }
    }
}

/// The credential this instance uses, and until when.
struct Held {
    cred: Credential,
    expires: Instant,
    /// For a local credential: when to ask the store again.
    recheck: Option<Instant>,
}

#[derive(Default)]
struct LocalState {
    held: Option<Held>,
    /// No login before this (a failure this instance made or read).
    backoff_until: Option<(Instant, String)>,
    /// Consecutive failed logins made by this instance.
    failures: u32,
    local_generation: u64,
}

/// One upstream's login, shared by every worker of an instance.
pub struct UpstreamLogin {
    upstream: String,
    config: LoginConfig,
    record_key: StoreKey,
    lock_key: StoreKey,
    channel: String,
    sealer: Sealer,
    policy: ConcernPolicy,
    metrics: LoginMetrics,
    state: Mutex<LocalState>,
    flight: tokio::sync::Mutex<()>,
    owner_seq: AtomicU64,
}

impl fmt::Debug for UpstreamLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamLogin")
            .field("upstream", &self.upstream)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum Found {
    /// A credential newer than the stale one.
    Fresh(Credential, Duration),
    /// The fleet is backing off after a failure.
    Failed(LoginError),
    /// Nothing usable: none, stale, or not readable.
    Nothing { generation: u64 },
}

impl UpstreamLogin {
    /// The login of upstream `upstream`, with keys under `keyspace`.
    pub fn new(keyspace: &Keyspace, upstream: &str, config: LoginConfig) -> Self {
        let scoped = keyspace.scoped(Concern::UpstreamAuth, upstream);
        UpstreamLogin {
            record_key: scoped.key(b"credential"),
            lock_key: keyspace
                .scoped(Concern::Lock, &format!("login/{upstream}"))
                .key(upstream.as_bytes()),
            channel: keyspace.channel(&format!(
                "login.{}",
                fleetgate_store::identifier_hash(upstream.as_bytes())
            )),
            sealer: Sealer::new(config.encryption_key.as_ref(), upstream),
            policy: ConcernPolicy {
                name: format!("{upstream}/login"),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(UPSTREAM_LOGIN_STORE_DECISIONS, upstream, "login"),
            },
            metrics: LoginMetrics::new(upstream),
            upstream: upstream.to_string(),
            config,
            state: Mutex::new(LocalState::default()),
            flight: tokio::sync::Mutex::new(()),
            owner_seq: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &LoginConfig {
        &self.config
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Puts `cred` onto a request's headers as `inject` says.
    pub fn inject(&self, cred: &Credential, headers: &mut HeaderMap) {
        capture::inject(&self.config.inject, cred.expose(), headers);
    }

    /// How long a lock holder may take: the login's bound, and a margin for the store calls
    /// around it, so that a holder cannot lose the lock while it logs in.
    fn lock_ttl(&self) -> Duration {
        self.config.timeout + Duration::from_secs(5)
    }

    /// How long a request waits for another instance's login.
    fn wait_bound(&self) -> Duration {
        self.lock_ttl() + self.config.timeout
    }

    /// The held credential when it is good to use now without asking the store.
    fn usable_held(&self, now: Instant) -> Option<Credential> {
        let state = self.state.lock();
        let held = state.held.as_ref()?;
        let fresh = held.expires > now && held.recheck.is_none_or(|r| r > now);
        fresh.then(|| held.cred.clone())
    }

    fn backing_off(&self, now: Instant) -> Option<LoginError> {
        let state = self.state.lock();
        match &state.backoff_until {
            Some((until, reason)) if *until > now => Some(LoginError::BackingOff {
                reason: reason.clone(),
                retry_after: *until - now,
            }),
            _ => None,
        }
    }

    /// The credential to send with a request: the one held, else the fleet's (logging in when
    /// there is none, once for the fleet).
    pub async fn credential<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        client: &dyn LoginClient,
    ) -> Result<Credential, LoginError> {
        if let Some(c) = self.usable_held(Instant::now()) {
            return Ok(c);
        }
        let _flight = self.flight.lock().await;
        let now = Instant::now();
        if let Some(c) = self.usable_held(now) {
            return Ok(c);
        }
        let result = match self.backing_off(now) {
            Some(e) => Err(e),
            None => self.obtain(ctx, client, None).await,
        };
        if let Err(e) = &result {
            self.metrics.error(e);
        }
        result
    }

    /// A credential newer than `stale`, which the upstream refused (a `refresh_on` status):
    /// one that another request already got, else a new login, once for the fleet.
    pub async fn refresh<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        client: &dyn LoginClient,
        stale: &Credential,
    ) -> Result<Credential, LoginError> {
        let _flight = self.flight.lock().await;
        let now = Instant::now();
        {
            let state = self.state.lock();
            if let Some(held) = &state.held {
                if held.cred != *stale && held.expires > now {
                    return Ok(held.cred.clone());
                }
            }
        }
        let result = match self.backing_off(now) {
            Some(e) => Err(e),
            None => self.obtain(ctx, client, Some(stale)).await,
        };
        if let Err(e) = &result {
            self.metrics.error(e);
        }
        result
    }

    fn hold(&self, cred: Credential, ttl: Duration) -> Credential {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.held = Some(Held {
            cred: cred.clone(),
            expires: now + ttl,
            recheck: cred.local.then_some(now + RECHECK),
        });
        cred
    }

    /// Reads the record: a credential newer than `stale_generation`, a failure, or nothing.
    fn read(&self, bytes: Option<Bytes>, stale_generation: Option<u64>) -> Found {
        let Some(record) = bytes.as_deref().and_then(Record::decode) else {
            return Found::Nothing { generation: 0 };
        };
        match record {
            Record::Credential {
                generation,
                made_at_ms,
                sealed,
            } => {
                let age = Duration::from_millis(wall_ms().saturating_sub(made_at_ms));
                let left = self.config.ttl.saturating_sub(age);
                if stale_generation.is_some_and(|s| generation <= s) || left.is_zero() {
                    return Found::Nothing { generation };
                }
                match self.sealer.open(&sealed).ok().and_then(|v| String::from_utf8(v).ok()) {
                    Some(value) => Found::Fresh(
                        Credential {
                            value: value.into(),
                            generation,
                            local: false,
                        },
                        left,
                    ),
                    None => {
                        tracing::warn!(upstream = %self.upstream, "the stored login credential does not open with this instance's encryption_key (a key changed, or instances disagree); logging in again");
                        Found::Nothing { generation }
                    }
                }
            }
            Record::Failed { backoff_ms, reason, .. } => {
                let wait = Duration::from_millis(backoff_ms).min(FAILURE_CACHE);
                self.state.lock().backoff_until = Some((Instant::now() + wait, reason.clone()));
                Found::Failed(LoginError::BackingOff {
                    reason,
                    retry_after: Duration::from_millis(backoff_ms),
                })
            }
        }
    }

    async fn get<D: StageStore>(&self, ctx: &StoreCtx<D>) -> Decided<Option<Bytes>> {
        ctx.decide(
            &self.policy,
            Op::Marker,
            ctx.store.get(&self.record_key),
            |_| {},
            |_, _| Some(None),
        )
        .await
    }

    /// The fleet's credential, or a login for it; under the store's failure, this instance's.
    async fn obtain<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        client: &dyn LoginClient,
        stale: Option<&Credential>,
    ) -> Result<Credential, LoginError> {
        // A credential of this instance's own is older than any the fleet has.
        let stale_generation = stale.filter(|c| !c.local).map(|c| c.generation);
        let reuse_local = stale.is_none();
        let deadline = Instant::now() + self.wait_bound();
        let owner = format!("{}:{}", ctx.instance, self.owner_seq.fetch_add(1, Ordering::Relaxed));
        let mut subscription: Option<Subscription> = None;
        let mut subscribed = false;
        loop {
            match self.get(ctx).await {
                Decided::Store(bytes) => match self.read(bytes, stale_generation) {
                    Found::Fresh(cred, left) => return Ok(self.hold(cred, left)),
                    Found::Failed(e) => return Err(e),
                    Found::Nothing { .. } => {}
                },
                Decided::Local(_) | Decided::Open => return self.login_locally(client, reuse_local).await,
                Decided::Closed => return Err(LoginError::StoreDown),
            }
            let grant = ctx
                .decide(
                    &self.policy,
                    Op::Marker,
                    ctx.store.lock(&self.lock_key, &owner, self.lock_ttl()),
                    |_| {},
                    |_, _| Some(None),
                )
                .await;
            match grant {
                Decided::Store(Some(grant)) => {
                    return self
                        .login_for_fleet(ctx, client, &owner, grant.fence, stale_generation, reuse_local)
                        .await
                }
                Decided::Store(None) => {}
                Decided::Local(_) | Decided::Open => return self.login_locally(client, reuse_local).await,
                Decided::Closed => return Err(LoginError::StoreDown),
            }
            // Another instance logs in: wait for its notice, or poll.
            if Instant::now() >= deadline {
                return Err(LoginError::WaitedTooLong(self.wait_bound()));
            }
            if !subscribed {
                subscribed = true;
                // Subscribed before the next read, so that a notice sent after it is not lost.
                subscription = ctx.store.subscribe(&self.channel).await.ok();
                continue;
            }
            match subscription.as_mut() {
                Some(sub) => {
                    let _ = tokio::time::timeout(POLL, sub.next()).await;
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Holding the fleet's lock (fencing token `fence`): log in, store the outcome, announce
    /// it, release the lock.
    async fn login_for_fleet<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        client: &dyn LoginClient,
        owner: &str,
        fence: u64,
        stale_generation: Option<u64>,
        reuse_local: bool,
    ) -> Result<Credential, LoginError> {
        // The previous holder may have stored its outcome between our read and our lock.
        let previous = match self.get(ctx).await {
            Decided::Store(bytes) => match self.read(bytes, stale_generation) {
                Found::Fresh(cred, left) => {
                    self.unlock(ctx, owner).await;
                    return Ok(self.hold(cred, left));
                }
                Found::Failed(e) => {
                    self.unlock(ctx, owner).await;
                    return Err(e);
                }
                Found::Nothing { generation } => generation,
            },
            Decided::Closed => return Err(LoginError::StoreDown),
            Decided::Local(_) | Decided::Open => return self.login_locally(client, reuse_local).await,
        };
        // Generations only grow, even should the fencing counter ever restart.
        let generation = fence.max(previous + 1);
        let outcome = self.perform_login(client).await;
        let (record, ttl) = match &outcome {
            Ok(value) => (
                Record::Credential {
                    generation,
                    made_at_ms: wall_ms(),
                    sealed: self.sealer.seal(value.as_bytes()),
                },
                self.config.ttl,
            ),
            Err(failure) => {
                let backoff = self.note_failure(failure);
                (
                    Record::Failed {
                        attempt: self.state.lock().failures,
                        backoff_ms: backoff.as_millis() as u64,
                        reason: failure.to_string(),
                    },
                    backoff,
                )
            }
        };
        let stored = ctx
            .decide(
                &self.policy,
                Op::Marker,
                ctx.store.set(&self.record_key, record.encode(), ttl),
                |_| {},
                |_, _| Some(()),
            )
            .await;
        let _ = ctx.store.publish(&self.channel, Bytes::from_static(b"login")).await;
        self.unlock(ctx, owner).await;
        match outcome {
            Ok(value) => {
                self.metrics.ok.increment(1);
                let mut state = self.state.lock();
                state.failures = 0;
                state.backoff_until = None;
                drop(state);
                let local = !matches!(stored, Decided::Store(()));
                if local {
                    tracing::warn!(upstream = %self.upstream, "upstream login succeeded but could not be stored; this instance uses it alone");
                } else {
                    tracing::info!(upstream = %self.upstream, generation, "upstream login succeeded; the fleet shares the credential");
                }
                let generation = if local {
                    self.next_local_generation()
                } else {
                    generation
                };
                Ok(self.hold(
                    Credential {
                        value: value.into(),
                        generation,
                        local,
                    },
                    self.config.ttl,
                ))
            }
            Err(failure) => Err(LoginError::Failed(failure.to_string())),
        }
    }

    async fn unlock<D: StageStore>(&self, ctx: &StoreCtx<D>, owner: &str) {
        if let Err(e) = ctx.store.unlock(&self.lock_key, owner).await {
            tracing::debug!(upstream = %self.upstream, error = %e, "login lock release failed; it expires by itself");
        }
    }

    fn next_local_generation(&self) -> u64 {
        let mut state = self.state.lock();
        state.local_generation += 1;
        state.local_generation
    }

    /// The store failed (`local`): this instance's own credential, reused while it is good
    /// unless the upstream refused it, else a login for this instance alone.
    async fn login_locally(&self, client: &dyn LoginClient, reuse: bool) -> Result<Credential, LoginError> {
        self.policy.metrics.fallback_local.increment(1);
        let now = Instant::now();
        if reuse {
            let mut state = self.state.lock();
            if let Some(held) = state.held.as_mut() {
                if held.cred.local && held.expires > now {
                    held.recheck = Some(now + RECHECK);
                    return Ok(held.cred.clone());
                }
            }
        }
        match self.perform_login(client).await {
            Ok(value) => {
                self.metrics.ok_local.increment(1);
                tracing::warn!(upstream = %self.upstream, "the store is unavailable; logged in to the upstream for this instance alone");
                {
                    let mut state = self.state.lock();
                    state.failures = 0;
                    state.backoff_until = None;
                }
                let generation = self.next_local_generation();
                Ok(self.hold(
                    Credential {
                        value: value.into(),
                        generation,
                        local: true,
                    },
                    self.config.ttl,
                ))
            }
            Err(failure) => {
                self.note_failure(&failure);
                Err(LoginError::Failed(failure.to_string()))
            }
        }
    }

    /// Counts and logs a failed login, and starts this instance's backoff; returns it.
    fn note_failure(&self, failure: &LoginFailure) -> Duration {
        self.metrics.failure(failure);
        let mut state = self.state.lock();
        state.failures = state.failures.saturating_add(1);
        let doublings = state.failures.saturating_sub(1).min(20);
        let backoff = self
            .config
            .backoff
            .saturating_mul(1u32 << doublings)
            .min(self.config.max_backoff);
        state.backoff_until = Some((Instant::now() + backoff, failure.to_string()));
        let failures = state.failures;
        drop(state);
        tracing::warn!(upstream = %self.upstream, reason = %failure, outcome = failure.outcome(), consecutive_failures = failures, backoff_ms = backoff.as_millis() as u64, "upstream login failed; requests get 502 until the backoff ends");
        backoff
    }

    /// The login request and the credential in its answer.
    async fn perform_login(&self, client: &dyn LoginClient) -> Result<String, LoginFailure> {
        let mut req = Request::new(Bytes::from(self.config.body.clone()));
        *req.method_mut() = self.config.method.clone();
        *req.uri_mut() = self
            .config
            .path
            .parse()
            .map_err(|_| LoginFailure::Unreachable("the login path is not a valid URI".into()))?;
        for (name, value) in &self.config.headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        if !self.config.body.is_empty() || self.config.method != http::Method::GET {
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(self.config.body.len()));
        }
        let answer = match tokio::time::timeout(self.config.timeout, client.send(req)).await {
            Err(_) => return Err(LoginFailure::Timeout(self.config.timeout.as_millis())),
            Ok(Err(e)) => return Err(LoginFailure::Unreachable(e)),
            Ok(Ok(answer)) => answer,
        };
        capture::credential(&self.config.capture, &answer)
    }
}

#[cfg(test)]
mod tests;
