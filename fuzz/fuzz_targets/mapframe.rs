//! The map stream decoder never panics or over-allocates on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut d = proto::mapframe::MapFrameDecoder::with_limits(1 << 20, 4 << 20);
    d.feed(data);
    while let Ok(Some(_)) = d.next_message() {}
});
