//! The DERP frame decoder never panics on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut d = proto::derp::FrameDecoder::new();
    d.push(data);
    for _ in 0..1024 {
        match d.next_frame() {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
});
