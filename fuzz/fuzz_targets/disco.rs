//! Disco classification and message parsing never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = proto::disco::classify(data);
    let _ = proto::disco::Message::parse(data);
    let _ = proto::disco::sender_key(data);
});
