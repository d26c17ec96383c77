//! The key builder: any prefix and scope are accepted or refused cleanly, and any identifier
//! bytes make a bounded, printable key with exactly one hash tag and no separator injection.
#![no_main]
use fleetgate_store::{Concern, Keyspace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &[u8])| {
    let (prefix, scope, identifier) = input;
    let ks = match Keyspace::new(prefix) {
        Ok(ks) => ks,
        Err(_) => {
            assert!(Keyspace::check_scope(prefix).is_err());
            Keyspace::new("fuzz").unwrap()
        }
    };
    let key = ks.key(Concern::RateLimit, scope, identifier);
    let text = key.as_str();
    assert!(text.is_ascii() && !text.contains(char::is_whitespace), "{text:?}");
    assert_eq!(text.matches('{').count(), 1, "{text:?}");
    assert_eq!(text.matches('}').count(), 1, "{text:?}");
    assert!(text.ends_with('}'));
    // prefix, concern, scope, tag: a scope can never add a separator.
    assert_eq!(text.split(':').count(), 4, "{text:?}");
    assert!(text.len() <= 64 + 1 + 8 + 1 + 160 + 1 + 34, "{} bytes", text.len());
    assert!(!identifier.is_empty() || text.len() > 34);
});
