//! Path normalisation: any path is refused or normalised; the normal form is a fixed point,
//! starts with `/`, and holds no `//`, `/./`, `/../` or ambiguous escape.
#![no_main]
use fleetgate::path_normalize::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    let Ok(normal) = normalize_path(path) else { return };
    let n: &str = &normal;
    assert!(n.starts_with('/') || path.is_empty() || !path.starts_with('/'), "{path:?} -> {n:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!n.contains(bad), "{path:?} -> {n:?}");
    }
    assert!(!n.ends_with("/.") && !n.ends_with("/.."), "{path:?} -> {n:?}");
    let lower = n.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c") && !n.contains('\\'), "{path:?} -> {n:?}");
    let again = normalize_path(n).expect("a normal form is accepted");
    assert_eq!(&*again, n, "normalising twice changes {path:?}");
});
