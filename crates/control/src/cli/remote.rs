//! The admin commands' HTTP side: calls to a running server's `/api/v2` with an API key.
//!
//! One small client over hyper (HTTP/1.1, plain `http://`). Non-2xx answers become errors that
//! carry the server's `{"message"}` text, which already tells the user what to do.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long one API call may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one server and API key.
pub struct Remote {
    base: String,
    api_key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

// The API key must not reach logs.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A raw answer.
pub struct Reply {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Remote {
    /// A client for the server at `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str, api_key: &str) -> anyhow::Result<Self> {
        let base = url
            .trim()
            .trim_end_matches('/')
            .trim_end_matches("/api/v2")
            .to_string();
        if base.starts_with("https://") {
            bail!(
                "--server {url}: https:// is not supported by the admin commands yet; use the server's http:// listen address, or --db on the server host"
            );
        }
        if !base.starts_with("http://") {
            bail!("--server {url:?} is not a URL like http://127.0.0.1:8080");
        }
        if api_key.trim().is_empty() {
            bail!(
                "--server needs an API key: pass --api-key or set CONTROL_API_KEY (create one with `control apikeys create --db <db>` on the server host)"
            );
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Remote {
            base,
            api_key: api_key.trim().to_string(),
            client,
        })
    }

    /// Sends a request to `/api/v2{path}`; non-2xx answers are errors.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let url = format!("{}/api/v2{path}", self.base);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.api_key));
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let payload = match body {
            Some((ctype, bytes)) => {
                req = req.header(header::CONTENT_TYPE, ctype);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .with_context(|| format!("invalid request URL {url}"))?;
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| anyhow!("{method} {url}: no answer within {}s", TIMEOUT.as_secs()))?
            .map_err(|e| {
                anyhow!(
                    "cannot reach the server at {}: {e} (is `control serve` running there?)",
                    self.base
                )
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| {
                anyhow!(
                    "{method} {url}: the answer did not finish within {}s",
                    TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("{method} {url}: reading the answer failed"))?
            .to_bytes();
        if !status.is_success() {
            return Err(http_error(status, &body));
        }
        Ok(Reply { headers, body })
    }

    /// Sends an optional JSON body and parses a JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let body = match body {
            Some(b) => Some(("application/json", serde_json::to_vec(b)?)),
            None => None,
        };
        let reply = self.send(method, path, body, &[]).await?;
        serde_json::from_slice(&reply.body)
            .with_context(|| format!("the server's answer to {path} is not the JSON expected"))
    }

    /// GET `path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(Method::GET, path, None::<&()>).await
    }
}

fn http_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if status == StatusCode::UNAUTHORIZED {
        return anyhow!("{message} (HTTP 401; check --api-key / CONTROL_API_KEY)");
    }
    anyhow!("{message} (HTTP {})", status.as_u16())
}

/// Percent-encodes one path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("fd7a:115c::1"), "fd7a:115c::1");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(seg("alice@example.com"), "alice@example.com");
    }

    #[test]
    fn urls_and_keys_are_checked() {
        assert!(Remote::new("https://x", "k").is_err());
        assert!(Remote::new("ftp://x", "k").is_err());
        assert!(Remote::new("http://127.0.0.1:1", " ").is_err());
    }
}
