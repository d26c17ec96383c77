//! `REDIS_URL` from the real process environment overrides `store.url`. In its own test
//! binary (its own process), so setting the variable cannot disturb other tests.

use fleetgate_config::{parse, StoreKind, UrlSource};

#[test]
fn redis_url_from_the_process_environment_overrides_store_url() {
    std::env::set_var("REDIS_URL", "redis://127.0.0.1:6399/3");
    let c = parse("store:\n  url: memory://\n", "env.yaml").unwrap();
    assert_eq!(c.store.url, "redis://127.0.0.1:6399/3");
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.url_source, UrlSource::RedisUrlEnv);

    std::env::set_var("REDIS_URL", "");
    let c = parse("store:\n  url: memory://\n", "env.yaml").unwrap();
    assert_eq!(c.store.url_source, UrlSource::File);
    std::env::remove_var("REDIS_URL");
}
