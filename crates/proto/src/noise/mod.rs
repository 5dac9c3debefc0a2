//! ts2021, Tailscale's control transport: a Noise IK handshake followed by a record layer with
//! big-endian nonces, an optional early payload, then HTTP/2 (h2c, prior knowledge).
//!
//! Layers, bottom up, all sans-IO except [`stream`]:
//!
//! - [`handshake`]: `Noise_IK_25519_ChaChaPoly_BLAKE2s` with prologue
//!   `"Tailscale Control Protocol v<version>"`. The client builds the 101-byte initiation
//!   ([`ClientHandshake::start`]) and consumes the 51-byte response; the server
//!   ([`handshake::accept`]) learns the client's machine key and version. Both yield a
//!   [`Transport`].
//! - [`transport`]: [`Sealer`] and [`Opener`] for `0x04 | u16 BE len | ciphertext` records.
//! - [`early`]: the `FF FF FF 'T' 'S'` early payload carrying the node-key challenge.
//! - [`stream`] (feature `tokio`): `NoiseStream`, an `AsyncRead + AsyncWrite` over any tokio
//!   I/O object, plus `server_accept` and `client_finish`, for hyper's HTTP/2 on both sides.
//!
//! The protocol notes live in `docs/design/ts2021.md`.

pub mod early;
pub mod handshake;
mod symmetric;
pub mod transport;

#[cfg(feature = "tokio")]
pub mod stream;

pub use early::{EarlyError, EarlyParse, EarlyPayload};
pub use handshake::{Accepted, ClientHandshake, HandshakeError};
pub use symmetric::{PROTOCOL_NAME, TAG_LEN};
pub use transport::{Opener, Sealer, Transport, TransportError};

#[cfg(feature = "tokio")]
pub use stream::{NoiseStream, StreamError, client_finish, server_accept};
