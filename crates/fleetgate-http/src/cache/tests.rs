//! The cache as a tower layer over the in-process store: what a library user gets.

use super::*;
use crate::layer::StageLayer;
use fleetgate_store::MemoryStore;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::{Layer, Service, ServiceExt};

#[tokio::test]
async fn as_a_tower_layer_it_stores_then_serves_without_calling_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(Full::new(Bytes::from_static(b"from the service")))
                    .unwrap(),
            )
        }
    });
    let keyspace = Keyspace::new("t").unwrap();
    let cache = Cache::new(&keyspace, "lib", &CacheConfig::default());
    let mut svc = StageLayer::new(cache, StoreCtx::new(MemoryStore::new(), "i1"), "lib").layer(service);
    let request = || {
        let mut r = Request::get("http://example.test/item?id=1")
            .header("host", "example.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        r.extensions_mut().insert(SocketAddr::from(([127, 0, 0, 1], 9)));
        r
    };
    let first = svc.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(first.headers()[&CACHE_STATUS], "fleetgate; fwd=uri-miss; stored");
    assert_eq!(
        first.into_body().collect().await.unwrap().to_bytes(),
        "from the service"
    );
    // The entry is written once the body has ended, by a task: give it its turn.
    let mut second = None;
    for _ in 0..50 {
        let r = svc.ready().await.unwrap().call(request()).await.unwrap();
        if r.headers()[&CACHE_STATUS].to_str().unwrap().contains("; hit") {
            second = Some(r);
            break;
        }
        let _ = r.into_body().collect().await;
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = second.expect("served from the cache");
    assert!(second.headers().contains_key(header::AGE));
    assert_eq!(
        second.into_body().collect().await.unwrap().to_bytes(),
        "from the service"
    );
    let before = calls.load(Ordering::SeqCst);
    let third = svc.ready().await.unwrap().call(request()).await.unwrap();
    assert!(third.headers()[&CACHE_STATUS].to_str().unwrap().contains("; hit"));
    assert_eq!(calls.load(Ordering::SeqCst), before, "a hit never calls the service");
}
