//! One established ts2021 connection (I/O): requests over HTTP/2 inside Noise.
//!
//! A [`Connection`] is cheap to clone; all clones share one HTTP/2 connection, on which register,
//! the long-poll map stream and lite map updates run as concurrent streams, as the Go client
//! does. The connection closes when the last clone is dropped. [`MapStream`] turns the map
//! response body into [`MapResponse`] values with `proto::mapframe`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use proto::keys::{MachinePublic, NodePublic};
use proto::mapframe::MapFrameDecoder;
use proto::tailcfg::{self, MapRequest, MapResponse, RegisterRequest, RegisterResponse};

use super::CAPABILITY_VERSION;
use super::dial::ServerUrl;
use super::error::ControlError;

/// Largest non-streamed answer read (register, lite map, errors).
const MAX_BODY: usize = 1 << 20;
/// How long register and lite map requests may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Ends the HTTP/2 connection task when the last [`Connection`] clone goes away.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/2-over-Noise connection to the control server.
#[derive(Clone)]
pub struct Connection {
    send: SendRequest<Full<Bytes>>,
    url: ServerUrl,
    server_key: MachinePublic,
    _driver: Arc<Driver>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url.text)
            .field("server_key", &self.server_key)
            .field("closed", &self.send.is_closed())
            .finish()
    }
}

fn lost(e: impl std::fmt::Display) -> ControlError {
    ControlError::ConnectionLost(e.to_string())
}

/// Fills the fields every request carries when the caller left them unset.
fn fill_register(req: &mut RegisterRequest) {
    if req.version == 0 {
        req.version = i32::from(CAPABILITY_VERSION);
    }
    if req.nl_key.is_empty() {
        req.nl_key = tailcfg::register::zero_nl_key();
    }
}

fn fill_map(req: &mut MapRequest) {
    if req.version == 0 {
        req.version = i32::from(CAPABILITY_VERSION);
    }
    // The Go client always asks for zstd, and our decoder only reads zstd frames.
    req.compress = "zstd".to_string();
}

impl Connection {
    pub(crate) fn new(
        send: SendRequest<Full<Bytes>>,
        driver: tokio::task::JoinHandle<()>,
        url: ServerUrl,
        server_key: MachinePublic,
    ) -> Self {
        Connection {
            send,
            url,
            server_key,
            _driver: Arc::new(Driver(driver)),
        }
    }

    /// The server's Noise key learned from `/key` and proven by the handshake.
    pub fn server_key(&self) -> MachinePublic {
        self.server_key
    }

    /// The server URL this connection was dialed from.
    pub fn url(&self) -> &str {
        &self.url.text
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// POSTs a JSON body on a new stream; `lb` are the node keys for the `Ts-Lb` hint header.
    async fn post(
        &self,
        path: &'static str,
        lb: &[NodePublic],
        body: Vec<u8>,
    ) -> Result<http::Response<Incoming>, ControlError> {
        let mut send = self.send.clone();
        send.ready().await.map_err(lost)?;
        let mut req = Request::post(format!("https://{}{path}", self.url.authority))
            .header(header::CONTENT_TYPE, "application/json");
        for k in lb.iter().filter(|k| !k.is_zero()) {
            req = req.header("Ts-Lb", k.to_string());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ControlError::Protocol {
                what: "request",
                reason: e.to_string(),
            })?;
        send.send_request(req).await.map_err(lost)
    }

    /// Reads a whole (bounded) answer; non-200 becomes [`ControlError::Status`].
    async fn collect_ok(
        path: &'static str,
        resp: http::Response<Incoming>,
    ) -> Result<Bytes, ControlError> {
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| lost(format!("reading the answer to {path}: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(ControlError::Status {
                path,
                status: status.as_u16(),
                body: text.trim().chars().take(200).collect(),
            });
        }
        Ok(body)
    }

    /// `POST /machine/register`. The server's refusal comes back as `Ok` with `Error` set; the
    /// caller decides what to do with it. `Version` and `NLKey` are filled in when unset.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ControlError> {
        let mut req = req.clone();
        fill_register(&mut req);
        let body = serde_json::to_vec(&req).map_err(|e| ControlError::Protocol {
            what: "register request",
            reason: e.to_string(),
        })?;
        let fut = async {
            let resp = self
                .post("/machine/register", &[req.node_key, req.old_node_key], body)
                .await?;
            let body = Self::collect_ok("/machine/register", resp).await?;
            serde_json::from_slice::<RegisterResponse>(&body).map_err(|e| ControlError::Protocol {
                what: "register response",
                reason: e.to_string(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .unwrap_or(Err(ControlError::Timeout {
                what: "the register request",
                secs: REQUEST_TIMEOUT.as_secs(),
            }))
    }

    /// Logs `node_key` out: a register request whose expiry lies in the past.
    pub async fn logout(&self, node_key: NodePublic) -> Result<RegisterResponse, ControlError> {
        let req = RegisterRequest {
            node_key,
            expiry: Some(tailcfg::logout_expiry()),
            ..Default::default()
        };
        let resp = self.register(&req).await?;
        if !resp.error.is_empty() {
            return Err(ControlError::LoginRefused(resp.error));
        }
        Ok(resp)
    }

    /// Opens the long-poll map stream (`Stream` is forced on). Returns once the server answered
    /// 200; messages then come from [`MapStream::next`].
    pub async fn map_stream(&self, req: &MapRequest) -> Result<MapStream, ControlError> {
        let mut req = req.clone();
        fill_map(&mut req);
        req.stream = true;
        req.omit_peers = false;
        req.keep_alive = true;
        let body = serde_json::to_vec(&req).map_err(|e| ControlError::Protocol {
            what: "map request",
            reason: e.to_string(),
        })?;
        let lb = [req.node_key];
        let fut = self.post("/machine/map", &lb, body);
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .unwrap_or(Err(ControlError::Timeout {
                what: "the map request",
                secs: REQUEST_TIMEOUT.as_secs(),
            }))?;
        if resp.status() != StatusCode::OK {
            return Err(Self::collect_ok("/machine/map", resp)
                .await
                .err()
                .unwrap_or(ControlError::Protocol {
                    what: "map response",
                    reason: "unexpected status".into(),
                }));
        }
        Ok(MapStream {
            body: resp.into_body(),
            decoder: MapFrameDecoder::new(),
        })
    }

    /// A "lite" map update (`Stream=false`, `OmitPeers=true`): reports endpoints and Hostinfo
    /// while the long poll stays open. The answer's body is ignored, as the Go client does.
    pub async fn lite_update(&self, req: &MapRequest) -> Result<(), ControlError> {
        let mut req = req.clone();
        fill_map(&mut req);
        req.stream = false;
        req.omit_peers = true;
        req.keep_alive = false;
        let body = serde_json::to_vec(&req).map_err(|e| ControlError::Protocol {
            what: "map request",
            reason: e.to_string(),
        })?;
        let fut = async {
            let resp = self.post("/machine/map", &[req.node_key], body).await?;
            Self::collect_ok("/machine/map", resp).await.map(drop)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .unwrap_or(Err(ControlError::Timeout {
                what: "the endpoint update",
                secs: REQUEST_TIMEOUT.as_secs(),
            }))
    }
}

/// The body of a streaming map request, decoded message by message.
pub struct MapStream {
    body: Incoming,
    decoder: MapFrameDecoder,
}

impl std::fmt::Debug for MapStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStream")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl MapStream {
    /// The next message, or `Ok(None)` when the server ended the stream cleanly. Cancel-safe:
    /// dropping the future loses no data, so it can sit in a `select!`.
    pub async fn next(&mut self) -> Result<Option<MapResponse>, ControlError> {
        loop {
            let msg = self
                .decoder
                .next_message()
                .map_err(|e| ControlError::Protocol {
                    what: "map stream frame",
                    reason: e.to_string(),
                })?;
            if let Some(json) = msg {
                return serde_json::from_slice(&json).map(Some).map_err(|e| {
                    ControlError::Protocol {
                        what: "map response",
                        reason: e.to_string(),
                    }
                });
            }
            match self.body.frame().await {
                None => {
                    if self.decoder.buffered_len() > 0 {
                        return Err(lost("the map stream ended in the middle of a message"));
                    }
                    return Ok(None);
                }
                Some(Err(e)) => return Err(lost(e)),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.decoder.feed(data);
                    }
                }
            }
        }
    }
}
