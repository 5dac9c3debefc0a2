//! The HuJSON policy parser rejects anything malformed with an error, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = control::policy::Policy::parse(text) {
            let _ = p.run_tests(&[], &[]);
        }
    }
});
