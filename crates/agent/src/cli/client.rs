//! The CLI's side of the local API: one HTTP/1.1 request per call over the daemon's Unix
//! socket, with connection failures turned into advice a user can follow.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::ipn::{API_PREFIX, ApiError};

/// Why a local API call failed. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "cannot connect to the agent daemon at {}: is `agent daemon` running? \
         (systemctl start agent)",
        path.display()
    )]
    NotRunning { path: PathBuf },
    /// The socket exists but this user may not use it.
    #[error(
        "permission denied on {}: run this command as root (sudo) or as a member of the \
         daemon's --socket-group",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    /// Some other failure reaching the daemon.
    #[error("cannot talk to the agent daemon at {}: {reason}", path.display())]
    Connection { path: PathBuf, reason: String },
    /// The daemon refused the request; its message is shown verbatim.
    #[error("{message}")]
    Server { status: u16, message: String },
    /// The daemon's answer did not parse.
    #[error(
        "the agent daemon sent an answer this CLI does not understand ({0}); are the CLI and \
         the daemon the same version? (agent version --daemon)"
    )]
    BadAnswer(String),
}

/// A handle on the daemon's socket.
#[derive(Debug, Clone)]
pub struct LocalClient {
    socket: PathBuf,
}

impl LocalClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// `GET /localapi/v0/{endpoint}` (the endpoint may carry a query string).
    pub async fn get<T: DeserializeOwned>(&self, endpoint: &str) -> Result<T, ClientError> {
        self.call(Method::GET, endpoint, Bytes::new()).await
    }

    /// `POST /localapi/v0/{endpoint}` with `body` as JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        self.call(Method::POST, endpoint, Bytes::from(body)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let (status, body) = self.request(method, endpoint, body).await?;
        if !status.is_success() {
            // The daemon always sends {"error": ...}; anything else is shown as it came.
            let message = match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => e.error,
                Err(_) => format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()),
            };
            return Err(ClientError::Server {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    async fn request(
        &self,
        method: Method,
        endpoint: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.connection_error(e))?;
        // The connection task ends when `sender` is dropped after the one request.
        tokio::spawn(conn);

        let req = Request::builder()
            .method(method)
            .uri(format!("{API_PREFIX}{endpoint}"))
            // HTTP/1.1 requires a Host; the socket path is what identifies the daemon.
            .header(header::HOST, "local-agent")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| self.connection_error(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.connection_error(e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.connection_error(e))?;
        Ok((status, body.to_bytes()))
    }

    fn connect_error(&self, e: io::Error) -> ClientError {
        let path = self.socket.clone();
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { path }
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
            _ => ClientError::Connection {
                path,
                reason: e.to_string(),
            },
        }
    }

    fn connection_error(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Connection {
            path: self.socket.clone(),
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_says_how_to_start_the_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.sock");
        let err = LocalClient::new(&path)
            .get::<serde_json::Value>("status")
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("is `agent daemon` running?"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}
