//! One conformance suite, run against every driver: the same scenarios must give the same
//! decisions on the in-process store and on a real redis-server started by the test.
//!
//! Time: the in-process store runs on a [`ManualClock`] that the scenarios advance; Redis
//! scripts read the server's own clock, which only real time moves, so there "advancing" is
//! waiting that long (the passage of time is what is tested, not a guess at when something
//! happens). After every scenario on Redis, every key under the suite's prefix must have a TTL,
//! except the fencing counters, which must have none (docs/store.md).

use bytes::Bytes;
use fleetgate_store::*;
use fleetgate_testkit::RedisServer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Makes handles on one shared state: clones for the in-process store, separate connections for
/// Redis (so concurrency crosses connections, as it crosses instances in a fleet).
trait Fleet {
    type S: StoreDriver + Clone;
    fn handle(&self) -> Self::S;
    /// Lets `by` pass on the store's clock.
    async fn advance(&self, by: Duration);
    /// Whether `key` holds any state.
    fn holds(&self, key: &StoreKey) -> bool;
    /// Checks what must hold after every scenario.
    fn after_scenario(&self) {}
}

/// The in-process store on a manual clock that starts at the wall clock's time.
struct MemoryFleet {
    store: MemoryStore,
    clock: ManualClock,
}

impl MemoryFleet {
    fn new() -> Self {
        let clock = ManualClock::at_wall_clock();
        MemoryFleet {
            store: MemoryStore::with_clock(Arc::new(clock.clone())),
            clock,
        }
    }
}

impl Fleet for MemoryFleet {
    type S = MemoryStore;
    fn handle(&self) -> MemoryStore {
        self.store.clone()
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    fn holds(&self, key: &StoreKey) -> bool {
        self.store.holds(key)
    }
}

/// Any Redis topology: handles are separate stores (separate connections) on one URL.
struct RedisFleet {
    url: String,
    options: RedisOptions,
    /// Plain `redis://` URLs of every primary, for inspecting keys directly.
    nodes: Vec<String>,
    _servers: Box<dyn std::any::Any + Send>,
    _slot: FleetSlot,
}

/// At most this many Redis deployments run at once across the suite's parallel tests, so a
/// 2-core machine is not drowned in clusters and sentinels (each test still gets its own).
const MAX_FLEETS: usize = 3;
static FLEETS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static FLEET_FREED: std::sync::Condvar = std::sync::Condvar::new();

struct FleetSlot;

impl FleetSlot {
    fn take() -> FleetSlot {
        let mut n = FLEETS.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_FLEETS {
            n = FLEET_FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        FleetSlot
    }
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        *FLEETS.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FLEET_FREED.notify_one();
    }
}

impl RedisFleet {
    fn standalone() -> Self {
        let slot = FleetSlot::take();
        let server = RedisServer::start();
        RedisFleet {
            url: server.url(),
            options: Self::base(),
            nodes: vec![server.url()],
            _servers: Box::new(server),
            _slot: slot,
        }
    }
    fn cluster() -> Self {
        let slot = FleetSlot::take();
        let cluster = fleetgate_testkit::RedisCluster::start(3);
        RedisFleet {
            url: cluster.url(),
            options: Self::base(),
            nodes: cluster.nodes.iter().map(|n| n.url()).collect(),
            _servers: Box::new(cluster),
            _slot: slot,
        }
    }
    fn sentinel() -> Self {
        let slot = FleetSlot::take();
        let group = fleetgate_testkit::SentinelGroup::start();
        RedisFleet {
            url: group.url(),
            options: Self::base(),
            nodes: vec![group.primary.url()],
            _servers: Box::new(group),
            _slot: slot,
        }
    }
    fn tls() -> Self {
        let slot = FleetSlot::take();
        let certs = fleetgate_testkit::TestCerts::generate();
        let (server, port) = certs.start_tls_server(false);
        let mut options = Self::base();
        options.tls = Some(TlsFiles {
            ca_file: Some(certs.path("ca.crt")),
            ..Default::default()
        });
        RedisFleet {
            url: format!("rediss://127.0.0.1:{port}"),
            options,
            nodes: vec![server.url()],
            _servers: Box::new((server, certs)),
            _slot: slot,
        }
    }
    fn base() -> RedisOptions {
        RedisOptions {
            timeout: Duration::from_secs(5),
            pool_size: 1,
            ..Default::default()
        }
    }
}

impl RedisFleet {
    fn node(url: &str) -> ::redis::Connection {
        ::redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("connect to a redis node")
    }

    /// Every key under the suite's prefix, on every primary, with its PTTL.
    fn keys_with_pttl(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for url in &self.nodes {
            let mut conn = Self::node(url);
            let mut cursor = 0u64;
            let mut done = false;
            // Bounded: a scenario leaves at most a few hundred keys.
            for _ in 0..10_000 {
                let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("conf:*")
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut conn)
                    .expect("SCAN");
                for k in keys {
                    let pttl: i64 = ::redis::cmd("PTTL").arg(&k).query(&mut conn).expect("PTTL");
                    out.push((k, pttl));
                }
                if next == 0 {
                    done = true;
                    break;
                }
                cursor = next;
            }
            assert!(done, "SCAN of {url} did not finish");
        }
        out
    }
}

impl Fleet for RedisFleet {
    type S = RedisStore;
    fn handle(&self) -> RedisStore {
        RedisStore::open(&self.url, self.options.clone()).expect("open redis store")
    }
    async fn advance(&self, by: Duration) {
        // The scripts read the server's clock: only real time moves it.
        tokio::time::sleep(by).await;
    }
    fn holds(&self, key: &StoreKey) -> bool {
        self.keys_with_pttl().iter().any(|(k, _)| k.starts_with(key.as_str()))
    }
    /// Every key has a TTL (PTTL -2 means it expired between SCAN and PTTL); fencing counters
    /// are the one documented exception and must have none, so tokens only grow.
    fn after_scenario(&self) {
        for (key, pttl) in self.keys_with_pttl() {
            if key.ends_with(":fence") {
                assert!(pttl == -1 || pttl == -2, "fencing counter {key} expires (PTTL {pttl})");
            } else {
                assert!(pttl > 0 || pttl == -2, "{key} has no TTL (PTTL {pttl})");
            }
        }
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn key(scope: &str) -> StoreKey {
    let ks = Keyspace::new("conf").unwrap();
    ks.key(
        Concern::RateLimit,
        scope,
        &NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes(),
    )
}

async fn gcra_burst_then_denial<F: Fleet>(f: &F) {
    // One unit per 2 s: slow enough that no refill lands between the calls of a loaded machine.
    let s = f.handle();
    let limit = RateLimit::parse(Algorithm::Gcra, "5/10s", Some(5)).unwrap();
    let k = key("gcra");
    for i in 0..5 {
        let d = s.rate(&k, &limit, 1).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.limit, 5);
        assert_eq!(d.remaining, 4 - i);
        assert_eq!(d.retry_after, Duration::ZERO);
    }
    let d = s.rate(&k, &limit, 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert!(
        d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_secs(2),
        "{d:?}"
    );
    assert!(
        d.reset_after > Duration::from_secs(8) && d.reset_after <= Duration::from_secs(10),
        "{d:?}"
    );
    f.advance(d.retry_after + Duration::from_millis(5)).await;
    assert!(s.rate(&k, &limit, 1).await.unwrap().allowed);
}

async fn cost_counts_units<F: Fleet>(f: &F) {
    let s = f.handle();
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        let limit = RateLimit::parse(algorithm, "5/1d", None).unwrap();
        let k = key("cost");
        let d = s.rate(&k, &limit, 3).await.unwrap();
        assert!(d.allowed && d.remaining == 2, "{algorithm}: {d:?}");
        let d = s.rate(&k, &limit, 3).await.unwrap();
        assert!(!d.allowed && d.remaining == 2, "{algorithm}: {d:?}");
        let d = s.rate(&k, &limit, 2).await.unwrap();
        assert!(d.allowed && d.remaining == 0, "{algorithm}: {d:?}");
        let d = s.rate(&k, &limit, 0).await.unwrap();
        assert!(d.allowed && d.remaining == 0, "{algorithm}: zero cost peeks: {d:?}");
        let d = s.rate(&k, &limit, 6).await.unwrap();
        assert!(!d.allowed, "{algorithm}: a cost above the limit is never admitted");
    }
}

async fn sliding_window_exact<F: Fleet>(f: &F) {
    let s = f.handle();
    let limit = RateLimit::parse(Algorithm::SlidingWindow, "3/2s", None).unwrap();
    let k = key("sliding");
    for _ in 0..3 {
        assert!(s.rate(&k, &limit, 1).await.unwrap().allowed);
    }
    let d = s.rate(&k, &limit, 1).await.unwrap();
    assert!(!d.allowed);
    assert!(
        d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_secs(2),
        "{d:?}"
    );
    f.advance(d.retry_after + Duration::from_millis(5)).await;
    let d = s.rate(&k, &limit, 1).await.unwrap();
    assert!(d.allowed, "{d:?}");
}

async fn fixed_window_per_aligned_window<F: Fleet>(f: &F) {
    let s = f.handle();
    let limit = RateLimit::parse(Algorithm::FixedWindow, "3/1d", None).unwrap();
    let k = key("fixed");
    for _ in 0..3 {
        assert!(s.rate(&k, &limit, 1).await.unwrap().allowed);
    }
    let d = s.rate(&k, &limit, 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, d.reset_after);
    assert!(d.retry_after <= Duration::from_secs(86_400));
}

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::FixedWindow];

/// A refund gives back exactly what its charge took; refusals and zero costs have nothing to
/// refund.
async fn refund_gives_back_the_charge<F: Fleet>(f: &F) {
    let s = f.handle();
    for algorithm in ALGORITHMS {
        let limit = RateLimit::parse(algorithm, "5/1d", None).unwrap();
        let k = key("refund");
        let first = s.rate(&k, &limit, 3).await.unwrap();
        let charge = first.charge.expect("an admitted charge has a receipt");
        assert_eq!(charge.cost, 3, "{algorithm}");
        let refused = s.rate(&k, &limit, 3).await.unwrap();
        assert!(!refused.allowed && refused.charge.is_none(), "{algorithm}: {refused:?}");
        assert_eq!(
            s.rate(&k, &limit, 0).await.unwrap().charge,
            None,
            "{algorithm}: zero cost"
        );
        assert!(s.refund(&k, &limit, &charge).await.unwrap(), "{algorithm}");
        // As if never charged: the whole limit is there again, and no more.
        let d = s.rate(&k, &limit, 5).await.unwrap();
        assert!(d.allowed && d.remaining == 0, "{algorithm}: {d:?}");
        assert!(!s.rate(&k, &limit, 1).await.unwrap().allowed, "{algorithm}");
        // Refunding a key with no state changes nothing.
        let empty = key("refund-empty");
        assert!(!s.refund(&empty, &limit, &charge).await.unwrap(), "{algorithm}");
        assert!(!f.holds(&empty), "{algorithm}: a refund creates no state");
    }
}

/// The case, at the store: a route limit of 10 checked before a per-key limit of 2.
/// One key sends 5 (2 admitted, 3 refused by the per-key limit, their route charge refunded);
/// then 10 other keys get the 8 the route limit has left, not 5.
async fn refused_requests_are_charged_to_no_limit<F: Fleet>(f: &F) {
    let s = f.handle();
    for algorithm in ALGORITHMS {
        let route = RateLimit::parse(algorithm, "10/1d", None).unwrap();
        let per_key = RateLimit::parse(algorithm, "2/1d", None).unwrap();
        let route_key = key("route");
        let admit = |k: StoreKey| {
            let (s, route_key) = (s.clone(), route_key.clone());
            async move {
                let mut charged = Vec::new();
                for (key, limit) in [(&route_key, &route), (&k, &per_key)] {
                    let d = s.rate(key, limit, 1).await.unwrap();
                    match d.charge {
                        Some(c) => charged.push((key.clone(), limit, c)),
                        None => {
                            for (key, limit, c) in charged {
                                assert!(s.refund(&key, limit, &c).await.unwrap(), "{algorithm}");
                            }
                            return false;
                        }
                    }
                }
                true
            }
        };
        let one = key("client");
        let mut admitted = 0;
        for _ in 0..5 {
            admitted += admit(one.clone()).await as u32;
        }
        assert_eq!(admitted, 2, "{algorithm}: the per-key limit");
        let mut others = 0;
        for _ in 0..10 {
            others += admit(key("client")).await as u32;
        }
        assert_eq!(
            others, 8,
            "{algorithm}: refused requests left the route limit untouched"
        );
    }
}

/// A refund goes to the window or log entry its charge was made in: once that has passed, a
/// refund gives nothing back (giving back from the current window would admit more than N in it).
async fn refund_after_its_window_passed_gives_nothing<F: Fleet>(f: &F) {
    let s = f.handle();
    for algorithm in [Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        // A window of 1 s, not less: on Redis the clock is real, and the last two calls must
        // land in the same window even on a loaded machine (300 ms failed once under load).
        let limit = RateLimit::parse(algorithm, "1/1s", None).unwrap();
        let k = key("refund-late");
        let old = s.rate(&k, &limit, 1).await.unwrap();
        f.advance(old.reset_after + Duration::from_millis(5)).await;
        let now = s.rate(&k, &limit, 1).await.unwrap();
        assert!(now.allowed && now.remaining == 0, "{algorithm}: {now:?}");
        assert!(
            !s.refund(&k, &limit, &old.charge.unwrap()).await.unwrap(),
            "{algorithm}"
        );
        assert!(!s.rate(&k, &limit, 1).await.unwrap().allowed, "{algorithm}: still full");
    }
}

/// Refunds from many tasks over several connections, interleaved with charges on one key: the
/// refunded units (and only they) are admitted again.
async fn concurrent_refunds_give_back_exactly<F: Fleet>(f: &F) {
    let handles: Vec<F::S> = (0..4).map(|_| f.handle()).collect();
    for algorithm in ALGORITHMS {
        let limit = RateLimit::parse(algorithm, "100/1d", None).unwrap();
        let k = key("refund-hammer");
        let admitted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let s = handles[t % handles.len()].clone();
            let (k, admitted) = (k.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let d = s.rate(&k, &limit, 1).await.unwrap();
                    if let Some(c) = d.charge {
                        // Every other task refunds every other admission.
                        if t % 2 == 0 && i % 2 == 0 {
                            assert!(s.refund(&k, &limit, &c).await.unwrap());
                        } else {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // The state holds exactly the kept admissions: what is left is the rest of the limit.
        let kept = admitted.load(Ordering::Relaxed);
        let rest = handles[0].rate(&k, &limit, 0).await.unwrap().remaining;
        if algorithm == Algorithm::Gcra {
            // gcra keeps the refill time that passed between a charge and its refund (on Redis,
            // real milliseconds; far less than one unit of 864 s), so when refunds overlap in time
            // rounding may lose one unit, never give one too many.
            assert!(
                (99..=100).contains(&(kept + rest)),
                "{algorithm}: kept {kept}, remaining {rest}"
            );
        } else {
            assert_eq!(kept + rest, 100, "{algorithm}: kept {kept}, remaining {rest}");
        }
    }
}

/// 16 tasks over several connections hammer one key: exactly the allowed count is admitted.
async fn concurrent_hammer_admits_exactly_the_limit<F: Fleet>(f: &F) {
    let handles: Vec<F::S> = (0..4).map(|_| f.handle()).collect();
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        let limit = RateLimit::parse(algorithm, "100/1d", None).unwrap();
        let k = key("hammer");
        let admitted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let s = handles[t % handles.len()].clone();
            let (k, admitted) = (k.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    if s.rate(&k, &limit, 1).await.unwrap().allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            admitted.load(Ordering::Relaxed),
            100,
            "{algorithm}: 400 tries on a limit of 100"
        );
    }
}

async fn values_expire<F: Fleet>(f: &F) {
    let s = f.handle();
    let k = key("ttl");
    s.set(&k, Bytes::from_static(b"session"), Duration::from_millis(1000))
        .await
        .unwrap();
    assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"session"[..]));
    f.advance(Duration::from_millis(1300)).await;
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert!(!f.holds(&k), "an expired value is gone from the store");
    // A rate key's state expires once it no longer matters, and the full burst is back.
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        let limit = RateLimit::parse(algorithm, "2/2s", None).unwrap();
        let k = key("ttl-rate");
        assert!(s.rate(&k, &limit, 2).await.unwrap().allowed, "{algorithm}");
        assert!(!s.rate(&k, &limit, 1).await.unwrap().allowed, "{algorithm}");
        assert!(f.holds(&k), "{algorithm}: state while it matters");
        // Past the state's lifetime: at most the 2 s period for each algorithm.
        f.advance(Duration::from_millis(2200)).await;
        assert!(
            !f.holds(&k),
            "{algorithm}: the state expired once it no longer mattered"
        );
        let d = s.rate(&k, &limit, 2).await.unwrap();
        assert!(
            d.allowed && d.remaining == 0,
            "{algorithm}: the full burst is back: {d:?}"
        );
    }
    let k = key("ttl-rate");
    // Delete reports whether the key existed.
    s.set(&k, Bytes::from_static(b"x"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(s.delete(&k).await.unwrap());
    assert!(!s.delete(&k).await.unwrap());
}

/// `get_extend` slides a value's expiry (gateway sessions), and never revives a deleted one.
async fn get_extend_slides_the_expiry<F: Fleet>(f: &F) {
    let s = f.handle();
    let k = key("slide");
    s.set(&k, Bytes::from_static(b"who"), Duration::from_millis(1000))
        .await
        .unwrap();
    f.advance(Duration::from_millis(700)).await;
    let got = s.get_extend(&k, Duration::from_millis(1000)).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"who"[..]));
    // Past the first expiry, inside the extended one.
    f.advance(Duration::from_millis(700)).await;
    assert_eq!(
        s.get(&k).await.unwrap().as_deref(),
        Some(&b"who"[..]),
        "the expiry slid"
    );
    assert!(s.delete(&k).await.unwrap());
    assert_eq!(s.get_extend(&k, Duration::from_secs(5)).await.unwrap(), None);
    assert!(!f.holds(&k), "a deleted value is not brought back");
}

/// Claim-once is won by exactly one of many concurrent claimants; the others see its value.
async fn claim_once_has_one_winner<F: Fleet>(f: &F) {
    let k = key("claim");
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let s = f.handle();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            s.claim(&k, Bytes::from(format!("claimant-{i}")), Duration::from_secs(10))
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    let mut held = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            ClaimOutcome::Won => winners += 1,
            ClaimOutcome::Held(v) => {
                held.insert(v);
            }
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(held.len(), 1, "every loser sees the winner's value");
    let s = f.handle();
    let stored = s.get(&k).await.unwrap().unwrap();
    assert!(held.contains(&stored));
    // After the TTL the marker can be claimed again.
    let short = key("claim-short");
    assert_eq!(
        s.claim(&short, Bytes::from_static(b"a"), Duration::from_millis(100))
            .await
            .unwrap(),
        ClaimOutcome::Won
    );
    f.advance(Duration::from_millis(200)).await;
    assert_eq!(
        s.claim(&short, Bytes::from_static(b"b"), Duration::from_millis(100))
            .await
            .unwrap(),
        ClaimOutcome::Won
    );
}

/// Only the holder of a claim (the value it claimed with) can complete or release it, each in
/// one atomic compare-and-set: of many concurrent completers with the same wrong token and one
/// with the right one, only the holder's value is stored; a completed claim is no longer held
/// by its pending token, and an expired claim taken by someone else is not theirs to release.
async fn only_the_holder_completes_a_claim<F: Fleet>(f: &F) {
    let k = key("claim-cas");
    let s = f.handle();
    let token = Bytes::from_static(b"pending:token-a");
    assert_eq!(
        s.claim(&k, token.clone(), Duration::from_secs(10)).await.unwrap(),
        ClaimOutcome::Won
    );
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let s = f.handle();
        let k = k.clone();
        let token = if i == 7 {
            token.clone()
        } else {
            Bytes::from(format!("pending:token-{i}"))
        };
        tasks.push(tokio::spawn(async move {
            let done = s
                .complete_claim(&k, &token, Bytes::from(format!("done-{i}")), Duration::from_secs(10))
                .await
                .unwrap();
            (i, done)
        }));
    }
    let mut completed = Vec::new();
    for t in tasks {
        let (i, done) = t.await.unwrap();
        if done {
            completed.push(i);
        }
    }
    assert_eq!(completed, vec![7], "only the holder completes");
    assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"done-7"[..]));
    assert!(
        !s.complete_claim(&k, &token, Bytes::from_static(b"again"), Duration::from_secs(10))
            .await
            .unwrap(),
        "a completed claim is no longer held by its pending token"
    );
    assert!(!s.release_claim(&k, &token).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"done-7"[..]));

    // Release: a wrong token leaves the claim, the holder's frees it for a new claimant.
    let r = key("claim-release");
    let mine = Bytes::from_static(b"pending:mine");
    assert_eq!(
        s.claim(&r, mine.clone(), Duration::from_millis(150)).await.unwrap(),
        ClaimOutcome::Won
    );
    assert!(!s.release_claim(&r, b"pending:theirs").await.unwrap());
    assert!(s.release_claim(&r, &mine).await.unwrap());
    assert_eq!(s.get(&r).await.unwrap(), None);
    // Expired and taken by another: the first holder can neither complete nor release it.
    assert_eq!(
        s.claim(&r, mine.clone(), Duration::from_millis(100)).await.unwrap(),
        ClaimOutcome::Won
    );
    f.advance(Duration::from_millis(200)).await;
    let other = Bytes::from_static(b"pending:other");
    assert_eq!(
        s.claim(&r, other.clone(), Duration::from_secs(10)).await.unwrap(),
        ClaimOutcome::Won
    );
    assert!(!s
        .complete_claim(&r, &mine, Bytes::from_static(b"late"), Duration::from_secs(10))
        .await
        .unwrap());
    assert!(!s.release_claim(&r, &mine).await.unwrap());
    assert_eq!(s.get(&r).await.unwrap(), Some(other));
}

async fn permits_are_bounded_and_leased<F: Fleet>(f: &F) {
    let k = key("permits");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = f.handle();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            s.acquire_permit(&k, &format!("p{i}"), 3, Duration::from_secs(10))
                .await
                .unwrap()
                .granted
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap() as u32;
    }
    assert_eq!(granted, 3);
    let s = f.handle();
    let d = s.acquire_permit(&k, "late", 3, Duration::from_secs(10)).await.unwrap();
    assert!(!d.granted && d.in_use == 3);
    // Renewing a held permit does not take a second slot.
    let renew = key("permits-renew");
    assert!(
        s.acquire_permit(&renew, "a", 1, Duration::from_secs(10))
            .await
            .unwrap()
            .granted
    );
    assert!(
        s.acquire_permit(&renew, "a", 1, Duration::from_secs(10))
            .await
            .unwrap()
            .granted
    );
    assert!(s.release_permit(&renew, "a").await.unwrap());
    assert!(!s.release_permit(&renew, "a").await.unwrap());
    assert!(
        s.acquire_permit(&renew, "b", 1, Duration::from_secs(10))
            .await
            .unwrap()
            .granted
    );
    // A crashed holder's lease expires by itself.
    let lease = key("permits-lease");
    assert!(
        s.acquire_permit(&lease, "crashed", 1, Duration::from_millis(1000))
            .await
            .unwrap()
            .granted
    );
    assert!(
        !s.acquire_permit(&lease, "next", 1, Duration::from_millis(1000))
            .await
            .unwrap()
            .granted
    );
    f.advance(Duration::from_millis(1200)).await;
    let d = s
        .acquire_permit(&lease, "next", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(d.granted && d.in_use == 1, "{d:?}");
}

async fn locks_fence<F: Fleet>(f: &F) {
    let (a, b) = (f.handle(), f.handle());
    let k = key("lock");
    let first = a
        .lock(&k, "a", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a locks");
    assert_eq!(b.lock(&k, "b", Duration::from_secs(10)).await.unwrap(), None);
    assert_eq!(
        a.lock(&k, "a", Duration::from_secs(10)).await.unwrap(),
        Some(first),
        "re-entry keeps the token"
    );
    assert!(!b.unlock(&k, "b").await.unwrap());
    assert!(a.unlock(&k, "a").await.unwrap());
    let second = b
        .lock(&k, "b", Duration::from_millis(100))
        .await
        .unwrap()
        .expect("b locks");
    assert!(second.fence > first.fence);
    f.advance(Duration::from_millis(200)).await;
    let third = a
        .lock(&k, "a", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("b's lease expired");
    assert!(third.fence > second.fence);
}

async fn pubsub_reaches_every_subscriber<F: Fleet>(f: &F) {
    let publisher = f.handle();
    let channel = format!("conf:chan:{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let mut subs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let h = f.handle();
        subs.push(h.subscribe(&channel).await.unwrap());
        handles.push(h);
    }
    for i in 0..5 {
        publisher
            .publish(&channel, Bytes::from(format!("event-{i}")))
            .await
            .unwrap();
    }
    for sub in &mut subs {
        for i in 0..5 {
            let m = tokio::time::timeout(Duration::from_secs(2), sub.next())
                .await
                .expect("message arrives")
                .unwrap();
            assert_eq!(&*m.channel, channel.as_str());
            assert_eq!(m.payload, Bytes::from(format!("event-{i}")));
        }
    }
}

async fn wrong_type_is_an_error_and_leaves_state<F: Fleet>(f: &F) {
    let s = f.handle();
    let k = key("wrongtype");
    s.set(&k, Bytes::from_static(b"not a counter"), Duration::from_secs(10))
        .await
        .unwrap();
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        let limit = RateLimit::parse(algorithm, "5/1s", None).unwrap();
        let err = s.rate(&k, &limit, 1).await.unwrap_err();
        assert!(matches!(err, StoreError::WrongType(_)), "{algorithm}: {err:?}");
    }
    assert!(matches!(
        s.acquire_permit(&k, "p", 1, Duration::from_secs(1)).await,
        Err(StoreError::WrongType(_))
    ));
    assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"not a counter"[..]));
}

/// Lease mode's store side: a reservation takes units from the fleet budget (so exact charges
/// see them gone), never more than the budget has, and a give-back returns unused units only as
/// its algorithm allows.
async fn reservations_take_and_give_back<F: Fleet>(f: &F) {
    let s = f.handle();
    let lease = Duration::from_secs(1);
    for algorithm in ALGORITHMS {
        let limit = RateLimit::parse(algorithm, "10/1d", None).unwrap();
        let k = key("lease");
        let first = s.reserve(&k, &limit, 4, lease).await.unwrap();
        assert_eq!((first.granted, first.limit), (4, 10), "{algorithm}: {first:?}");
        // gcra: the lease's second is not refilled, which costs a unit of 8,640 s while full.
        let expected_remaining = if algorithm == Algorithm::Gcra { 5 } else { 6 };
        assert_eq!(first.remaining, expected_remaining, "{algorithm}: {first:?}");
        let span = first.lease_until_us - first.at_us;
        assert!(span > 0 && span <= 1_000_000, "{algorithm}: lease of {span} us");
        let receipt = first.receipt.expect("granted units have a receipt");
        assert_eq!(receipt.granted, 4);
        // Asking for more than is left grants what is left, and exact charges see nothing left.
        let second = s.reserve(&k, &limit, 100, lease).await.unwrap();
        assert_eq!(
            (second.granted, second.remaining),
            (expected_remaining, 0),
            "{algorithm}: {second:?}"
        );
        let none = s.reserve(&k, &limit, 1, lease).await.unwrap();
        assert_eq!((none.granted, none.receipt), (0, None), "{algorithm}: {none:?}");
        assert!(!s.rate(&k, &limit, 1).await.unwrap().allowed, "{algorithm}");
        // The last reservation's unused units go back; exactly those are admissible again.
        let back = second.receipt.unwrap();
        assert!(s.give_back(&k, &limit, &back, 3).await.unwrap(), "{algorithm}");
        let d = s.rate(&k, &limit, 3).await.unwrap();
        assert!(d.allowed && d.remaining == 0, "{algorithm}: {d:?}");
        assert!(!s.rate(&k, &limit, 1).await.unwrap().allowed, "{algorithm}");
        // gcra: the first reservation's mark is gone (others were charged since): nothing back.
        // fixed_window: same window, its units go back; sliding_window: its log entry (at the
        // lease's end) is still in the window, its units go back.
        let gave = s.give_back(&k, &limit, &receipt, 4).await.unwrap();
        assert_eq!(gave, algorithm != Algorithm::Gcra, "{algorithm}");
        // A give-back to a key with no state creates none.
        let empty = key("lease-empty");
        assert!(!s.give_back(&empty, &limit, &receipt, 1).await.unwrap(), "{algorithm}");
        assert!(!f.holds(&empty), "{algorithm}: a give-back creates no state");
    }
    // sliding_window: a reservation counts until its lease ends plus the window, so an exact
    // charge right after a lease-long reservation of everything is refused until then.
    let sliding = RateLimit::parse(Algorithm::SlidingWindow, "10/1d", None).unwrap();
    let k = key("lease-sliding");
    let r = s.reserve(&k, &sliding, 10, lease).await.unwrap();
    assert_eq!(r.granted, 10, "{r:?}");
    let d = s.rate(&k, &sliding, 1).await.unwrap();
    assert!(!d.allowed, "{d:?}");
    let wait = d.retry_after.as_micros() as u64;
    let span = r.lease_until_us - r.at_us;
    assert!(
        wait > span + 86_400_000_000 - 1_000_000 && wait <= span + 86_400_000_000,
        "retry after {wait} us, lease {span} us"
    );
    // A key holding another kind of value is left alone.
    let k = key("lease-wrongtype");
    s.set(&k, Bytes::from_static(b"v"), Duration::from_secs(60))
        .await
        .unwrap();
    let gcra = RateLimit::parse(Algorithm::Gcra, "10/1d", None).unwrap();
    assert!(matches!(
        s.reserve(&k, &gcra, 1, lease).await,
        Err(StoreError::WrongType(_))
    ));
    assert_eq!(s.get(&k).await.unwrap().as_deref(), Some(&b"v"[..]));
}

macro_rules! driver {
    ($module:ident, $fleet:expr, $($scenario:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    use super::Fleet;
                    let fleet = $fleet;
                    super::$scenario(&fleet).await;
                    fleet.after_scenario();
                }
            )*
        }
    };
}

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        driver!(memory, super::MemoryFleet::new(), $($scenario),*);
        driver!(redis, super::RedisFleet::standalone(), $($scenario),*);
        driver!(redis_cluster, super::RedisFleet::cluster(), $($scenario),*);
        driver!(redis_sentinel, super::RedisFleet::sentinel(), $($scenario),*);
        driver!(redis_tls, super::RedisFleet::tls(), $($scenario),*);
    };
}

conformance!(
    gcra_burst_then_denial,
    cost_counts_units,
    sliding_window_exact,
    fixed_window_per_aligned_window,
    concurrent_hammer_admits_exactly_the_limit,
    values_expire,
    get_extend_slides_the_expiry,
    claim_once_has_one_winner,
    only_the_holder_completes_a_claim,
    permits_are_bounded_and_leased,
    locks_fence,
    refund_gives_back_the_charge,
    refused_requests_are_charged_to_no_limit,
    refund_after_its_window_passed_gives_nothing,
    concurrent_refunds_give_back_exactly,
    pubsub_reaches_every_subscriber,
    wrong_type_is_an_error_and_leaves_state,
    reservations_take_and_give_back,
);

/// Fixed windows have their edges at the same instants on both drivers (multiples of the period
/// since the Unix epoch), so a `local` fallback from Redis to the in-process store does not move
/// them. Uses the in-process store's real clock, the one a gateway runs on.
#[tokio::test]
async fn fixed_windows_align_to_the_unix_epoch_on_both_drivers() {
    let redis = RedisFleet::standalone();
    let (memory, shared) = (MemoryStore::new(), redis.handle());
    for rate in ["1/1s", "1/1m", "1/1h", "1/1d", "1/7d"] {
        let limit = RateLimit::parse(Algorithm::FixedWindow, rate, None).unwrap();
        let period = limit.period_us();
        // The end of the current window, in µs since the Unix epoch, as each store sees it.
        let mut ends = Vec::new();
        for store in [Store::Memory(memory.clone()), Store::Redis(shared.clone())] {
            let d = store.rate(&key("epoch"), &limit, 1).await.unwrap();
            let at = d.charge.expect("admitted").at_us;
            let end = at + d.reset_after.as_micros() as u64;
            assert_eq!(
                end % period,
                0,
                "{rate}: window ends at {end}, not on an edge since the epoch"
            );
            ends.push(end);
        }
        // The same window, or (if an edge passed between the two calls) the next one.
        let (m, r) = (ends[0], ends[1]);
        assert!(
            m == r || m.abs_diff(r) == period,
            "{rate}: in-process window ends at {m}, Redis's at {r}"
        );
    }
    redis.after_scenario();
}
