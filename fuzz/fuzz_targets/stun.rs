//! STUN request and response parsers never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = proto::stun::parse_binding_request(data);
    let _ = proto::stun::parse_binding_response(data);
});
