//! The configuration loader: any text either parses or gives a located error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match fleetgate_config::parse(text, "fuzz.yaml") {
        Ok(_) => {}
        // Every error names the file.
        Err(e) => assert!(e.to_string().contains("fuzz.yaml"), "{e}"),
    }
});
