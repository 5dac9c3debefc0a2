//! The ts2021 Noise IK handshake, sans-IO, for both the client (initiator) and the control
//! server (responder).
//!
//! Client: [`ClientHandshake::start`] returns the 101-byte initiation (sent base64 in the
//! `X-Tailscale-Handshake` header of `POST /ts2021`). Read the server's reply until
//! [`server_reply_len`] says the frame is whole, then [`ClientHandshake::finish`] yields a
//! [`Transport`] (or the server's 0x03 error text as [`HandshakeError::ServerRefused`]).
//!
//! Server: [`accept`] takes the initiation and returns an [`Accepted`] with the client's machine
//! key, its protocol version, the 51-byte response to write and a [`Transport`]. When `accept`
//! fails, [`HandshakeError::client_hint`] gives the text that Tailscale's server sends back in a
//! 0x03 error frame (see [`encode_error_frame`]) for malformed initiations.
//!
//! The handshake is hand-rolled on blake2/hmac/chacha20poly1305/x25519-dalek rather than run
//! through `snow`: the framing and its error cases are Tailscale-specific, the transport must use
//! big-endian nonces (so snow's transport mode is unusable anyway), and a direct implementation
//! gives typed errors, owned state types that cannot be reused, and no heap allocation. The
//! tests cross-check every byte against `snow` as an independent Noise implementation.

use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;

use super::symmetric::{SymmetricState, TAG_LEN};
use super::transport::Transport;
use crate::keys::{MachinePrivate, MachinePublic};

/// The prologue is this prefix followed by the decimal protocol version.
pub const PROLOGUE_PREFIX: &str = "Tailscale Control Protocol v";

/// Message type of the client's handshake initiation.
pub const MSG_TYPE_INITIATION: u8 = 0x01;
/// Message type of the server's handshake response.
pub const MSG_TYPE_RESPONSE: u8 = 0x02;
/// Message type of an unauthenticated, human-readable error from the server.
pub const MSG_TYPE_ERROR: u8 = 0x03;
/// Message type of a transport record.
pub const MSG_TYPE_RECORD: u8 = 0x04;

/// Header of the initiation: u16 BE version, type, u16 BE payload length.
pub const INITIATION_HEADER_LEN: usize = 5;
/// Payload of the initiation: ephemeral key, sealed machine key, tag.
pub const INITIATION_PAYLOAD_LEN: usize = 32 + 32 + TAG_LEN + TAG_LEN;
/// The whole initiation message.
pub const INITIATION_LEN: usize = INITIATION_HEADER_LEN + INITIATION_PAYLOAD_LEN;
/// Header of every server→client frame: type, u16 BE length.
pub const HEADER_LEN: usize = 3;
/// Payload of the response: the server's ephemeral key and a tag.
pub const RESPONSE_PAYLOAD_LEN: usize = 32 + TAG_LEN;
/// The whole response message.
pub const RESPONSE_LEN: usize = HEADER_LEN + RESPONSE_PAYLOAD_LEN;

/// The lowest protocol (capability) version [`accept`] lets through. Version 39 is Tailscale's
/// `NoiseCapabilityVersion`, the first that speaks ts2021; control servers usually enforce a
/// higher floor with [`accept_with_min_version`].
pub const MIN_PROTOCOL_VERSION: u16 = 39;

/// Why a ts2021 handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The initiation is not exactly 101 bytes.
    #[error("wrong handshake initiation size: got {got} bytes, want {INITIATION_LEN}")]
    WrongInitiationSize { got: usize },
    /// A handshake frame carries a type other than the one expected at this point.
    #[error("unexpected handshake message type {got}, want {want}")]
    UnexpectedMessageType { got: u8, want: u8 },
    /// The initiation's length field is not 96.
    #[error("wrong handshake initiation length {got}, want {INITIATION_PAYLOAD_LEN}")]
    WrongInitiationLength { got: usize },
    /// The client speaks a protocol version below the server's floor.
    #[error("unsupported protocol version {version}; this server needs at least {min}")]
    UnsupportedVersion { version: u16, min: u16 },
    /// The response's length field is not 48.
    #[error("wrong length {got} received for handshake response, want {RESPONSE_PAYLOAD_LEN}")]
    WrongResponseLength { got: usize },
    /// The reply frame given to [`ClientHandshake::finish`] is shorter or longer than its header
    /// says.
    #[error("handshake reply frame is {got} bytes but its header says {want}")]
    WrongReplySize { got: usize, want: usize },
    /// The server sent a 0x03 error frame instead of a response (unauthenticated; a hint only).
    #[error("control server refused the handshake: {0:?}")]
    ServerRefused(String),
    /// An AEAD check failed: the peer used different keys (e.g. a stale server key) or the
    /// message was corrupted.
    #[error("handshake authentication failed while {stage} (wrong server key or corrupt message)")]
    Decrypt { stage: &'static str },
    /// A Diffie-Hellman step produced the all-zero secret: the peer sent a low-order key.
    #[error("peer sent an invalid (low-order) public key; Diffie-Hellman failed while {stage}")]
    WeakKey { stage: &'static str },
    /// The AEAD refused to seal (cannot happen for handshake-sized inputs).
    #[error("internal error sealing a handshake message")]
    Crypto,
}

impl HandshakeError {
    /// The text Tailscale's server returns in a 0x03 error frame for this failure, if it sends
    /// one at all. It deliberately echoes nothing the client sent.
    pub fn client_hint(&self) -> Option<&'static str> {
        match self {
            Self::WrongInitiationSize { .. } => Some("wrong handshake initiation size"),
            Self::UnexpectedMessageType { .. } => Some("unexpected handshake message type"),
            Self::WrongInitiationLength { .. } => Some("wrong handshake initiation length"),
            Self::UnsupportedVersion { .. } => Some("unsupported protocol version"),
            _ => None,
        }
    }
}

/// The prologue for `version`: `"Tailscale Control Protocol v130"`.
pub fn prologue(version: u16) -> String {
    format!("{PROLOGUE_PREFIX}{version}")
}

/// Appends a 0x03 error frame carrying `text` (truncated to 65535 bytes) to `out`.
pub fn encode_error_frame(text: &str, out: &mut Vec<u8>) {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let body = text.as_bytes().get(..end).unwrap_or_default();
    out.push(MSG_TYPE_ERROR);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// Given the first bytes the server sent after the upgrade, the total length of its reply frame
/// (51 for a response, 3 + n for an error frame), or `None` until the 3-byte header is there.
/// A response with a wrong length or any other type is an error right away, so a client never
/// waits for a bogus 64 KiB frame.
pub fn server_reply_len(received: &[u8]) -> Result<Option<usize>, HandshakeError> {
    let Some(&[ty, hi, lo]) = received.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    match ty {
        MSG_TYPE_RESPONSE if len != RESPONSE_PAYLOAD_LEN => {
            Err(HandshakeError::WrongResponseLength { got: len })
        }
        MSG_TYPE_RESPONSE | MSG_TYPE_ERROR => Ok(Some(HEADER_LEN + len)),
        got => Err(HandshakeError::UnexpectedMessageType {
            got,
            want: MSG_TYPE_RESPONSE,
        }),
    }
}

/// A client handshake waiting for the server's response. Consumed by [`Self::finish`], so it
/// cannot be completed twice. Secrets are wiped on drop and never shown by `Debug`.
pub struct ClientHandshake {
    state: SymmetricState,
    machine: StaticSecret,
    ephemeral: StaticSecret,
    server: MachinePublic,
    version: u16,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("server", &self.server)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// Starts a handshake as `machine` towards the control server `server` at protocol
    /// `version` (the capability version, e.g. 130). Returns the state to keep and the 101-byte
    /// initiation message to send.
    pub fn start(
        machine: &MachinePrivate,
        server: &MachinePublic,
        version: u16,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, [u8; INITIATION_LEN]), HandshakeError> {
        let mut s = SymmetricState::new();
        s.mix_hash(prologue(version).as_bytes());
        s.mix_hash(server.as_bytes()); // pre-message `<- s`

        let ephemeral = MachinePrivate::generate(rng).to_static_secret();
        let ephemeral_pub = x25519_dalek::PublicKey::from(&ephemeral);
        let machine_secret = machine.to_static_secret();

        let mut msg = [0u8; INITIATION_LEN];
        msg[..2].copy_from_slice(&version.to_be_bytes());
        msg[2] = MSG_TYPE_INITIATION;
        msg[3..5].copy_from_slice(&(INITIATION_PAYLOAD_LEN as u16).to_be_bytes());
        let (_, body) = msg.split_at_mut(INITIATION_HEADER_LEN);
        let (e_field, rest) = body.split_at_mut(32);
        let (s_field, rest) = rest.split_at_mut(32);
        let (s_tag_field, tag_field) = rest.split_at_mut(TAG_LEN);

        // -> e
        e_field.copy_from_slice(ephemeral_pub.as_bytes());
        s.mix_hash(ephemeral_pub.as_bytes());
        // es, then s (the sealed machine key)
        let k = s.mix_dh(&ephemeral, server.as_bytes(), "computing es")?;
        s_field.copy_from_slice(machine.public().as_bytes());
        s_tag_field.copy_from_slice(&s.encrypt_and_hash(k, s_field)?);
        // ss, then the tag over the empty payload
        let k = s.mix_dh(&machine_secret, server.as_bytes(), "computing ss")?;
        tag_field.copy_from_slice(&s.encrypt_and_hash(k, &mut [])?);

        let hs = Self {
            state: s,
            machine: machine_secret,
            ephemeral,
            server: *server,
            version,
        };
        Ok((hs, msg))
    }

    /// The protocol version this handshake announced.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The server key this handshake is addressed to.
    pub fn server_key(&self) -> MachinePublic {
        self.server
    }

    /// Completes the handshake with the server's whole reply frame (its length comes from
    /// [`server_reply_len`]). A 0x03 error frame becomes [`HandshakeError::ServerRefused`].
    pub fn finish(self, frame: &[u8]) -> Result<Transport, HandshakeError> {
        let Self {
            state: mut s,
            machine,
            ephemeral,
            server,
            version,
        } = self;
        let want = server_reply_len(frame)?.unwrap_or(HEADER_LEN);
        if frame.len() != want {
            return Err(HandshakeError::WrongReplySize {
                got: frame.len(),
                want,
            });
        }
        let (ty, payload) = match frame {
            [ty, _, _, payload @ ..] => (*ty, payload),
            _ => {
                return Err(HandshakeError::WrongReplySize {
                    got: frame.len(),
                    want,
                });
            }
        };
        if ty == MSG_TYPE_ERROR {
            return Err(HandshakeError::ServerRefused(
                String::from_utf8_lossy(payload).into(),
            ));
        }
        let Ok(payload) = <&[u8; RESPONSE_PAYLOAD_LEN]>::try_from(payload) else {
            return Err(HandshakeError::WrongResponseLength { got: payload.len() });
        };
        let (e_srv, tag) = split_response(payload);

        // <- e, ee, se
        s.mix_hash(&e_srv);
        // ee only feeds the chaining key; its cipher key is never used.
        drop(s.mix_dh(&ephemeral, &e_srv, "computing ee")?);
        let k = s.mix_dh(&machine, &e_srv, "computing se")?;
        s.decrypt_and_hash(k, &mut [], &tag, "decrypting the response tag")?;

        let hash = s.handshake_hash();
        let (c2s, s2c) = s.split();
        Ok(Transport::new(c2s, s2c, server, version, hash))
    }
}

/// Splits a response payload into the server's ephemeral key and the tag.
fn split_response(p: &[u8; RESPONSE_PAYLOAD_LEN]) -> ([u8; 32], [u8; TAG_LEN]) {
    let mut e = [0u8; 32];
    let mut tag = [0u8; TAG_LEN];
    e.copy_from_slice(&p[..32]);
    tag.copy_from_slice(&p[32..]);
    (e, tag)
}

/// A server-side handshake that succeeded.
#[derive(Debug)]
pub struct Accepted {
    /// The client's machine key, authenticated by the handshake: the session's identity.
    pub client: MachinePublic,
    /// The protocol (capability) version from the initiation header.
    pub version: u16,
    /// The 51-byte response to write to the client, ahead of any transport record.
    pub response: [u8; RESPONSE_LEN],
    /// The record layer (tx = server→client, rx = client→server).
    pub transport: Transport,
}

/// Server side: processes a client's 101-byte initiation with the server's Noise key, refusing
/// versions below [`MIN_PROTOCOL_VERSION`].
pub fn accept(
    server: &MachinePrivate,
    init: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Accepted, HandshakeError> {
    accept_with_min_version(server, init, MIN_PROTOCOL_VERSION, rng)
}

/// Like [`accept`], refusing protocol versions below `min_version`.
pub fn accept_with_min_version(
    server: &MachinePrivate,
    init: &[u8],
    min_version: u16,
    rng: &mut impl CryptoRngCore,
) -> Result<Accepted, HandshakeError> {
    let Ok(init) = <&[u8; INITIATION_LEN]>::try_from(init) else {
        return Err(HandshakeError::WrongInitiationSize { got: init.len() });
    };
    // `init` is a fixed-size array from here on, so the constant indices below cannot fail.
    let version = u16::from_be_bytes([init[0], init[1]]);
    if init[2] != MSG_TYPE_INITIATION {
        return Err(HandshakeError::UnexpectedMessageType {
            got: init[2],
            want: MSG_TYPE_INITIATION,
        });
    }
    let len = usize::from(u16::from_be_bytes([init[3], init[4]]));
    if len != INITIATION_PAYLOAD_LEN {
        return Err(HandshakeError::WrongInitiationLength { got: len });
    }
    if version < min_version {
        return Err(HandshakeError::UnsupportedVersion {
            version,
            min: min_version,
        });
    }
    let mut e_cli = [0u8; 32];
    let mut machine_key = [0u8; 32];
    let mut machine_tag = [0u8; TAG_LEN];
    let mut tag = [0u8; TAG_LEN];
    e_cli.copy_from_slice(&init[5..37]);
    machine_key.copy_from_slice(&init[37..69]);
    machine_tag.copy_from_slice(&init[69..85]);
    tag.copy_from_slice(&init[85..101]);

    let server_secret = server.to_static_secret();
    let mut s = SymmetricState::new();
    s.mix_hash(prologue(version).as_bytes());
    s.mix_hash(server.public().as_bytes());

    // -> e, es, s, ss
    s.mix_hash(&e_cli);
    let k = s.mix_dh(&server_secret, &e_cli, "computing es")?;
    s.decrypt_and_hash(
        k,
        &mut machine_key,
        &machine_tag,
        "decrypting the machine key",
    )?;
    let k = s.mix_dh(&server_secret, &machine_key, "computing ss")?;
    s.decrypt_and_hash(k, &mut [], &tag, "decrypting the initiation tag")?;

    // <- e, ee, se
    let ephemeral = MachinePrivate::generate(rng).to_static_secret();
    let e_srv = *x25519_dalek::PublicKey::from(&ephemeral).as_bytes();
    s.mix_hash(&e_srv);
    drop(s.mix_dh(&ephemeral, &e_cli, "computing ee")?);
    let k = s.mix_dh(&ephemeral, &machine_key, "computing se")?;
    let resp_tag = s.encrypt_and_hash(k, &mut [])?;

    let mut response = [0u8; RESPONSE_LEN];
    response[0] = MSG_TYPE_RESPONSE;
    response[1..3].copy_from_slice(&(RESPONSE_PAYLOAD_LEN as u16).to_be_bytes());
    response[3..35].copy_from_slice(&e_srv);
    response[35..].copy_from_slice(&resp_tag);

    let client = MachinePublic::from_bytes(machine_key);
    let hash = s.handshake_hash();
    let (c2s, s2c) = s.split();
    Ok(Accepted {
        client,
        version,
        response,
        transport: Transport::new(s2c, c2s, client, version, hash),
    })
}

#[cfg(test)]
mod tests {
    use chacha20poly1305::aead::Aead;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
    use rand_core::OsRng;

    use super::*;
    use crate::noise::transport::nonce;

    const V: u16 = 130;

    fn keys() -> (MachinePrivate, MachinePrivate) {
        (
            MachinePrivate::generate(&mut OsRng),
            MachinePrivate::generate(&mut OsRng),
        )
    }

    /// Sends one record each way and checks that it arrives intact.
    fn exchange(client: &mut Transport, server: &mut Transport) {
        let mut wire = Vec::new();
        client
            .sealer_mut()
            .seal(b"ping from client", &mut wire)
            .unwrap();
        server.opener_mut().feed(&wire);
        let mut buf = [0u8; 64];
        let n = server.opener_mut().read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping from client");

        wire.clear();
        server
            .sealer_mut()
            .seal(b"pong from server", &mut wire)
            .unwrap();
        client.opener_mut().feed(&wire);
        let n = client.opener_mut().read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong from server");
    }

    #[test]
    fn client_server_round_trip() {
        let (machine, server) = keys();
        let (hs, init) = ClientHandshake::start(&machine, &server.public(), V, &mut OsRng).unwrap();
        assert_eq!(init.len(), 101);
        assert_eq!(
            init[..5],
            [0x00, 0x82, 0x01, 0x00, 0x60],
            "v130, initiation, length 96"
        );

        let mut acc = accept(&server, &init, &mut OsRng).unwrap();
        assert_eq!(acc.client, machine.public());
        assert_eq!(acc.version, V);
        assert_eq!(acc.response[..3], [0x02, 0x00, 0x30], "response, length 48");
        assert_eq!(server_reply_len(&acc.response[..3]), Ok(Some(RESPONSE_LEN)));

        let mut client = hs.finish(&acc.response).unwrap();
        assert_eq!(client.peer(), server.public());
        assert_eq!(acc.transport.peer(), machine.public());
        assert_eq!(client.handshake_hash(), acc.transport.handshake_hash());
        exchange(&mut client, &mut acc.transport);
    }

    fn snow_builder() -> snow::Builder<'static> {
        snow::Builder::new(PROTOCOL_NAME_PARAMS.parse().unwrap())
    }
    const PROTOCOL_NAME_PARAMS: &str = crate::noise::PROTOCOL_NAME;

    /// Checks our transport against raw keys: our records must open under the peer's key with
    /// the big-endian nonce, and vice versa.
    fn check_keys(ours: &mut Transport, our_tx: [u8; 32], our_rx: [u8; 32]) {
        let mut wire = Vec::new();
        ours.sealer_mut().seal(b"first", &mut wire).unwrap();
        ours.sealer_mut().seal(b"second", &mut wire).unwrap();
        let tx = ChaCha20Poly1305::new(&our_tx.into());
        let first = tx.decrypt(&nonce(0).into(), &wire[3..3 + 5 + 16]).unwrap();
        let second = tx.decrypt(&nonce(1).into(), &wire[3 + 21 + 3..]).unwrap();
        assert_eq!(
            (first.as_slice(), second.as_slice()),
            (&b"first"[..], &b"second"[..])
        );

        let rx = ChaCha20Poly1305::new(&our_rx.into());
        let ct = rx.encrypt(&nonce(0).into(), &b"hello"[..]).unwrap();
        let mut frame = vec![0x04, 0, ct.len() as u8];
        frame.extend_from_slice(&ct);
        ours.opener_mut().feed(&frame);
        let mut buf = [0u8; 16];
        let n = ours.opener_mut().read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }

    #[test]
    fn our_client_interoperates_with_snow_responder() {
        let (machine, server) = keys();
        let (hs, init) = ClientHandshake::start(&machine, &server.public(), V, &mut OsRng).unwrap();
        let prologue = prologue(V);
        let mut responder = snow_builder()
            .local_private_key(server.as_bytes())
            .unwrap()
            .prologue(prologue.as_bytes())
            .unwrap()
            .build_responder()
            .unwrap();
        let mut payload = [0u8; 64];
        assert_eq!(responder.read_message(&init[5..], &mut payload).unwrap(), 0);
        assert_eq!(
            responder.get_remote_static().unwrap(),
            machine.public().as_bytes()
        );
        let mut msg2 = [0u8; 48];
        assert_eq!(responder.write_message(&[], &mut msg2).unwrap(), 48);
        let mut response = vec![0x02, 0x00, 0x30];
        response.extend_from_slice(&msg2);

        let mut client = hs.finish(&response).unwrap();
        assert_eq!(client.handshake_hash(), responder.get_handshake_hash());
        let (k1, k2) = responder.dangerously_get_raw_split();
        // Client tx = split #1, rx = split #2.
        check_keys(&mut client, k1, k2);
    }

    #[test]
    fn our_server_interoperates_with_snow_initiator() {
        let (machine, server) = keys();
        let prologue = prologue(V);
        let server_pub = server.public();
        let mut initiator = snow_builder()
            .local_private_key(machine.as_bytes())
            .unwrap()
            .remote_public_key(server_pub.as_bytes())
            .unwrap()
            .prologue(prologue.as_bytes())
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut init = vec![0x00, 0x82, 0x01, 0x00, 0x60];
        let mut msg1 = [0u8; 96];
        assert_eq!(initiator.write_message(&[], &mut msg1).unwrap(), 96);
        init.extend_from_slice(&msg1);

        let mut acc = accept(&server, &init, &mut OsRng).unwrap();
        assert_eq!(acc.client, machine.public());
        let mut payload = [0u8; 64];
        assert_eq!(
            initiator
                .read_message(&acc.response[3..], &mut payload)
                .unwrap(),
            0
        );
        assert_eq!(
            acc.transport.handshake_hash(),
            initiator.get_handshake_hash()
        );
        let (k1, k2) = initiator.dangerously_get_raw_split();
        // Server tx = split #2, rx = split #1.
        check_keys(&mut acc.transport, k2, k1);
    }

    #[test]
    fn malformed_initiations_get_clear_errors() {
        let (machine, server) = keys();
        let (_, init) = ClientHandshake::start(&machine, &server.public(), V, &mut OsRng).unwrap();

        let err = accept(&server, &init[..100], &mut OsRng).unwrap_err();
        assert_eq!(err, HandshakeError::WrongInitiationSize { got: 100 });
        assert_eq!(err.client_hint(), Some("wrong handshake initiation size"));
        assert!(err.to_string().contains("wrong handshake initiation size"));

        let mut bad = init;
        bad[2] = 0x02;
        let err = accept(&server, &bad, &mut OsRng).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnexpectedMessageType { got: 2, want: 1 }
        );
        assert_eq!(err.client_hint(), Some("unexpected handshake message type"));

        let mut bad = init;
        bad[4] = 95;
        let err = accept(&server, &bad, &mut OsRng).unwrap_err();
        assert_eq!(err, HandshakeError::WrongInitiationLength { got: 95 });
        assert_eq!(err.client_hint(), Some("wrong handshake initiation length"));

        let (_, old) = ClientHandshake::start(&machine, &server.public(), 1, &mut OsRng).unwrap();
        let err = accept(&server, &old, &mut OsRng).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnsupportedVersion {
                version: 1,
                min: MIN_PROTOCOL_VERSION
            }
        );
        let err = accept_with_min_version(&server, &init, 131, &mut OsRng).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnsupportedVersion {
                version: V,
                min: 131
            }
        );
    }

    #[test]
    fn tampering_and_wrong_keys_fail_authentication() {
        let (machine, server) = keys();
        let (_, init) = ClientHandshake::start(&machine, &server.public(), V, &mut OsRng).unwrap();

        // The prologue binds the version in the clear header.
        let mut bumped = init;
        bumped[1] = 0x83;
        let err = accept(&server, &bumped, &mut OsRng).unwrap_err();
        assert!(matches!(err, HandshakeError::Decrypt { .. }), "{err}");
        assert_eq!(err.client_hint(), None);

        let other = MachinePrivate::generate(&mut OsRng);
        let err = accept(&other, &init, &mut OsRng).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::Decrypt {
                stage: "decrypting the machine key"
            }
        );

        for i in 5..101 {
            let mut t = init;
            t[i] ^= 0x01;
            assert!(
                accept(&server, &t, &mut OsRng).is_err(),
                "flipped byte {i} accepted"
            );
        }

        // A low-order (all-zero) ephemeral key is refused, not turned into a zero secret.
        let mut zero_e = init;
        zero_e[5..37].fill(0);
        let err = accept(&server, &zero_e, &mut OsRng).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::WeakKey {
                stage: "computing es"
            }
        );
    }

    #[test]
    fn bad_responses_are_rejected() {
        let (machine, server) = keys();
        let start = || ClientHandshake::start(&machine, &server.public(), V, &mut OsRng).unwrap();

        let (hs, init) = start();
        let acc = accept(&server, &init, &mut OsRng).unwrap();
        let mut tampered = acc.response;
        tampered[40] ^= 0x80;
        assert_eq!(
            hs.finish(&tampered).unwrap_err(),
            HandshakeError::Decrypt {
                stage: "decrypting the response tag"
            }
        );

        // A response meant for another handshake does not authenticate.
        let (hs, _) = start();
        assert!(matches!(
            hs.finish(&acc.response),
            Err(HandshakeError::Decrypt { .. })
        ));

        let (hs, _) = start();
        let mut frame = Vec::new();
        encode_error_frame("wrong handshake initiation size", &mut frame);
        assert_eq!(server_reply_len(&frame[..3]), Ok(Some(frame.len())));
        let err = hs.finish(&frame).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::ServerRefused("wrong handshake initiation size".into())
        );
        assert!(err.to_string().contains("wrong handshake initiation size"));

        assert_eq!(server_reply_len(&[0x02, 0x00]), Ok(None));
        assert_eq!(
            server_reply_len(&[0x02, 0x00, 0x2f]),
            Err(HandshakeError::WrongResponseLength { got: 47 })
        );
        assert_eq!(
            server_reply_len(&[0x04, 0x00, 0x30]),
            Err(HandshakeError::UnexpectedMessageType { got: 4, want: 2 })
        );
        let (hs, _) = start();
        assert_eq!(
            hs.finish(&acc.response[..50]).unwrap_err(),
            HandshakeError::WrongReplySize { got: 50, want: 51 }
        );
        let (hs, _) = start();
        assert!(hs.finish(&[]).is_err());
    }

    #[test]
    fn garbage_initiations_never_panic() {
        let server = MachinePrivate::generate(&mut OsRng);
        let mut seed = 0x1234_5678_u32;
        for len in 0..=202 {
            let mut msg: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            assert!(accept(&server, &msg, &mut OsRng).is_err());
            if msg.len() == INITIATION_LEN {
                // A well-formed header with a garbage body gets to the crypto and fails there.
                msg[..5].copy_from_slice(&[0x00, 0x82, 0x01, 0x00, 0x60]);
                assert!(accept(&server, &msg, &mut OsRng).is_err());
            }
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let (machine, server) = keys();
        let (hs, _) = ClientHandshake::start(&machine, &server.public(), V, &mut OsRng).unwrap();
        let dbg = format!("{hs:?}");
        assert!(!dbg.contains(&hex::encode(machine.as_bytes())));
        assert!(dbg.contains("version: 130"));
    }
}
