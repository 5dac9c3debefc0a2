//! The sans-IO DERP client: handshake (ServerKey → ClientInfo → ServerInfo), sending packets and
//! decoding what the server sends.
//!
//! Drive it like this, after the HTTP upgrade (see [`super::dial`] for a tokio shell):
//!
//! 1. [`Client::handle_input`] with every chunk read from the server (including bytes that
//!    arrived together with the HTTP 101 response).
//! 2. [`Client::poll_transmit`] until `None`, writing each batch to the server. The ClientInfo
//!    frame appears here as soon as the ServerKey frame has been read; automatic Pongs too.
//! 3. [`Client::poll_event`] until `None`: [`ClientEvent::Connected`] once the ServerInfo box
//!    opened, then packets, PeerGone notices, keepalives, …
//!
//! Commands ([`Client::send_packet`], [`Client::note_preferred`], [`Client::send_ping`]) queue
//! bytes for `poll_transmit`. Packets may be sent as soon as ClientInfo is queued, as the Go
//! client does; the server processes frames in order.
//!
//! The client keeps no timers: the caller should treat 120 s without any received frame as a
//! dead connection (the server sends KeepAlive every 60–65 s).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use proto::derp::{
    ClientInfo, DerpError, Frame, FrameDecoder, FrameType, MAX_PACKET_SIZE, PeerGoneReason,
    ServerInfo,
};
use proto::keys::{NodePrivate, NodePublic};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Settings for a [`Client`].
#[derive(Clone)]
pub struct ClientConfig {
    /// The node's private key; its public half is the DERP address.
    pub private_key: NodePrivate,
    /// What to tell the server (defaults to `{"version":2,"CanAckPings":true}`).
    pub info: ClientInfo,
    /// If set, the ServerKey frame must carry exactly this key.
    pub expected_server_key: Option<NodePublic>,
    /// Seed for box nonces; 32 bytes from the OS RNG in production.
    pub rng_seed: [u8; 32],
}

impl ClientConfig {
    /// Default settings for `private_key`.
    pub fn new(private_key: NodePrivate, rng_seed: [u8; 32]) -> Self {
        Self {
            private_key,
            info: ClientInfo::default(),
            expected_server_key: None,
            rng_seed,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("public_key", &self.private_key.public())
            .field("info", &self.info)
            .field("expected_server_key", &self.expected_server_key)
            .finish_non_exhaustive()
    }
}

/// Something the server told us.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The handshake completed: the ServerInfo box opened with the server's key.
    Connected {
        server_key: NodePublic,
        info: ServerInfo,
    },
    /// A packet relayed from `src`.
    Packet { src: NodePublic, packet: Vec<u8> },
    /// `peer` left the relay (or was never there, for `NOT_HERE`).
    PeerGone {
        peer: NodePublic,
        reason: PeerGoneReason,
    },
    /// Mesh watchers only: `key` is connected.
    PeerPresent {
        key: NodePublic,
        addr: Option<SocketAddr>,
        flags: Option<u8>,
    },
    /// Server keepalive.
    KeepAlive,
    /// The server pinged us; a Pong has already been queued if `CanAckPings` is set.
    Ping { data: [u8; 8] },
    /// Answer to one of our Pings.
    Pong { data: [u8; 8] },
    /// Server health; empty means healthy.
    Health { problem: String },
    /// The server is restarting.
    Restarting {
        reconnect_in: Duration,
        try_for: Duration,
    },
}

/// Why the DERP session failed. After any of these, close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server sent bytes that are not valid DERP.
    #[error("DERP protocol violation by the server: {0}")]
    Protocol(#[from] DerpError),
    /// The server presented a different key than the one we expected.
    #[error("DERP server key is {got}, expected {expected}")]
    ServerKeyMismatch {
        expected: NodePublic,
        got: NodePublic,
    },
    /// A packet or frame cannot be sent yet (no ServerKey received).
    #[error("DERP handshake has not started yet; wait for the server key")]
    NotReady,
    /// The packet is larger than DERP allows.
    #[error("packet of {len} bytes is larger than the DERP limit of {max}")]
    PacketTooLarge { len: usize, max: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitServerKey,
    AwaitServerInfo,
    Connected,
}

/// The sans-IO DERP client. See the module documentation for the driving contract.
pub struct Client {
    private_key: NodePrivate,
    public_key: NodePublic,
    info: ClientInfo,
    expected_server_key: Option<NodePublic>,
    rng: StdRng,
    decoder: FrameDecoder,
    state: State,
    server_key: Option<NodePublic>,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("public_key", &self.public_key)
            .field("state", &self.state)
            .field("server_key", &self.server_key)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client waiting for the server's ServerKey frame.
    pub fn new(config: ClientConfig) -> Self {
        let public_key = config.private_key.public();
        Self {
            private_key: config.private_key,
            public_key,
            info: config.info,
            expected_server_key: config.expected_server_key,
            rng: StdRng::from_seed(config.rng_seed),
            decoder: FrameDecoder::new(),
            state: State::AwaitServerKey,
            server_key: None,
            out: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// Our node key (the DERP address peers send to).
    pub fn public_key(&self) -> NodePublic {
        self.public_key
    }

    /// The server's key, once its ServerKey frame has been read.
    pub fn server_key(&self) -> Option<NodePublic> {
        self.server_key
    }

    /// Whether the ServerInfo box has been opened.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Processes bytes read from the server.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.decoder.push(bytes);
        while let Some(raw) = self.decoder.next_raw()? {
            match self.state {
                State::AwaitServerKey => {
                    if raw.frame_type != FrameType::SERVER_KEY {
                        return Err(DerpError::UnexpectedFrame {
                            want: FrameType::SERVER_KEY,
                            got: raw.frame_type,
                        }
                        .into());
                    }
                    let Frame::ServerKey { key } = raw.parse()? else {
                        return Err(DerpError::BadMagic.into());
                    };
                    if let Some(expected) = self.expected_server_key
                        && expected != key
                    {
                        return Err(ClientError::ServerKeyMismatch { expected, got: key });
                    }
                    let frame = self.info.seal(&self.private_key, &key, &mut self.rng)?;
                    frame.encode(&mut self.out)?;
                    self.server_key = Some(key);
                    self.state = State::AwaitServerInfo;
                }
                State::AwaitServerInfo | State::Connected => {
                    self.handle_frame(raw.frame_type, &raw.payload)?
                }
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame_type: FrameType, payload: &[u8]) -> Result<(), ClientError> {
        let frame = match Frame::parse(frame_type, payload) {
            Ok(f) => f,
            Err(err) if frame_type == FrameType::SERVER_INFO => return Err(err.into()),
            Err(err) => {
                // The Go client drops malformed frames and keeps reading; so do we.
                tracing::debug!(%err, "derp client: dropping malformed frame");
                return Ok(());
            }
        };
        let event = match frame {
            Frame::ServerInfo { sealed } => {
                let Some(server_key) = self.server_key else {
                    return Err(ClientError::NotReady);
                };
                let info = ServerInfo::open(&self.private_key, &server_key, &sealed)?;
                self.state = State::Connected;
                ClientEvent::Connected { server_key, info }
            }
            Frame::RecvPacket { src, packet } => ClientEvent::Packet { src, packet },
            Frame::PeerGone { peer, reason } => ClientEvent::PeerGone { peer, reason },
            Frame::PeerPresent { key, addr, flags } => {
                ClientEvent::PeerPresent { key, addr, flags }
            }
            Frame::KeepAlive => ClientEvent::KeepAlive,
            Frame::Ping { data } => {
                if self.info.can_ack_pings {
                    Frame::Pong { data }.encode(&mut self.out)?;
                }
                ClientEvent::Ping { data }
            }
            Frame::Pong { data } => ClientEvent::Pong { data },
            Frame::Health { problem } => ClientEvent::Health { problem },
            Frame::Restarting {
                reconnect_in,
                try_for,
            } => ClientEvent::Restarting {
                reconnect_in,
                try_for,
            },
            // A late ServerKey (fast start) and unknown or client-to-server types are skipped.
            _ => return Ok(()),
        };
        self.events.push_back(event);
        Ok(())
    }

    /// Queues a packet for `dst`.
    pub fn send_packet(&mut self, dst: NodePublic, packet: &[u8]) -> Result<(), ClientError> {
        if self.state == State::AwaitServerKey {
            return Err(ClientError::NotReady);
        }
        if packet.len() > MAX_PACKET_SIZE {
            return Err(ClientError::PacketTooLarge {
                len: packet.len(),
                max: MAX_PACKET_SIZE,
            });
        }
        Frame::SendPacket {
            dst,
            packet: packet.to_vec(),
        }
        .encode(&mut self.out)?;
        Ok(())
    }

    /// Tells the server whether it is our home relay (statistics only).
    pub fn note_preferred(&mut self, preferred: bool) -> Result<(), ClientError> {
        self.queue_control(Frame::NotePreferred { preferred })
    }

    /// Sends a Ping; the answer arrives as [`ClientEvent::Pong`].
    pub fn send_ping(&mut self, data: [u8; 8]) -> Result<(), ClientError> {
        self.queue_control(Frame::Ping { data })
    }

    /// Answers a server Ping by hand (only needed when `CanAckPings` is off).
    pub fn send_pong(&mut self, data: [u8; 8]) -> Result<(), ClientError> {
        self.queue_control(Frame::Pong { data })
    }

    fn queue_control(&mut self, frame: Frame) -> Result<(), ClientError> {
        if self.state == State::AwaitServerKey {
            return Err(ClientError::NotReady);
        }
        frame.encode(&mut self.out)?;
        Ok(())
    }

    /// Bytes to write to the server, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// The next thing the server told us, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::derp::server::{Server, ServerConfig};

    /// Pumps bytes between a client and a server connection until both are idle.
    fn pump(
        server: &mut Server,
        id: crate::derp::server::ConnId,
        client: &mut Client,
        now: Instant,
    ) {
        loop {
            let mut moved = false;
            while let Some(b) = server.poll_transmit(id) {
                client.handle_input(&b).unwrap();
                moved = true;
            }
            while let Some(b) = client.poll_transmit() {
                server.handle_input(id, &b, now).unwrap();
                moved = true;
            }
            while server.poll_wake().is_some() {}
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn handshake_and_relay_through_sans_io_server() {
        let now = Instant::now();
        let mut server = Server::new(ServerConfig::new(NodePrivate::from_bytes([1; 32]), [0; 32]));
        let mut a = Client::new(ClientConfig::new(NodePrivate::from_bytes([2; 32]), [1; 32]));
        let mut b = Client::new(ClientConfig::new(NodePrivate::from_bytes([3; 32]), [2; 32]));
        assert_eq!(
            a.send_packet(b.public_key(), b"early"),
            Err(ClientError::NotReady)
        );
        let ia = server.accept(now, None);
        let ib = server.accept(now, None);
        pump(&mut server, ia, &mut a, now);
        pump(&mut server, ib, &mut b, now);
        assert!(a.is_connected() && b.is_connected());
        assert_eq!(
            a.poll_event(),
            Some(ClientEvent::Connected {
                server_key: server.public_key(),
                info: ServerInfo::current()
            })
        );
        let _ = b.poll_event();
        a.send_packet(b.public_key(), b"ping?").unwrap();
        pump(&mut server, ia, &mut a, now);
        pump(&mut server, ib, &mut b, now);
        assert_eq!(
            b.poll_event(),
            Some(ClientEvent::Packet {
                src: a.public_key(),
                packet: b"ping?".to_vec()
            })
        );
        a.send_ping(*b"01234567").unwrap();
        pump(&mut server, ia, &mut a, now);
        assert_eq!(
            a.poll_event(),
            Some(ClientEvent::Pong { data: *b"01234567" })
        );
    }

    #[test]
    fn wrong_server_key_is_refused() {
        let mut cfg = ClientConfig::new(NodePrivate::from_bytes([2; 32]), [1; 32]);
        cfg.expected_server_key = Some(NodePublic::from_bytes([9; 32]));
        let mut c = Client::new(cfg);
        let greeting = Frame::ServerKey {
            key: NodePublic::from_bytes([8; 32]),
        }
        .to_bytes()
        .unwrap();
        assert!(matches!(
            c.handle_input(&greeting),
            Err(ClientError::ServerKeyMismatch { .. })
        ));
    }

    #[test]
    fn server_ping_is_answered() {
        let mut c = Client::new(ClientConfig::new(NodePrivate::from_bytes([2; 32]), [1; 32]));
        c.handle_input(
            &Frame::ServerKey {
                key: NodePublic::from_bytes([8; 32]),
            }
            .to_bytes()
            .unwrap(),
        )
        .unwrap();
        let _client_info = c.poll_transmit().unwrap();
        c.handle_input(&Frame::Ping { data: [4; 8] }.to_bytes().unwrap())
            .unwrap();
        assert_eq!(
            c.poll_transmit().unwrap(),
            Frame::Pong { data: [4; 8] }.to_bytes().unwrap()
        );
        assert_eq!(c.poll_event(), Some(ClientEvent::Ping { data: [4; 8] }));
        // Malformed frames after the handshake are dropped, not fatal.
        c.handle_input(&[0x08, 0, 0, 0, 1, 0]).unwrap();
        assert_eq!(c.poll_event(), None);
    }
}
