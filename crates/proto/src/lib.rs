//! Wire types and codecs shared by the agent and the control server.
//!
//! Everything here is sans-IO: functions take bytes (and, where time matters, `now`) and
//! return bytes or parsed values. Nothing reads a clock, opens a socket or spawns a task. The
//! optional `tokio` feature adds thin async adapters (the ts2021 Noise stream) for the shells.
//!
//! - [`keys`]: machine, node, disco and challenge keys with their `mkey:`/`nodekey:`/… text forms.
//! - [`noise`]: ts2021, the Noise IK handshake and the big-endian-nonce record layer.
//! - [`tailcfg`]: the control protocol's JSON types, exact on the wire.
//! - [`mapframe`]: the map stream's `u32 LE length + zstd(JSON)` framing.
//! - [`derp`]: DERP frame codec and handshake messages.
//! - [`stun`]: the STUN Binding subset Tailscale uses.
//! - [`disco`]: disco messages (ping, pong, call-me-maybe) sealed with NaCl box, and the
//!   demultiplexing of one UDP socket into STUN, disco and WireGuard.

pub mod derp;
pub mod disco;
pub mod keys;
pub mod mapframe;
pub mod netmap;
pub mod noise;
pub mod stun;
pub mod tailcfg;
