//! The sans-IO DERP relay server: connection registry, handshake, packet routing and keepalives.
//!
//! One [`Server`] holds every connection of one relay. It never touches a socket or a clock;
//! the I/O shell ([`super::listener`] when the `derp-server` feature is on) drives it:
//!
//! 1. [`Server::accept`] when a connection has been upgraded to DERP (queues the ServerKey frame).
//! 2. [`Server::handle_input`] with every chunk read from that connection.
//! 3. [`Server::handle_timeout`] when [`Server::poll_timeout`] for that connection is reached.
//! 4. [`Server::poll_transmit`] until `None` for a connection to get the bytes to write to it.
//! 5. [`Server::remove`] when the connection is closed or any call above returned an error.
//!
//! After every mutation drain [`Server::poll_wake`]: it names the connections that have new
//! bytes to write (the destination of a relayed packet, a PeerGone recipient, …) so the shell
//! can wake their writers.
//!
//! Behaviour follows tailscale's `derp/derpserver` (v1.90): a client is registered only after
//! its ClientInfo box opens with the key it claims (an [`Authenticated`] value is the proof, and
//! routing needs one); SendPacket becomes RecvPacket with the source key; each destination has
//! two bounded queues (disco and other, 32 packets each) that drop their oldest packet when full;
//! disco packets to unknown keys earn the sender a rate-limited PeerGone(NotHere); connections
//! that received from a key get PeerGone(Disconnected) when its last connection leaves; with
//! several connections for one key the most recent sender is the one that receives ("last writer
//! is active"); KeepAlive every 60 s plus up to 5 s of per-connection jitter; Ping gets Pong.
//! Regional mesh frames (WatchConns, ForwardPacket, ClosePeer) are not supported and close the
//! connection, as stock derper does for clients without the mesh key.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::derp::{
    ClientInfo, DerpError, Frame, FrameDecoder, FrameType, KEEP_ALIVE, MAX_CLIENT_INFO_LEN,
    MAX_FRAME_LEN, PeerGoneReason, RawFrame, ServerInfo, packet_looks_like_disco,
};
use proto::keys::{NodePrivate, NodePublic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Packets queued per destination connection and per kind (disco / other), as in derper.
pub const DEFAULT_QUEUE_DEPTH: usize = 32;
/// How long a client has to complete the handshake after the ServerKey frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of the random extra delay added to each connection's keepalive interval.
pub const KEEP_ALIVE_JITTER: Duration = Duration::from_secs(5);
/// Control frames (PeerGone, handshake) buffered per connection before new ones are dropped.
const MAX_CONTROL_FRAMES: usize = 4096;
/// Stop filling one `poll_transmit` batch past this many bytes; the caller polls again.
const TRANSMIT_BATCH_BYTES: usize = 256 << 10;
/// PeerGone(NotHere) token bucket: one per second, burst of three.
const NOT_HERE_BURST: f64 = 3.0;
const NOT_HERE_PER_SEC: f64 = 1.0;

/// Identifies one client connection inside a [`Server`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Why a connection must be closed. After any of these the shell closes the socket and calls
/// [`Server::remove`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The connection id is not (or no longer) registered.
    #[error("{0} is not a connection of this DERP server")]
    UnknownConn(ConnId),
    /// The client sent bytes that are not valid DERP.
    #[error("DERP protocol violation: {0}")]
    Protocol(#[from] DerpError),
    /// The client's ClientInfo did not prove it holds the key it claims.
    #[error("DERP client authentication failed: {0}")]
    Authentication(DerpError),
    /// The client did not send a valid ClientInfo in time.
    #[error("DERP client did not complete the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The client sent a regional-mesh frame; this server has no mesh.
    #[error("DERP client sent {0}, which only mesh peers may send; this server has no mesh")]
    MeshNotAllowed(FrameType),
}

/// Settings for a [`Server`].
#[derive(Clone)]
pub struct ServerConfig {
    /// The server's long-lived key (clients seal ClientInfo to it).
    pub private_key: NodePrivate,
    /// Seed for the server's random numbers (box nonces, keepalive jitter). Use 32 bytes from
    /// the OS RNG in production; tests may fix it.
    pub rng_seed: [u8; 32],
    /// Per-destination queue depth for each of the disco and non-disco queues.
    pub queue_depth: usize,
    /// Time allowed between accept and a valid ClientInfo.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// Default settings for `private_key` and `rng_seed`.
    pub fn new(private_key: NodePrivate, rng_seed: [u8; 32]) -> Self {
        Self {
            private_key,
            rng_seed,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("public_key", &self.private_key.public())
            .field("queue_depth", &self.queue_depth)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Proof that a connection's ClientInfo box opened with the node key it claims. Only
/// [`Server`] can create one; routing a packet requires the sender's [`AuthenticatedKey`].
#[derive(Debug, Clone)]
pub struct Authenticated {
    key: AuthenticatedKey,
    info: ClientInfo,
}

impl Authenticated {
    /// Opens the ClientInfo box; success is the only way to get an `Authenticated`.
    fn verify(server: &NodePrivate, claimed: NodePublic, sealed: &[u8]) -> Result<Self, DerpError> {
        let info = ClientInfo::open(server, &claimed, sealed)?;
        Ok(Self {
            key: AuthenticatedKey(claimed),
            info,
        })
    }

    /// The proven node key.
    pub fn key(&self) -> AuthenticatedKey {
        self.key
    }

    /// What the client said about itself.
    pub fn info(&self) -> &ClientInfo {
        &self.info
    }
}

/// A node key that has passed the ClientInfo check. Copyable so it can outlive a borrow of the
/// connection table, but not constructible outside this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedKey(NodePublic);

impl AuthenticatedKey {
    /// The node key.
    pub fn node_key(&self) -> NodePublic {
        self.0
    }
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Authenticated connections.
    pub clients: usize,
    /// Connections still in the handshake.
    pub handshaking: usize,
    /// Packets accepted into a destination queue.
    pub packets_queued: u64,
    /// Packets dropped: unknown destination or a full queue.
    pub packets_dropped: u64,
    /// PeerGone frames queued (both reasons).
    pub peer_gone_sent: u64,
}

#[derive(Debug)]
struct QueuedPacket {
    src: NodePublic,
    packet: Vec<u8>,
}

#[derive(Debug)]
enum Phase {
    AwaitingClientInfo { deadline: Instant },
    Active(Authenticated),
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: NOT_HERE_BURST,
            last: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * NOT_HERE_PER_SEC).min(NOT_HERE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Conn {
    remote: Option<SocketAddr>,
    phase: Phase,
    decoder: FrameDecoder,
    control: VecDeque<Frame>,
    pending_pong: Option<[u8; 8]>,
    disco_queue: VecDeque<QueuedPacket>,
    other_queue: VecDeque<QueuedPacket>,
    keepalive_interval: Duration,
    next_keepalive: Option<Instant>,
    not_here: TokenBucket,
    /// Source keys this connection has been sent packets from (PeerGone watch list).
    saw_src: BTreeSet<NodePublic>,
    preferred: bool,
    /// Monotonic counter of the last frame received, for "last writer is active".
    last_activity: u64,
}

impl Conn {
    fn push_control(&mut self, frame: Frame) -> bool {
        if self.control.len() >= MAX_CONTROL_FRAMES {
            return false;
        }
        self.control.push_back(frame);
        true
    }

    fn key(&self) -> Option<NodePublic> {
        match &self.phase {
            Phase::Active(auth) => Some(auth.key.0),
            Phase::AwaitingClientInfo { .. } => None,
        }
    }
}

/// All connections of one key; `active` receives the traffic.
#[derive(Debug)]
struct KeyConns {
    conns: BTreeSet<ConnId>,
    active: ConnId,
}

/// The sans-IO DERP server. See the module documentation for the driving contract.
pub struct Server {
    private_key: NodePrivate,
    public_key: NodePublic,
    rng: StdRng,
    queue_depth: usize,
    handshake_timeout: Duration,
    next_id: u64,
    activity_counter: u64,
    conns: BTreeMap<ConnId, Conn>,
    keys: BTreeMap<NodePublic, KeyConns>,
    /// For key K: the connections that have received packets from K.
    gone_watchers: BTreeMap<NodePublic, BTreeSet<ConnId>>,
    wakes: BTreeSet<ConnId>,
    stats: ServerStats,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("public_key", &self.public_key)
            .field("connections", &self.conns.len())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with no connections.
    pub fn new(config: ServerConfig) -> Self {
        let public_key = config.private_key.public();
        Self {
            private_key: config.private_key,
            public_key,
            rng: StdRng::from_seed(config.rng_seed),
            queue_depth: config.queue_depth.max(1),
            handshake_timeout: config.handshake_timeout,
            next_id: 1,
            activity_counter: 0,
            conns: BTreeMap::new(),
            keys: BTreeMap::new(),
            gone_watchers: BTreeMap::new(),
            wakes: BTreeSet::new(),
            stats: ServerStats::default(),
        }
    }

    /// The server's public key (sent in ServerKey and the `Derp-Public-Key` header).
    pub fn public_key(&self) -> NodePublic {
        self.public_key
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        let clients = self
            .conns
            .values()
            .filter(|c| matches!(c.phase, Phase::Active(_)))
            .count();
        ServerStats {
            clients,
            handshaking: self.conns.len() - clients,
            ..self.stats
        }
    }

    /// Whether `key` has at least one authenticated connection.
    pub fn is_connected(&self, key: &NodePublic) -> bool {
        self.keys.contains_key(key)
    }

    /// The proven key of an authenticated connection.
    pub fn conn_key(&self, id: ConnId) -> Option<NodePublic> {
        self.conns.get(&id).and_then(Conn::key)
    }

    /// Whether the client of `id` said this server is its home (NotePreferred).
    pub fn is_preferred(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.preferred)
    }

    /// Registers a new connection that has just been upgraded to DERP and queues the ServerKey
    /// frame for it. `remote` is used only in logs.
    pub fn accept(&mut self, now: Instant, remote: Option<SocketAddr>) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        let jitter_ms = self.rng.gen_range(0..KEEP_ALIVE_JITTER.as_millis() as u64);
        let mut decoder = FrameDecoder::new();
        // Until the client is authenticated only a ClientInfo is acceptable; bound it tightly.
        decoder.set_max_frame_len(MAX_CLIENT_INFO_LEN as u32);
        let mut conn = Conn {
            remote,
            phase: Phase::AwaitingClientInfo {
                deadline: now + self.handshake_timeout,
            },
            decoder,
            control: VecDeque::new(),
            pending_pong: None,
            disco_queue: VecDeque::new(),
            other_queue: VecDeque::new(),
            keepalive_interval: KEEP_ALIVE + Duration::from_millis(jitter_ms),
            next_keepalive: None,
            not_here: TokenBucket::new(now),
            saw_src: BTreeSet::new(),
            preferred: false,
            last_activity: 0,
        };
        conn.push_control(Frame::ServerKey {
            key: self.public_key,
        });
        self.conns.insert(id, conn);
        self.wakes.insert(id);
        tracing::debug!(%id, ?remote, "derp: connection accepted");
        id
    }

    /// Processes bytes read from connection `id`. On error the connection must be closed (and
    /// then [`remove`](Self::remove)d); the server has not sent anything in reply.
    pub fn handle_input(
        &mut self,
        id: ConnId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), ServerError> {
        self.conns
            .get_mut(&id)
            .ok_or(ServerError::UnknownConn(id))?
            .decoder
            .push(bytes);
        loop {
            let conn = self
                .conns
                .get_mut(&id)
                .ok_or(ServerError::UnknownConn(id))?;
            let Some(raw) = conn.decoder.next_raw()? else {
                return Ok(());
            };
            self.handle_frame(id, raw, now)?;
        }
    }

    fn handle_frame(&mut self, id: ConnId, raw: RawFrame, now: Instant) -> Result<(), ServerError> {
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(ServerError::UnknownConn(id))?;
        let src = match &conn.phase {
            Phase::AwaitingClientInfo { .. } => return self.handle_client_info(id, raw, now),
            Phase::Active(auth) => auth.key,
        };
        self.activity_counter += 1;
        conn.last_activity = self.activity_counter;
        self.note_activity(src);
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(ServerError::UnknownConn(id))?;
        match raw.frame_type {
            FrameType::SEND_PACKET => {
                let Frame::SendPacket { dst, packet } = raw.parse()? else {
                    return Ok(());
                };
                self.route(id, src, dst, packet, now);
            }
            FrameType::NOTE_PREFERRED => {
                if let Frame::NotePreferred { preferred } = raw.parse()? {
                    conn.preferred = preferred;
                }
            }
            FrameType::PING => {
                if let Frame::Ping { data } = raw.parse()? {
                    // Only one Pong is buffered; a client pinging faster than we write is ignored.
                    if conn.pending_pong.is_none() {
                        conn.pending_pong = Some(data);
                        self.wakes.insert(id);
                    }
                }
            }
            FrameType::FORWARD_PACKET | FrameType::WATCH_CONNS | FrameType::CLOSE_PEER => {
                return Err(ServerError::MeshNotAllowed(raw.frame_type));
            }
            // Everything else (including server-to-client types) is skipped, like unknown frames.
            _ => {}
        }
        Ok(())
    }

    fn handle_client_info(
        &mut self,
        id: ConnId,
        raw: RawFrame,
        now: Instant,
    ) -> Result<(), ServerError> {
        if raw.frame_type != FrameType::CLIENT_INFO {
            return Err(DerpError::UnexpectedFrame {
                want: FrameType::CLIENT_INFO,
                got: raw.frame_type,
            }
            .into());
        }
        let Frame::ClientInfo { key, sealed } = raw.parse()? else {
            return Err(DerpError::UnexpectedFrame {
                want: FrameType::CLIENT_INFO,
                got: raw.frame_type,
            }
            .into());
        };
        let auth = Authenticated::verify(&self.private_key, key, &sealed)
            .map_err(ServerError::Authentication)?;
        self.register(id, auth, now)
    }

    fn register(
        &mut self,
        id: ConnId,
        auth: Authenticated,
        now: Instant,
    ) -> Result<(), ServerError> {
        let key = auth.key.0;
        let server_info = ServerInfo::current().seal(&self.private_key, &key, &mut self.rng)?;
        self.activity_counter += 1;
        let activity = self.activity_counter;
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(ServerError::UnknownConn(id))?;
        tracing::debug!(%id, remote = ?conn.remote, key = %key.short(), "derp: client authenticated");
        conn.phase = Phase::Active(auth);
        conn.decoder.set_max_frame_len(MAX_FRAME_LEN);
        conn.next_keepalive = Some(now + conn.keepalive_interval);
        conn.last_activity = activity;
        conn.push_control(server_info);
        self.wakes.insert(id);
        // The newest connection for a key becomes the active one; older ones stay open.
        let entry = self.keys.entry(key).or_insert_with(|| KeyConns {
            conns: BTreeSet::new(),
            active: id,
        });
        entry.conns.insert(id);
        entry.active = id;
        Ok(())
    }

    /// "Last writer is active": with several connections for one key, the one that sent last
    /// receives the traffic.
    fn note_activity(&mut self, src: AuthenticatedKey) {
        let Some(entry) = self.keys.get_mut(&src.0) else {
            return;
        };
        if entry.conns.len() < 2 {
            return;
        }
        if let Some(latest) = entry
            .conns
            .iter()
            .copied()
            .max_by_key(|c| self.conns.get(c).map_or(0, |conn| conn.last_activity))
        {
            entry.active = latest;
        }
    }

    /// Relays `packet` from the authenticated `src` (on connection `from`) to `dst`.
    fn route(
        &mut self,
        from: ConnId,
        src: AuthenticatedKey,
        dst: NodePublic,
        packet: Vec<u8>,
        now: Instant,
    ) {
        let is_disco = packet_looks_like_disco(&packet);
        let Some(dst_id) = self.keys.get(&dst).map(|k| k.active) else {
            self.stats.packets_dropped += 1;
            // Only disco senders learn that a peer is not here, and only at a limited rate.
            if is_disco
                && let Some(conn) = self.conns.get_mut(&from)
                && conn.not_here.allow(now)
                && conn.push_control(Frame::PeerGone {
                    peer: dst,
                    reason: PeerGoneReason::NOT_HERE,
                })
            {
                self.stats.peer_gone_sent += 1;
                self.wakes.insert(from);
            }
            return;
        };
        let Some(dst_conn) = self.conns.get_mut(&dst_id) else {
            self.stats.packets_dropped += 1;
            return;
        };
        let queue = if is_disco {
            &mut dst_conn.disco_queue
        } else {
            &mut dst_conn.other_queue
        };
        while queue.len() >= self.queue_depth {
            queue.pop_front();
            self.stats.packets_dropped += 1;
        }
        queue.push_back(QueuedPacket { src: src.0, packet });
        self.stats.packets_queued += 1;
        self.wakes.insert(dst_id);
    }

    /// Enforces the handshake deadline and schedules keepalives for connection `id`.
    pub fn handle_timeout(&mut self, id: ConnId, now: Instant) -> Result<(), ServerError> {
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(ServerError::UnknownConn(id))?;
        match &conn.phase {
            Phase::AwaitingClientInfo { deadline } if now >= *deadline => {
                Err(ServerError::HandshakeTimeout(self.handshake_timeout))
            }
            Phase::AwaitingClientInfo { .. } => Ok(()),
            Phase::Active(_) => {
                if let Some(due) = conn.next_keepalive
                    && now >= due
                {
                    conn.push_control(Frame::KeepAlive);
                    // Schedule from now rather than from `due`, so a stalled shell does not
                    // produce a burst of keepalives.
                    conn.next_keepalive = Some(now + conn.keepalive_interval);
                    self.wakes.insert(id);
                }
                Ok(())
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called for connection `id`.
    pub fn poll_timeout(&self, id: ConnId) -> Option<Instant> {
        let conn = self.conns.get(&id)?;
        match &conn.phase {
            Phase::AwaitingClientInfo { deadline } => Some(*deadline),
            Phase::Active(_) => conn.next_keepalive,
        }
    }

    /// The next batch of bytes to write to connection `id`, `None` when nothing is pending.
    /// Call repeatedly until `None`; one batch is capped at a few hundred KiB.
    pub fn poll_transmit(&mut self, id: ConnId) -> Option<Vec<u8>> {
        let conn = self.conns.get_mut(&id)?;
        let mut out = Vec::new();
        while let Some(frame) = conn.control.pop_front() {
            // Control frames are small and well-formed by construction; a failure would be a
            // bug, so it is logged rather than allowed to kill the connection.
            if let Err(err) = frame.encode(&mut out) {
                tracing::warn!(%id, %err, "derp: could not encode control frame");
            }
        }
        if let Some(data) = conn.pending_pong.take() {
            let _ = Frame::Pong { data }.encode(&mut out);
        }
        let mut newly_seen = Vec::new();
        // Alternate between the two queues so neither kind starves the other.
        let mut take_disco = true;
        while out.len() < TRANSMIT_BATCH_BYTES {
            let next = if take_disco {
                conn.disco_queue
                    .pop_front()
                    .or_else(|| conn.other_queue.pop_front())
            } else {
                conn.other_queue
                    .pop_front()
                    .or_else(|| conn.disco_queue.pop_front())
            };
            take_disco = !take_disco;
            let Some(QueuedPacket { src, packet }) = next else {
                break;
            };
            if conn.saw_src.insert(src) {
                newly_seen.push(src);
            }
            // Packets were size-checked on the way in, so encoding cannot fail.
            let _ = Frame::RecvPacket { src, packet }.encode(&mut out);
        }
        if !conn.disco_queue.is_empty() || !conn.other_queue.is_empty() {
            self.wakes.insert(id);
        }
        for src in newly_seen {
            self.gone_watchers.entry(src).or_default().insert(id);
        }
        (!out.is_empty()).then_some(out)
    }

    /// A connection with new bytes to write, if any. Drain after every mutating call.
    pub fn poll_wake(&mut self) -> Option<ConnId> {
        self.wakes.pop_first()
    }

    /// Forgets connection `id` (closed by either side). If it was its key's last connection,
    /// every connection that received packets from that key gets PeerGone(Disconnected).
    pub fn remove(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.wakes.remove(&id);
        for src in &conn.saw_src {
            if let Some(watchers) = self.gone_watchers.get_mut(src) {
                watchers.remove(&id);
                if watchers.is_empty() {
                    self.gone_watchers.remove(src);
                }
            }
        }
        let Some(key) = conn.key() else {
            tracing::debug!(%id, "derp: unauthenticated connection closed");
            return;
        };
        tracing::debug!(%id, key = %key.short(), "derp: client disconnected");
        let Some(entry) = self.keys.get_mut(&key) else {
            return;
        };
        entry.conns.remove(&id);
        if let Some(latest) = entry
            .conns
            .iter()
            .copied()
            .max_by_key(|c| self.conns.get(c).map_or(0, |conn| conn.last_activity))
        {
            entry.active = latest;
            return;
        }
        self.keys.remove(&key);
        let watchers = self.gone_watchers.remove(&key).unwrap_or_default();
        for watcher in watchers {
            if let Some(w) = self.conns.get_mut(&watcher) {
                // Forget the source so a reconnecting peer is watched afresh.
                w.saw_src.remove(&key);
                if w.push_control(Frame::PeerGone {
                    peer: key,
                    reason: PeerGoneReason::DISCONNECTED,
                }) {
                    self.stats.peer_gone_sent += 1;
                    self.wakes.insert(watcher);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proto::derp::{DISCO_MAGIC, PeerGoneReason};

    fn rng() -> StdRng {
        StdRng::from_seed([7; 32])
    }

    fn server() -> Server {
        Server::new(ServerConfig::new(NodePrivate::from_bytes([1; 32]), [2; 32]))
    }

    fn frames(server: &mut Server, id: ConnId) -> Vec<Frame> {
        let mut dec = FrameDecoder::new();
        while let Some(b) = server.poll_transmit(id) {
            dec.push(&b);
        }
        let mut out = Vec::new();
        while let Some(f) = dec.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    /// Accepts a connection and completes the handshake for `key`.
    fn connect(server: &mut Server, key: &NodePrivate, now: Instant) -> ConnId {
        let id = server.accept(now, None);
        let got = frames(server, id);
        assert_eq!(
            got,
            vec![Frame::ServerKey {
                key: server.public_key()
            }]
        );
        let ci = ClientInfo::default()
            .seal(key, &server.public_key(), &mut rng())
            .unwrap();
        server
            .handle_input(id, &ci.to_bytes().unwrap(), now)
            .unwrap();
        let got = frames(server, id);
        let [Frame::ServerInfo { sealed }] = got.as_slice() else {
            panic!("want ServerInfo, got {got:?}")
        };
        assert_eq!(
            ServerInfo::open(key, &server.public_key(), sealed).unwrap(),
            ServerInfo::current()
        );
        while server.poll_wake().is_some() {}
        id
    }

    fn send(server: &mut Server, id: ConnId, dst: NodePublic, packet: &[u8], now: Instant) {
        let f = Frame::SendPacket {
            dst,
            packet: packet.to_vec(),
        };
        server
            .handle_input(id, &f.to_bytes().unwrap(), now)
            .unwrap();
    }

    fn disco_packet() -> Vec<u8> {
        let mut p = DISCO_MAGIC.to_vec();
        p.resize(80, 9);
        p
    }

    #[test]
    fn relays_with_source_key() {
        let mut s = server();
        let now = Instant::now();
        let (a, b) = (
            NodePrivate::from_bytes([3; 32]),
            NodePrivate::from_bytes([4; 32]),
        );
        let ia = connect(&mut s, &a, now);
        let ib = connect(&mut s, &b, now);
        send(&mut s, ia, b.public(), b"hello", now);
        assert_eq!(s.poll_wake(), Some(ib));
        assert_eq!(
            frames(&mut s, ib),
            vec![Frame::RecvPacket {
                src: a.public(),
                packet: b"hello".to_vec()
            }]
        );
        assert_eq!(s.stats().clients, 2);
    }

    #[test]
    fn bad_box_is_rejected_and_nothing_is_registered() {
        let mut s = server();
        let now = Instant::now();
        let id = s.accept(now, None);
        let _ = frames(&mut s, id);
        let real = NodePrivate::from_bytes([3; 32]);
        let claimed = NodePrivate::from_bytes([4; 32]).public();
        let Frame::ClientInfo { sealed, .. } = ClientInfo::default()
            .seal(&real, &s.public_key(), &mut rng())
            .unwrap()
        else {
            panic!()
        };
        let forged = Frame::ClientInfo {
            key: claimed,
            sealed,
        };
        let err = s
            .handle_input(id, &forged.to_bytes().unwrap(), now)
            .unwrap_err();
        assert!(
            matches!(err, ServerError::Authentication(DerpError::BoxOpen { .. })),
            "{err}"
        );
        assert!(!s.is_connected(&claimed));
        assert_eq!(frames(&mut s, id), vec![]);
    }

    #[test]
    fn send_before_client_info_is_a_protocol_error() {
        let mut s = server();
        let now = Instant::now();
        let id = s.accept(now, None);
        let f = Frame::SendPacket {
            dst: NodePublic::from_bytes([9; 32]),
            packet: vec![1],
        };
        assert!(matches!(
            s.handle_input(id, &f.to_bytes().unwrap(), now),
            Err(ServerError::Protocol(DerpError::UnexpectedFrame { .. }))
        ));
    }

    #[test]
    fn handshake_times_out() {
        let mut s = server();
        let now = Instant::now();
        let id = s.accept(now, None);
        assert_eq!(s.poll_timeout(id), Some(now + HANDSHAKE_TIMEOUT));
        assert!(s.handle_timeout(id, now + Duration::from_secs(9)).is_ok());
        assert!(matches!(
            s.handle_timeout(id, now + HANDSHAKE_TIMEOUT),
            Err(ServerError::HandshakeTimeout(_))
        ));
    }

    #[test]
    fn keepalive_every_60_to_65_seconds() {
        let mut s = server();
        let now = Instant::now();
        let id = connect(&mut s, &NodePrivate::from_bytes([3; 32]), now);
        let due = s.poll_timeout(id).unwrap();
        assert!(due >= now + KEEP_ALIVE && due < now + KEEP_ALIVE + KEEP_ALIVE_JITTER);
        s.handle_timeout(id, due - Duration::from_millis(1))
            .unwrap();
        assert_eq!(frames(&mut s, id), vec![]);
        s.handle_timeout(id, due).unwrap();
        assert_eq!(frames(&mut s, id), vec![Frame::KeepAlive]);
        assert_eq!(s.poll_timeout(id), Some(due + (due - now)));
    }

    #[test]
    fn ping_gets_pong_and_floods_are_ignored() {
        let mut s = server();
        let now = Instant::now();
        let id = connect(&mut s, &NodePrivate::from_bytes([3; 32]), now);
        let mut bytes = Frame::Ping { data: *b"abcdefgh" }.to_bytes().unwrap();
        bytes.extend(Frame::Ping { data: *b"zzzzzzzz" }.to_bytes().unwrap());
        s.handle_input(id, &bytes, now).unwrap();
        assert_eq!(frames(&mut s, id), vec![Frame::Pong { data: *b"abcdefgh" }]);
    }

    #[test]
    fn queues_drop_oldest_per_kind() {
        let mut s = server();
        let now = Instant::now();
        let (a, b) = (
            NodePrivate::from_bytes([3; 32]),
            NodePrivate::from_bytes([4; 32]),
        );
        let ia = connect(&mut s, &a, now);
        let ib = connect(&mut s, &b, now);
        for i in 0..40u8 {
            send(&mut s, ia, b.public(), &[i], now);
        }
        send(&mut s, ia, b.public(), &disco_packet(), now);
        let got = frames(&mut s, ib);
        assert_eq!(got.len(), 33);
        let others: Vec<u8> = got
            .iter()
            .filter_map(|f| match f {
                Frame::RecvPacket { packet, .. } if packet.len() == 1 => Some(packet[0]),
                _ => None,
            })
            .collect();
        assert_eq!(
            others,
            (8..40).collect::<Vec<u8>>(),
            "the 8 oldest were dropped"
        );
        assert_eq!(s.stats().packets_dropped, 8);
    }

    #[test]
    fn not_here_only_for_disco_and_rate_limited() {
        let mut s = server();
        let now = Instant::now();
        let a = NodePrivate::from_bytes([3; 32]);
        let ia = connect(&mut s, &a, now);
        let nobody = NodePublic::from_bytes([0xee; 32]);
        send(&mut s, ia, nobody, b"wireguard", now);
        assert_eq!(frames(&mut s, ia), vec![]);
        for _ in 0..5 {
            send(&mut s, ia, nobody, &disco_packet(), now);
        }
        let gone = Frame::PeerGone {
            peer: nobody,
            reason: PeerGoneReason::NOT_HERE,
        };
        assert_eq!(
            frames(&mut s, ia),
            vec![gone.clone(), gone.clone(), gone.clone()],
            "burst of 3"
        );
        send(
            &mut s,
            ia,
            nobody,
            &disco_packet(),
            now + Duration::from_secs(1),
        );
        assert_eq!(frames(&mut s, ia), vec![gone]);
    }

    #[test]
    fn peer_gone_goes_to_receivers_when_last_conn_leaves() {
        let mut s = server();
        let now = Instant::now();
        let (a, b, c) = (
            NodePrivate::from_bytes([3; 32]),
            NodePrivate::from_bytes([4; 32]),
            NodePrivate::from_bytes([5; 32]),
        );
        let ia = connect(&mut s, &a, now);
        let ib = connect(&mut s, &b, now);
        let ic = connect(&mut s, &c, now);
        send(&mut s, ia, b.public(), b"x", now);
        let _ = frames(&mut s, ib);
        while s.poll_wake().is_some() {}
        s.remove(ia);
        assert_eq!(s.poll_wake(), Some(ib));
        assert_eq!(s.poll_wake(), None, "c never received from a");
        assert_eq!(
            frames(&mut s, ib),
            vec![Frame::PeerGone {
                peer: a.public(),
                reason: PeerGoneReason::DISCONNECTED
            }]
        );
        assert_eq!(frames(&mut s, ic), vec![]);
        assert!(!s.is_connected(&a.public()));
    }

    #[test]
    fn last_writer_is_active_for_duplicate_keys() {
        let mut s = server();
        let now = Instant::now();
        let (a, b) = (
            NodePrivate::from_bytes([3; 32]),
            NodePrivate::from_bytes([4; 32]),
        );
        let ia = connect(&mut s, &a, now);
        let b1 = connect(&mut s, &b, now);
        let b2 = connect(&mut s, &b, now);
        // Newest connection is active first.
        send(&mut s, ia, b.public(), b"1", now);
        assert_eq!(frames(&mut s, b1), vec![]);
        assert_eq!(frames(&mut s, b2).len(), 1);
        // b1 speaks: it becomes the active one.
        send(&mut s, b1, a.public(), b"hi", now);
        send(&mut s, ia, b.public(), b"2", now);
        assert_eq!(
            frames(&mut s, b1),
            vec![Frame::RecvPacket {
                src: a.public(),
                packet: b"2".to_vec()
            }]
        );
        // Closing one duplicate is not a PeerGone.
        let _ = frames(&mut s, ia);
        s.remove(b1);
        assert_eq!(frames(&mut s, ia), vec![]);
        send(&mut s, ia, b.public(), b"3", now);
        assert_eq!(frames(&mut s, b2).len(), 1);
    }

    #[test]
    fn mesh_frames_close_the_connection() {
        let mut s = server();
        let now = Instant::now();
        let id = connect(&mut s, &NodePrivate::from_bytes([3; 32]), now);
        let f = Frame::WatchConns.to_bytes().unwrap();
        assert!(matches!(
            s.handle_input(id, &f, now),
            Err(ServerError::MeshNotAllowed(_))
        ));
    }

    #[test]
    fn unknown_and_client_bound_frames_are_skipped() {
        let mut s = server();
        let now = Instant::now();
        let id = connect(&mut s, &NodePrivate::from_bytes([3; 32]), now);
        let mut b = Frame::Unknown {
            frame_type: FrameType(0x77),
            payload: vec![1, 2, 3],
        }
        .to_bytes()
        .unwrap();
        b.extend(Frame::KeepAlive.to_bytes().unwrap());
        b.extend(Frame::NotePreferred { preferred: true }.to_bytes().unwrap());
        s.handle_input(id, &b, now).unwrap();
        assert!(s.is_preferred(id));
    }
}
