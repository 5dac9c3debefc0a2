//! The long-running control client task (I/O): log in, keep a streaming map session, and tell
//! the daemon what changed; reconnect on its own whenever anything breaks.
//!
//! [`Client::start`] spawns the task and returns a [`ClientHandle`] (cheap to clone) plus the
//! receiver of [`ClientEvent`]s. The task loops over sessions: dial, register (with the auth
//! key until the first successful login, without one afterwards, so that a server restart or a
//! network change re-attaches the same node), then a long-poll map stream whose responses are
//! applied to a [`NetMap`]. Each session starts a fresh map, as the Go client does, and the
//! first full map is diffed against the last map the daemon saw, so [`Changes`] stay exact
//! across reconnects. Endpoint, NetInfo and Hostinfo updates from the handle are coalesced and
//! sent as lite map requests on the same connection while the stream stays open.
//!
//! Failures end the session; the task reports [`ClientEvent::Disconnected`] and retries after an
//! exponential backoff with jitter (capped at [`ClientConfig::max_backoff`]). A stream that
//! stays silent longer than [`ClientConfig::watchdog`] (servers send keep-alives every 50-60 s)
//! counts as broken. A login the server refuses (bad auth key, expired node key) is not retried:
//! the task waits for [`ClientHandle::login`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proto::keys::{DiscoPublic, MachinePrivate, NodePublic};
use proto::netmap::{Changes, NetMap};
use proto::tailcfg::{
    self, EndpointType, Hostinfo, MapRequest, MapResponse, NetInfo, RegisterAuth, RegisterRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::CAPABILITY_VERSION;
use super::backoff::Backoff;
use super::conn::Connection;
use super::dial::{DialOptions, dial_with};
use super::error::ControlError;

/// A pre-auth key. Secret: its `Debug` output is redacted and its memory wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(Zeroizing<String>);

impl AuthKey {
    pub fn new(key: impl Into<String>) -> Self {
        AuthKey(Zeroizing::new(key.into()))
    }

    /// The key text, for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// What the control client needs to know. Build with [`ClientConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host[:port]`.
    pub server_url: String,
    /// The device's long-term identity towards control (the Noise static key).
    pub machine_key: MachinePrivate,
    /// The node (WireGuard) public key being registered.
    pub node_key: NodePublic,
    /// This process's disco key.
    pub disco_key: DiscoPublic,
    /// Becomes `Hostinfo.Hostname` (and the MagicDNS name) unless `hostinfo` names one.
    pub hostname: String,
    pub hostinfo: Hostinfo,
    /// Used until the first successful login, then forgotten.
    pub auth_key: Option<AuthKey>,
    /// Ask to be deleted when gone (servers may only honour the key's flag).
    pub ephemeral: bool,
    /// Endpoints to report in the first map request.
    pub endpoints: Vec<(SocketAddr, EndpointType)>,
    pub dial: DialOptions,
    /// A map stream with no message (not even a keep-alive) for this long is broken.
    pub watchdog: Duration,
    /// First reconnect delay (before jitter); doubles per failure.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// How long endpoint/Hostinfo updates are gathered before one lite request carries them.
    pub update_delay: Duration,
}

impl ClientConfig {
    /// A configuration with the defaults the Go client uses (120 s watchdog, 30 s max backoff).
    pub fn new(
        server_url: impl Into<String>,
        machine_key: MachinePrivate,
        node_key: NodePublic,
        disco_key: DiscoPublic,
        hostname: impl Into<String>,
    ) -> Self {
        ClientConfig {
            server_url: server_url.into(),
            machine_key,
            node_key,
            disco_key,
            hostname: hostname.into(),
            hostinfo: Hostinfo::default(),
            auth_key: None,
            ephemeral: false,
            endpoints: Vec::new(),
            dial: DialOptions::default(),
            watchdog: Duration::from_secs(120),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            update_delay: Duration::from_millis(100),
        }
    }
}

/// What the control client tells the daemon.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Registration succeeded (at start and after every reconnect).
    LoggedIn {
        user: tailcfg::User,
        login: tailcfg::Login,
        machine_authorized: bool,
    },
    /// The server refused the login; the text is the server's, verbatim. The client waits for
    /// [`ClientHandle::login`].
    LoginFailed(String),
    /// The node key has expired (or was logged out): log in again with an auth key, possibly
    /// with a new node key. The client waits for [`ClientHandle::login`].
    NodeKeyExpired,
    /// The device awaits approval by an administrator; the map keeps flowing meanwhile.
    NeedsMachineAuth,
    /// Interactive login: the user must visit this URL. The client keeps polling.
    AuthUrl(String),
    /// A new network map and what changed since the previous one the daemon received.
    NetMap(Arc<NetMap>, Changes),
    /// The connection to control broke; the client retries on its own.
    Disconnected(String),
    /// [`ClientHandle::logout`] succeeded.
    LoggedOut,
}

/// What the handle asks the task to do.
enum Command {
    Login {
        auth_key: Option<AuthKey>,
        node_key: Option<NodePublic>,
    },
    Logout(oneshot::Sender<Result<(), ControlError>>),
}

/// What the client reports about itself; changes go out as lite map requests.
#[derive(Debug, Clone, PartialEq)]
struct LocalState {
    hostinfo: Hostinfo,
    endpoints: Vec<(SocketAddr, EndpointType)>,
}

/// Controls a running [`Client`]. Clones share the task.
#[derive(Clone)]
pub struct ClientHandle {
    local: Arc<watch::Sender<LocalState>>,
    cmds: mpsc::UnboundedSender<Command>,
    cancel: CancellationToken,
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("stopped", &self.cancel.is_cancelled())
            .finish()
    }
}

impl ClientHandle {
    /// Reports the node's UDP endpoints (sent as a lite map request, coalesced).
    pub fn update_endpoints(&self, endpoints: Vec<(SocketAddr, EndpointType)>) {
        self.local.send_if_modified(|s| {
            let changed = s.endpoints != endpoints;
            s.endpoints = endpoints;
            changed
        });
    }

    /// Reports new netcheck results (home DERP, UDP reachability) inside Hostinfo.
    pub fn update_netinfo(&self, netinfo: NetInfo) {
        self.local.send_if_modified(|s| {
            let ni = Some(netinfo);
            let changed = s.hostinfo.net_info != ni;
            s.hostinfo.net_info = ni;
            changed
        });
    }

    /// Replaces Hostinfo. An empty hostname or a missing NetInfo keeps the current one.
    pub fn update_hostinfo(&self, mut hostinfo: Hostinfo) {
        self.local.send_if_modified(|s| {
            if hostinfo.hostname.is_empty() {
                hostinfo.hostname = s.hostinfo.hostname.clone();
            }
            if hostinfo.net_info.is_none() {
                hostinfo.net_info = s.hostinfo.net_info.clone();
            }
            let changed = s.hostinfo != hostinfo;
            s.hostinfo = hostinfo;
            changed
        });
    }

    /// Logs in again (after [`ClientEvent::LoginFailed`], [`ClientEvent::NodeKeyExpired`] or a
    /// logout), with a new auth key if given. An open session is restarted.
    pub fn login(&self, auth_key: Option<AuthKey>) {
        let _ = self.cmds.send(Command::Login {
            auth_key,
            node_key: None,
        });
    }

    /// Logs in with a new node key, replacing the current one (sent as `OldNodeKey`).
    pub fn login_with_node_key(&self, node_key: NodePublic, auth_key: Option<AuthKey>) {
        let _ = self.cmds.send(Command::Login {
            auth_key,
            node_key: Some(node_key),
        });
    }

    /// Logs the node out at the control server (its key expires now). The client then waits
    /// for [`Self::login`].
    pub async fn logout(&self) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Logout(tx))
            .map_err(|_| ControlError::Shutdown)?;
        rx.await.unwrap_or(Err(ControlError::Shutdown))
    }

    /// The last network map handed to the daemon.
    pub fn netmap(&self) -> Option<Arc<NetMap>> {
        self.netmap.borrow().clone()
    }

    /// Stops the client and waits for its task to end. Open connections are closed.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().await.take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

/// The control client.
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Starts the client task on the current tokio runtime.
    pub fn start(config: ClientConfig) -> (ClientHandle, mpsc::Receiver<ClientEvent>) {
        let mut hostinfo = config.hostinfo.clone();
        if hostinfo.hostname.is_empty() {
            hostinfo.hostname = config.hostname.clone();
        }
        if hostinfo.os.is_empty() {
            hostinfo.os = std::env::consts::OS.to_string();
        }
        let (local_tx, local_rx) = watch::channel(LocalState {
            hostinfo,
            endpoints: config.endpoints.clone(),
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let (nm_tx, nm_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let task = Task {
            node_key: config.node_key,
            old_node_key: NodePublic::zero(),
            auth_key: config.auth_key.clone(),
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            cfg: config,
            local: local_rx,
            cmds: cmd_rx,
            events: ev_tx,
            cancel: cancel.clone(),
            published: Arc::new(NetMap::new()),
            netmap_tx: nm_tx,
            authorized: None,
        };
        let join = tokio::spawn(task.run());
        let handle = ClientHandle {
            local: Arc::new(local_tx),
            cmds: cmd_tx,
            cancel,
            netmap: nm_rx,
            task: Arc::new(tokio::sync::Mutex::new(Some(join))),
        };
        (handle, ev_rx)
    }
}

/// How a session (or a step of one) ended.
enum End {
    Shutdown,
    /// Login refused, key expired or logged out: wait for [`Command::Login`].
    WaitForLogin,
    /// Start a new session at once (new credentials).
    Restart,
    /// Something broke; `worked` = the session delivered a network map first.
    Retry {
        err: ControlError,
        worked: bool,
    },
}

fn retry(err: ControlError) -> End {
    End::Retry { err, worked: false }
}

type LiteFuture = Pin<Box<dyn Future<Output = Result<(), ControlError>> + Send>>;

/// Awaits the optional future, or forever when there is none (for `select!`).
async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Task {
    cfg: ClientConfig,
    node_key: NodePublic,
    old_node_key: NodePublic,
    auth_key: Option<AuthKey>,
    local: watch::Receiver<LocalState>,
    cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<ClientEvent>,
    cancel: CancellationToken,
    /// The last map handed to the daemon.
    published: Arc<NetMap>,
    netmap_tx: watch::Sender<Option<Arc<NetMap>>>,
    backoff: Backoff,
    /// Last reported machine authorization, to report changes only.
    authorized: Option<bool>,
}

impl Task {
    async fn run(mut self) {
        let mut waiting = false;
        loop {
            if waiting {
                match self.wait_for_login().await {
                    Some(()) => waiting = false,
                    None => return,
                }
            }
            match self.session().await {
                End::Shutdown => return,
                End::WaitForLogin => waiting = true,
                End::Restart => self.backoff.reset(),
                End::Retry { err, worked } => {
                    if worked {
                        self.backoff.reset();
                    }
                    let delay = self.backoff.next_delay(rand::random::<f64>());
                    tracing::info!(error = %err, retry_in_ms = delay.as_millis() as u64, "control session ended");
                    self.emit(ClientEvent::Disconnected(err.to_string())).await;
                    match self.pause(delay).await {
                        End::Shutdown => return,
                        End::WaitForLogin => waiting = true,
                        End::Restart | End::Retry { .. } => {}
                    }
                }
            }
        }
    }

    /// Sends an event unless the client is shutting down.
    async fn emit(&self, ev: ClientEvent) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.events.send(ev) => {}
        }
    }

    fn apply_login(&mut self, auth_key: Option<AuthKey>, node_key: Option<NodePublic>) {
        if auth_key.is_some() {
            self.auth_key = auth_key;
        }
        if let Some(k) = node_key
            && k != self.node_key
        {
            self.old_node_key = self.node_key;
            self.node_key = k;
        }
    }

    /// Waits out a reconnect delay while still obeying commands.
    async fn pause(&mut self, delay: Duration) -> End {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return End::Shutdown,
                _ = self.events.closed() => return End::Shutdown,
                _ = tokio::time::sleep_until(until) => return End::Restart,
                cmd = self.cmds.recv() => match cmd {
                    None => return End::Shutdown,
                    Some(Command::Login { auth_key, node_key }) => {
                        self.apply_login(auth_key, node_key);
                        return End::Restart;
                    }
                    Some(Command::Logout(tx)) => {
                        let r = self.logout_fresh().await;
                        let ok = r.is_ok();
                        let _ = tx.send(r);
                        if ok {
                            return End::WaitForLogin;
                        }
                    }
                },
            }
        }
    }

    /// Idles until the daemon asks to log in again. `None` = shut down.
    async fn wait_for_login(&mut self) -> Option<()> {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = self.events.closed() => return None,
                cmd = self.cmds.recv() => match cmd {
                    None => return None,
                    Some(Command::Login { auth_key, node_key }) => {
                        self.apply_login(auth_key, node_key);
                        self.backoff.reset();
                        return Some(());
                    }
                    Some(Command::Logout(tx)) => {
                        let _ = tx.send(self.logout_fresh().await);
                    }
                },
            }
        }
    }

    async fn dial(&self) -> Result<Connection, ControlError> {
        dial_with(&self.cfg.server_url, &self.cfg.machine_key, &self.cfg.dial).await
    }

    async fn logout_fresh(&mut self) -> Result<(), ControlError> {
        let conn = self.dial().await?;
        self.logout_on(&conn).await
    }

    async fn logout_on(&mut self, conn: &Connection) -> Result<(), ControlError> {
        conn.logout(self.node_key).await?;
        tracing::info!("logged out");
        self.emit(ClientEvent::LoggedOut).await;
        Ok(())
    }

    async fn session(&mut self) -> End {
        let conn = tokio::select! {
            _ = self.cancel.cancelled() => return End::Shutdown,
            r = self.dial() => match r {
                Ok(c) => c,
                Err(e) => return retry(e),
            },
        };
        if let Some(end) = self.login(&conn).await {
            return end;
        }
        self.map_session(&conn).await
    }

    fn register_request(&self, followup: &str) -> RegisterRequest {
        RegisterRequest {
            version: i32::from(CAPABILITY_VERSION),
            node_key: self.node_key,
            old_node_key: self.old_node_key,
            nl_key: tailcfg::register::zero_nl_key(),
            auth: self.auth_key.as_ref().map(|k| RegisterAuth {
                auth_key: k.expose().to_string(),
                ..Default::default()
            }),
            followup: followup.to_string(),
            hostinfo: Some(self.local.borrow().hostinfo.clone()),
            ephemeral: self.cfg.ephemeral,
            timestamp: DateTime::from_timestamp(Utc::now().timestamp(), 0),
            ..Default::default()
        }
    }

    /// Registers; `None` = logged in, go on with the map session.
    async fn login(&mut self, conn: &Connection) -> Option<End> {
        let mut followup = String::new();
        loop {
            let req = self.register_request(&followup);
            let resp = tokio::select! {
                _ = self.cancel.cancelled() => return Some(End::Shutdown),
                r = conn.register(&req) => r,
            };
            // The request held a copy of the auth key; wipe it now.
            if let Some(mut auth) = req.auth {
                zeroize::Zeroize::zeroize(&mut auth.auth_key);
            }
            let resp = match resp {
                Ok(r) => r,
                Err(e) => return Some(retry(e)),
            };
            if resp.node_key_expired {
                tracing::info!("control says the node key has expired");
                self.emit(ClientEvent::NodeKeyExpired).await;
            }
            if !resp.error.is_empty() {
                tracing::warn!(reason = %resp.error, "login refused");
                self.emit(ClientEvent::LoginFailed(resp.error)).await;
                return Some(End::WaitForLogin);
            }
            if resp.node_key_expired {
                return Some(End::WaitForLogin);
            }
            if !resp.auth_url.is_empty() {
                if resp.auth_url != followup {
                    self.emit(ClientEvent::AuthUrl(resp.auth_url.clone())).await;
                }
                followup = resp.auth_url;
                // The server long-polls a follow-up; pause briefly in case it does not.
                tokio::select! {
                    _ = self.cancel.cancelled() => return Some(End::Shutdown),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            // Logged in: from now on the node key alone identifies us.
            self.auth_key = None;
            self.old_node_key = NodePublic::zero();
            tracing::info!(user = %resp.login.login_name, authorized = resp.machine_authorized, "logged in");
            self.emit(ClientEvent::LoggedIn {
                user: resp.user,
                login: resp.login,
                machine_authorized: resp.machine_authorized,
            })
            .await;
            self.note_authorized(resp.machine_authorized).await;
            return None;
        }
    }

    async fn note_authorized(&mut self, authorized: bool) {
        if self.authorized != Some(authorized) {
            self.authorized = Some(authorized);
            if !authorized {
                self.emit(ClientEvent::NeedsMachineAuth).await;
            }
        }
    }

    /// A map request for the current local state, marking that state as reported.
    fn map_request(&mut self, stream: bool) -> MapRequest {
        let st = self.local.borrow_and_update().clone();
        MapRequest {
            version: i32::from(CAPABILITY_VERSION),
            compress: "zstd".to_string(),
            keep_alive: stream,
            node_key: self.node_key,
            disco_key: self.cfg.disco_key,
            stream,
            omit_peers: !stream,
            hostinfo: Some(st.hostinfo),
            endpoints: st.endpoints.iter().map(|(a, _)| *a).collect(),
            endpoint_types: st.endpoints.iter().map(|(_, t)| *t).collect(),
            ..Default::default()
        }
    }

    async fn map_session(&mut self, conn: &Connection) -> End {
        let req = self.map_request(true);
        let mut stream = tokio::select! {
            _ = self.cancel.cancelled() => return End::Shutdown,
            r = conn.map_stream(&req) => match r {
                Ok(s) => s,
                Err(e) => return retry(e),
            },
        };
        let watchdog = self.cfg.watchdog;
        let mut nm = NetMap::new();
        let mut worked = false;
        let mut deadline = Instant::now() + watchdog;
        let mut lite_due: Option<Instant> = None;
        let mut lite: Option<LiteFuture> = None;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return End::Shutdown,
                _ = self.events.closed() => return End::Shutdown,
                _ = tokio::time::sleep_until(deadline) => {
                    let err = ControlError::Timeout {
                        what: "the map stream (not even a keep-alive)",
                        secs: watchdog.as_secs(),
                    };
                    return End::Retry { err, worked };
                }
                msg = stream.next() => {
                    deadline = Instant::now() + watchdog;
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let err = ControlError::ConnectionLost("the control server ended the map stream".into());
                            return End::Retry { err, worked };
                        }
                        Err(err) => return End::Retry { err, worked },
                    };
                    if let Some(end) = self.on_map_response(&mut nm, resp).await {
                        return end;
                    }
                    worked |= nm.is_complete();
                }
                changed = self.local.changed() => {
                    if changed.is_err() {
                        // Every handle is gone: nobody can use this client any more.
                        return End::Shutdown;
                    }
                    if lite_due.is_none() {
                        lite_due = Some(Instant::now() + self.cfg.update_delay);
                    }
                }
                _ = sleep_opt(lite_due), if lite.is_none() => {
                    lite_due = None;
                    let req = self.map_request(false);
                    let c = conn.clone();
                    lite = Some(Box::pin(async move { c.lite_update(&req).await }));
                }
                r = maybe(&mut lite) => {
                    lite = None;
                    match r {
                        Ok(()) => tracing::debug!("endpoint/Hostinfo update sent"),
                        Err(err @ ControlError::ConnectionLost(_)) => return End::Retry { err, worked },
                        Err(e) => {
                            tracing::warn!(error = %e, "endpoint/Hostinfo update failed; retrying");
                            // Mark the state as unsent so the retry carries the latest values.
                            self.local.mark_changed();
                            lite_due = Some(Instant::now() + Duration::from_secs(5));
                        }
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    None => return End::Shutdown,
                    Some(Command::Login { auth_key, node_key }) => {
                        self.apply_login(auth_key, node_key);
                        return End::Restart;
                    }
                    Some(Command::Logout(tx)) => {
                        let r = self.logout_on(conn).await;
                        let ok = r.is_ok();
                        let _ = tx.send(r);
                        if ok {
                            return End::WaitForLogin;
                        }
                    }
                },
            }
        }
    }

    /// Applies one message; `Some` ends the session.
    async fn on_map_response(&mut self, nm: &mut NetMap, resp: MapResponse) -> Option<End> {
        if resp.keep_alive {
            if let Some(p) = &resp.ping_request {
                tracing::debug!(url = %p.url, "ignoring a ping request from control");
            }
            return None;
        }
        let first = !nm.is_complete();
        if first && resp.node.is_none() {
            return Some(retry(ControlError::Protocol {
                what: "first map response",
                reason: "it does not describe this node".into(),
            }));
        }
        if let Some(d) = &resp.debug
            && d.exit.is_some()
        {
            tracing::warn!("control asked the client to exit; ignoring");
        }
        let now = Utc::now();
        let mut changes = nm.apply(resp, now);
        if first {
            changes = self.published.diff(nm);
        } else if changes.is_empty() {
            return None;
        }
        let map = Arc::new(nm.clone());
        self.published = Arc::clone(&map);
        self.netmap_tx.send_replace(Some(Arc::clone(&map)));
        let clock_only = Changes {
            control_time: true,
            ..Default::default()
        };
        if !first && changes == clock_only {
            // Nothing the daemon configures moved; keep the map current without waking it.
            return None;
        }
        let self_changed = first || changes.self_node;
        self.emit(ClientEvent::NetMap(Arc::clone(&map), changes))
            .await;
        if self_changed && let Some(me) = &map.self_node {
            self.note_authorized(me.machine_authorized).await;
            if me.key_expiry.is_some_and(|e| e <= now) {
                tracing::info!("this node's key has expired");
                self.emit(ClientEvent::NodeKeyExpired).await;
                return Some(End::WaitForLogin);
            }
        }
        None
    }
}
