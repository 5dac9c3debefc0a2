//! The control protocol's request and response JSON is rejected cleanly when malformed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<proto::tailcfg::RegisterRequest>(data);
    let _ = serde_json::from_slice::<proto::tailcfg::MapRequest>(data);
    if let Ok(resp) = serde_json::from_slice::<proto::tailcfg::MapResponse>(data) {
        let mut nm = proto::netmap::NetMap::default();
        let _ = nm.apply(resp, chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
    }
});
