//! IP/TCP/UDP/ICMP header views never panic on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dataplane::packet::PacketInfo::parse(data);
});
