//! Fleet-wide circuit breakers (`upstreams.NAME.breaker`): a trip on one instance holds on all.
//!
//! * **Identity**: one breaker per target by default, or per `key` (for example
//!   `[header:x-account, header:x-model]`, with or without `target`). A request lacking a
//!   header or cookie of the key has that part empty (all such requests share a breaker); each
//!   is counted in `fleetgate_breaker_missing_key_total{upstream,part}`.
//! * **Opening**: each instance counts consecutive failures (5xx, 429, timeouts, refused
//!   connections) of a breaker; at `failures` it trips: open for `cooldown`, or the upstream's
//!   Retry-After when longer (seconds or an HTTP date; capped at `max_cooldown`).
//! * **Sharing**: a trip is written to the store (`{prefix}:breaker:open:{hash}`, expiring
//!   with the cooldown) and announced on the channel `{prefix}:chan:breaker.UPSTREAM`; every
//!   instance's listener ([`Breakers::run_listener`]) applies the notice at once. The store is
//!   read for a breaker the first time an instance meets it, and again for every known breaker
//!   when the listener starts and whenever the store comes back, so a missed notice cannot
//!   leave an instance ignorant.
//! * **Half-open**: once the cooldown has passed, one request in the whole fleet probes (it
//!   claims `{prefix}:breaker:probe:{hash}`); the others are answered as while open. The
//!   probe's outcome closes the breaker for all (store key deleted, notice sent) or opens it
//!   again.
//! * **Store failures** follow `on_store_error` through [`StoreCtx::decide`]; `local` (the
//!   default) breaks for this instance alone until the store answers again.
//!
//! Metrics: `fleetgate_breaker_trips_total{upstream}`, `fleetgate_breaker_rejected_total{upstream}`
//! (requests not sent because their breaker was open), `fleetgate_breaker_probes_total{upstream}`,
//! `fleetgate_breaker_retry_after_total{upstream,kind=capped|unreadable}`.

mod config;
pub mod retry_after;

pub use config::{BreakerConfig, BreakerKeyPart, DEFAULT_MAX_COOLDOWN};

use crate::metrics::DecisionMetrics;
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::{identifier_hash, ClaimOutcome, Concern, Keyspace, ScopedKeys, StoreDriver, StoreHealth};
use futures_util::FutureExt;
use metrics::{counter, Counter};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BREAKER_TRIPS: &str = "fleetgate_breaker_trips_total";
pub const BREAKER_REJECTED: &str = "fleetgate_breaker_rejected_total";
pub const BREAKER_PROBES: &str = "fleetgate_breaker_probes_total";
pub const BREAKER_MISSING_KEY: &str = "fleetgate_breaker_missing_key_total";
pub const BREAKER_RETRY_AFTER: &str = "fleetgate_breaker_retry_after_total";
pub const BREAKER_DECISIONS: &str = "fleetgate_breaker_decisions_total";

/// Where the listener looks at the store's health, to re-read the breakers when it is back.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// One breaker's identity: the hash of its key's values (also its store key's identifier).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BreakerId {
    hash: Arc<str>,
    /// What `/breakers` shows: the target (when the key names it) and the hash.
    label: Arc<str>,
}

impl BreakerId {
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Whether a request may go to the upstream.
#[derive(Debug)]
pub enum Admission {
    /// Closed: go.
    Go,
    /// Half-open, and this request is the fleet's one probe: go, and report its outcome.
    Probe,
    /// Open (or another instance is probing): do not call the upstream; retry after this.
    Open { retry_after: Duration },
}

/// How a call ended, for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A failure; `retry_after` is the upstream's Retry-After, already capped.
    Failure {
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// The outcome of a response with `status` and `headers` (5xx and 429 fail).
    pub fn of_response(status: u16, headers: &http::HeaderMap, breakers: &Breakers) -> Outcome {
        if status >= 500 || status == 429 {
            let ra = retry_after::parse(headers, breakers.max_cooldown, SystemTime::now());
            match ra {
                retry_after::RetryAfter::Capped(_) => breakers.metrics.retry_after_capped.increment(1),
                retry_after::RetryAfter::Unreadable => {
                    breakers.metrics.retry_after_unreadable.increment(1);
                    tracing::debug!(upstream = %breakers.upstream, "the upstream's Retry-After is neither seconds nor an HTTP date; using the cooldown");
                }
                _ => {}
            }
            Outcome::Failure { retry_after: ra.wait() }
        } else {
            Outcome::Success
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    label: Arc<str>,
    failures: u32,
    /// Open until then (this instance's clock); past it, half-open.
    open_until: Option<Instant>,
    /// Whether the store was read for it (or a notice arrived) since it was met.
    synced: bool,
}

#[derive(Clone)]
struct BreakerMetrics {
    trips: Counter,
    rejected: Counter,
    probes: Counter,
    retry_after_capped: Counter,
    retry_after_unreadable: Counter,
}

/// A notice on the upstream's channel.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    id: String,
    label: String,
    /// Open for this long from now; `None`: closed.
    open_ms: Option<u64>,
}

/// The breakers of one upstream.
pub struct Breakers {
    upstream: String,
    failures: u32,
    cooldown: Duration,
    max_cooldown: Duration,
    key: Vec<BreakerKeyPart>,
    open_keys: ScopedKeys,
    probe_keys: ScopedKeys,
    channel: String,
    /// How long a probe's claim lasts (a probe that never reports frees it then).
    probe_ttl: Duration,
    states: Mutex<HashMap<Arc<str>, Entry>>,
    policy: ConcernPolicy,
    metrics: BreakerMetrics,
    missing: Mutex<HashMap<String, Counter>>,
    last_missing_log_ms: AtomicU64,
}

impl Breakers {
    /// The breakers `config` of upstream `upstream`, keys under `keyspace`; a probe's claim
    /// lasts `probe_ttl` (the upstream's request timeout and a little more).
    pub fn new(keyspace: &Keyspace, upstream: &str, config: &BreakerConfig, probe_ttl: Duration) -> Self {
        let c = |name: &'static str| counter!(name, "upstream" => upstream.to_string());
        Breakers {
            upstream: upstream.to_string(),
            failures: config.failures.max(1),
            cooldown: config.cooldown,
            max_cooldown: config.max_cooldown.max(config.cooldown),
            key: config.key.clone(),
            open_keys: keyspace.scoped(Concern::Breaker, "open"),
            probe_keys: keyspace.scoped(Concern::Breaker, "probe"),
            channel: keyspace.channel(&format!("breaker.{}", identifier_hash(upstream.as_bytes()))),
            probe_ttl,
            states: Mutex::new(HashMap::new()),
            policy: ConcernPolicy {
                name: format!("breaker of upstream {upstream}"),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(BREAKER_DECISIONS, upstream, "breaker"),
            },
            metrics: BreakerMetrics {
                trips: c(BREAKER_TRIPS),
                rejected: c(BREAKER_REJECTED),
                probes: c(BREAKER_PROBES),
                retry_after_capped: counter!(BREAKER_RETRY_AFTER, "upstream" => upstream.to_string(), "kind" => "capped"),
                retry_after_unreadable: counter!(BREAKER_RETRY_AFTER, "upstream" => upstream.to_string(), "kind" => "unreadable"),
            },
            missing: Mutex::new(HashMap::new()),
            last_missing_log_ms: AtomicU64::new(0),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Whether the key names the target (then an open breaker sends requests to another one).
    pub fn per_target(&self) -> bool {
        self.key.contains(&BreakerKeyPart::Target)
    }

    /// The breaker of a request with `headers` going to `target` (its URL).
    pub fn identify(&self, headers: &http::HeaderMap, target: &str) -> BreakerId {
        let mut id = Vec::with_capacity(64);
        let mut label = String::new();
        for part in &self.key {
            id.push(0);
            match part {
                BreakerKeyPart::Target => {
                    id.extend_from_slice(b"t=");
                    id.extend_from_slice(target.as_bytes());
                    label.push_str(target);
                    label.push(' ');
                }
                BreakerKeyPart::Header(name) => {
                    id.extend_from_slice(b"h=");
                    match headers.get(name.as_str()) {
                        Some(v) => id.extend_from_slice(v.as_bytes()),
                        None => self.missing_part(part),
                    }
                }
                BreakerKeyPart::Cookie(name) => {
                    id.extend_from_slice(b"c=");
                    match cookie(headers, name) {
                        Some(v) => id.extend_from_slice(v),
                        None => self.missing_part(part),
                    }
                }
            }
        }
        let hash = identifier_hash(&id);
        label.push_str(&hash[..12]);
        BreakerId {
            hash: hash.into(),
            label: label.into(),
        }
    }

    fn missing_part(&self, part: &BreakerKeyPart) {
        let text = part.to_string();
        self.missing
            .lock()
            .entry(text.clone())
            .or_insert_with(
                || counter!(BREAKER_MISSING_KEY, "upstream" => self.upstream.clone(), "part" => text.clone()),
            )
            .increment(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let last = self.last_missing_log_ms.load(Ordering::Relaxed);
        if now >= last + 1000
            && self
                .last_missing_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(upstream = %self.upstream, part = %text, "a request lacks a part of the breaker's key; that part counts as empty (such requests share one breaker)");
        }
    }

    /// Whether a request to breaker `id` may go. Reads the store the first time this instance
    /// meets `id`; claims the fleet's one probe once the cooldown has passed.
    pub async fn admit<D: StageStore>(&self, ctx: &StoreCtx<D>, id: &BreakerId) -> Admission {
        let synced = self.states.lock().get(&id.hash).is_some_and(|e| e.synced);
        if !synced && !self.sync(ctx, id).await {
            self.metrics.rejected.increment(1);
            return Admission::Open {
                retry_after: Duration::from_secs(1),
            };
        }
        let now = Instant::now();
        let open_until = {
            let mut states = self.states.lock();
            let e = states.entry(id.hash.clone()).or_default();
            e.label = id.label.clone();
            e.open_until
        };
        let Some(until) = open_until else {
            return Admission::Go;
        };
        if until > now {
            self.metrics.rejected.increment(1);
            return Admission::Open {
                retry_after: until - now,
            };
        }
        // Half-open: one probe for the fleet.
        let key = self.probe_keys.key(id.hash.as_bytes());
        let owner = Bytes::from(ctx.instance.to_string());
        let decided = ctx
            .decide(
                &self.policy,
                Op::Marker,
                ctx.store.claim(&key, owner.clone(), self.probe_ttl),
                |_| {},
                |local, _| local.claim(&key, owner.clone(), self.probe_ttl).now_or_never()?.ok(),
            )
            .await;
        match decided {
            Decided::Store(ClaimOutcome::Won) | Decided::Local(ClaimOutcome::Won) | Decided::Open => {
                self.metrics.probes.increment(1);
                Admission::Probe
            }
            Decided::Store(ClaimOutcome::Held(_)) | Decided::Local(ClaimOutcome::Held(_)) | Decided::Closed => {
                self.metrics.rejected.increment(1);
                Admission::Open {
                    retry_after: Duration::from_secs(1),
                }
            }
        }
    }

    /// Records how a call to breaker `id` ended (`probe`: it was the fleet's probe).
    pub async fn record<D: StageStore>(&self, ctx: &StoreCtx<D>, id: &BreakerId, probe: bool, outcome: Outcome) {
        match outcome {
            Outcome::Success => {
                let was_open = {
                    let mut states = self.states.lock();
                    let e = states.entry(id.hash.clone()).or_default();
                    e.failures = 0;
                    e.open_until.take().is_some()
                };
                if probe || was_open {
                    tracing::info!(upstream = %self.upstream, breaker = %id.label, "breaker closed: the probe succeeded");
                    self.share_close(ctx, id).await;
                }
            }
            Outcome::Failure { retry_after } => {
                let trips = {
                    let mut states = self.states.lock();
                    let e = states.entry(id.hash.clone()).or_default();
                    e.label = id.label.clone();
                    e.failures += 1;
                    probe || e.failures >= self.failures
                };
                if trips {
                    let cooldown = retry_after
                        .map_or(self.cooldown, |r| r.max(self.cooldown))
                        .min(self.max_cooldown);
                    self.trip(ctx, id, cooldown, probe).await;
                }
            }
        }
    }

    async fn trip<D: StageStore>(&self, ctx: &StoreCtx<D>, id: &BreakerId, cooldown: Duration, probe: bool) {
        {
            let mut states = self.states.lock();
            let e = states.entry(id.hash.clone()).or_default();
            e.failures = 0;
            e.open_until = Some(Instant::now() + cooldown);
        }
        self.metrics.trips.increment(1);
        tracing::warn!(upstream = %self.upstream, breaker = %id.label, cooldown_ms = cooldown.as_millis() as u64, "breaker opened");
        let until_ms = unix_ms() + cooldown.as_millis() as u64;
        let key = self.open_keys.key(id.hash.as_bytes());
        let notice = Notice {
            id: id.hash.to_string(),
            label: id.label.to_string(),
            open_ms: Some(cooldown.as_millis() as u64),
        };
        let payload = Bytes::from(serde_json::to_vec(&notice).unwrap_or_default());
        let value = Bytes::from(until_ms.to_string());
        let probe_key = self.probe_keys.key(id.hash.as_bytes());
        let _ = ctx
            .decide(
                &self.policy,
                Op::Marker,
                async {
                    ctx.store.set(&key, value.clone(), cooldown).await?;
                    ctx.store.publish(&self.channel, payload.clone()).await?;
                    if probe {
                        ctx.store.delete(&probe_key).await?;
                    }
                    Ok(())
                },
                |_| {},
                |local, _| {
                    if probe {
                        let _ = local.delete(&probe_key).now_or_never();
                    }
                    Some(())
                },
            )
            .await;
    }

    async fn share_close<D: StageStore>(&self, ctx: &StoreCtx<D>, id: &BreakerId) {
        let key = self.open_keys.key(id.hash.as_bytes());
        let probe_key = self.probe_keys.key(id.hash.as_bytes());
        let notice = Notice {
            id: id.hash.to_string(),
            label: id.label.to_string(),
            open_ms: None,
        };
        let payload = Bytes::from(serde_json::to_vec(&notice).unwrap_or_default());
        let _ = ctx
            .decide(
                &self.policy,
                Op::Marker,
                async {
                    ctx.store.delete(&key).await?;
                    ctx.store.delete(&probe_key).await?;
                    ctx.store.publish(&self.channel, payload.clone()).await?;
                    Ok(())
                },
                |_| {},
                |local, _| {
                    let _ = local.delete(&probe_key).now_or_never();
                    Some(())
                },
            )
            .await;
    }

    /// Reads breaker `id`'s state from the store. A failed read leaves it unsynced (read again
    /// on the next request); `false` when the policy is `closed` and the store failed.
    async fn sync<D: StageStore>(&self, ctx: &StoreCtx<D>, id: &BreakerId) -> bool {
        let key = self.open_keys.key(id.hash.as_bytes());
        match ctx
            .decide(&self.policy, Op::Marker, ctx.store.get(&key), |_| {}, |_, _| None)
            .await
        {
            Decided::Store(read) => {
                self.apply_read(&id.hash, Some(&id.label), Some(read));
                true
            }
            Decided::Closed => false,
            Decided::Local(_) | Decided::Open => true,
        }
    }

    fn apply_read(&self, hash: &Arc<str>, label: Option<&Arc<str>>, read: Option<Option<Bytes>>) {
        let Some(value) = read else {
            return;
        };
        let until = value
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
            .map(|ms| ms.saturating_sub(unix_ms()))
            .filter(|ms| *ms > 0)
            .map(|ms| Instant::now() + Duration::from_millis(ms.min(self.max_cooldown.as_millis() as u64)));
        let mut states = self.states.lock();
        let e = states.entry(hash.clone()).or_default();
        if let Some(l) = label {
            e.label = l.clone();
        }
        e.synced = true;
        match until {
            Some(u) => e.open_until = Some(u),
            // Not in the store: closed for the fleet, unless this instance broke for itself
            // (local policy) and its cooldown still runs.
            None if e.open_until.is_some_and(|u| u <= Instant::now()) => e.open_until = None,
            None => {}
        }
    }

    /// Re-reads every breaker this instance knows.
    async fn refresh<D: StageStore>(&self, store: &D) {
        let known: Vec<(Arc<str>, Arc<str>)> = self
            .states
            .lock()
            .iter()
            .map(|(h, e)| (h.clone(), e.label.clone()))
            .collect();
        for (hash, label) in known {
            let read = store.get(&self.open_keys.key(hash.as_bytes())).await;
            if read.is_err() {
                // Try again on the next request.
                if let Some(e) = self.states.lock().get_mut(&hash) {
                    e.synced = false;
                }
                continue;
            }
            self.apply_read(&hash, Some(&label), read.ok());
        }
    }

    fn apply_notice(&self, notice: Notice) {
        let mut states = self.states.lock();
        let e = states.entry(notice.id.as_str().into()).or_default();
        e.label = notice.label.as_str().into();
        e.synced = true;
        match notice.open_ms {
            Some(ms) => {
                e.failures = 0;
                e.open_until =
                    Some(Instant::now() + Duration::from_millis(ms.min(self.max_cooldown.as_millis() as u64)));
            }
            None => {
                e.failures = 0;
                e.open_until = None;
            }
        }
    }

    /// Listens for trips and closes announced by other instances, and re-reads every known
    /// breaker at start and whenever the store answers again. Runs until aborted.
    pub async fn run_listener<D: StageStore>(self: Arc<Self>, store: D) {
        if store.in_process() {
            return;
        }
        let mut was = StoreHealth::Down;
        loop {
            let mut sub = match store.subscribe(&self.channel).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(upstream = %self.upstream, error = %e, "breaker channel: subscribe failed; retrying");
                    tokio::time::sleep(HEALTH_EVERY).await;
                    continue;
                }
            };
            let mut tick = tokio::time::interval(HEALTH_EVERY);
            loop {
                tokio::select! {
                    msg = sub.next() => {
                        let Some(msg) = msg else { break };
                        match serde_json::from_slice::<Notice>(&msg.payload) {
                            Ok(n) => self.apply_notice(n),
                            Err(e) => tracing::debug!(error = %e, "breaker channel: unreadable notice"),
                        }
                    }
                    _ = tick.tick() => {
                        let now = store.health().await;
                        if now == StoreHealth::Ok && was != StoreHealth::Ok {
                            self.refresh(&store).await;
                        }
                        was = now;
                    }
                }
            }
            was = StoreHealth::Down;
        }
    }

    /// The breakers open now, as this instance knows them: label and remaining cooldown.
    pub fn open(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut out: Vec<(String, Duration)> = self
            .states
            .lock()
            .values()
            .filter_map(|e| {
                e.open_until
                    .filter(|u| *u > now)
                    .map(|u| (e.label.to_string(), u - now))
            })
            .collect();
        out.sort();
        out
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then_some(&v[1..])
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_store::MemoryStore;

    fn breakers(failures: u32, key: Vec<BreakerKeyPart>) -> Breakers {
        let config = BreakerConfig {
            failures,
            cooldown: Duration::from_secs(30),
            key,
            ..BreakerConfig::default()
        };
        Breakers::new(&Keyspace::new("t").unwrap(), "up", &config, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_then_one_probe_closes_it() {
        let b = breakers(2, vec![BreakerKeyPart::Target]);
        let ctx = StoreCtx::new(MemoryStore::new(), "i1");
        let id = b.identify(&http::HeaderMap::new(), "http://a");
        let fail = Outcome::Failure { retry_after: None };
        b.record(&ctx, &id, false, fail).await;
        b.record(&ctx, &id, false, Outcome::Success).await;
        b.record(&ctx, &id, false, fail).await;
        assert!(matches!(b.admit(&ctx, &id).await, Admission::Go), "not consecutive yet");
        b.record(&ctx, &id, false, fail).await;
        assert!(matches!(b.admit(&ctx, &id).await, Admission::Open { .. }));
        assert_eq!(b.open().len(), 1);
        // Cooldown over: one probe, the next is held off.
        b.states.lock().get_mut(&id.hash).unwrap().open_until = Some(Instant::now());
        assert!(matches!(b.admit(&ctx, &id).await, Admission::Probe));
        assert!(matches!(b.admit(&ctx, &id).await, Admission::Open { .. }));
        b.record(&ctx, &id, true, Outcome::Success).await;
        assert!(matches!(b.admit(&ctx, &id).await, Admission::Go));
        assert!(b.open().is_empty());
    }

    #[tokio::test]
    async fn retry_after_longer_than_the_cooldown_wins() {
        let b = breakers(1, vec![BreakerKeyPart::Target]);
        let ctx = StoreCtx::new(MemoryStore::new(), "i1");
        let id = b.identify(&http::HeaderMap::new(), "http://a");
        b.record(
            &ctx,
            &id,
            false,
            Outcome::Failure {
                retry_after: Some(Duration::from_secs(120)),
            },
        )
        .await;
        let Admission::Open { retry_after } = b.admit(&ctx, &id).await else {
            panic!("open")
        };
        assert!(retry_after > Duration::from_secs(100));
    }

    #[test]
    fn a_missing_key_header_is_an_empty_part() {
        let b = breakers(1, vec![BreakerKeyPart::Header("x-account".into())]);
        let mut h = http::HeaderMap::new();
        let none = b.identify(&h, "http://a");
        h.insert("x-account", http::HeaderValue::from_static("acme"));
        let acme = b.identify(&h, "http://a");
        assert_ne!(none, acme);
        assert_eq!(acme, b.identify(&h, "http://b"), "without target, targets share it");
    }
}
