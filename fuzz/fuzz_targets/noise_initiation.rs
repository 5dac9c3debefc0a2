//! The ts2021 server rejects malformed handshake initiations with an error, never a panic.
#![no_main]

struct Zero;
impl rand_core::RngCore for Zero {
    fn next_u32(&mut self) -> u32 {
        7
    }
    fn next_u64(&mut self) -> u64 {
        7
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(7);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(7);
        Ok(())
    }
}
impl rand_core::CryptoRng for Zero {}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = proto::keys::MachinePrivate::from_bytes([9; 32]);
    let _ = proto::noise::handshake::accept(&key, data, &mut Zero);
});
