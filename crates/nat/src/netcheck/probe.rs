//! The I/O half of netcheck (tokio): HTTPS latency to each DERP region for networks where UDP
//! is blocked, and whether the OS has IPv6 at all.
//!
//! [`https_latencies`] dials every measurable region's first DERP node concurrently (TCP + TLS
//! with the same certificate rules as the DERP client: `CertName` pins, names, or
//! `InsecureForTests`), then times one `GET /derp/latency-check` on the established connection,
//! like Go's `measureHTTPSLatency` (server processing time, not the handshakes). Regions that do
//! not answer within the overall budget (5 s, reference §6) are left out.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proto::tailcfg::{DerpMap, DerpNode};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::HttpsLatency;
use crate::derp::dial::{TlsVerify, client_tls_config};

/// Budget for the whole HTTPS phase (all regions in parallel).
pub const HTTPS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why one HTTPS latency probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpsProbeError {
    /// The node has neither a usable IPv4/IPv6 literal nor a host name that resolves.
    #[error("DERP node {node} has no usable address")]
    NoAddress {
        /// The node's name.
        node: String,
    },
    /// Connecting, the TLS handshake (including a certificate mismatch), or the request failed.
    #[error("HTTPS latency probe to DERP node {node} failed: {source}")]
    Io {
        /// The node's name.
        node: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The server answered with something other than 200.
    #[error("HTTPS latency probe to DERP node {node} got an unexpected answer: {answer}")]
    BadResponse {
        /// The node's name.
        node: String,
        /// The status line, or what was wrong with the response.
        answer: String,
    },
    /// No answer in time.
    #[error("HTTPS latency probe to DERP node {node} timed out")]
    Timeout {
        /// The node's name.
        node: String,
    },
}

/// Measures every region of `map` that may be measured (not `NoMeasureNoHome`, with a DERP
/// node), concurrently, within `budget` (use [`HTTPS_PROBE_TIMEOUT`]). Failures are logged
/// and left out. `roots` verifies nodes without a `sha256-raw:` CertName.
pub async fn https_latencies(
    map: &DerpMap,
    roots: Arc<RootCertStore>,
    budget: Duration,
) -> Vec<HttpsLatency> {
    let deadline = Instant::now() + budget;
    let mut tasks = tokio::task::JoinSet::new();
    for (id, region) in &map.regions {
        let Ok(region_id) = u16::try_from(*id) else {
            continue;
        };
        if region.no_measure_no_home {
            continue;
        }
        let Some(node) = region.nodes.iter().find(|n| !n.stun_only).cloned() else {
            continue;
        };
        let roots = roots.clone();
        tasks.spawn(async move {
            let r = measure_node(&node, region_id, roots, deadline).await;
            (node.name, r)
        });
    }
    let mut out = Vec::new();
    // Every task carries the same deadline, so this ends by then too.
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(lat))) => out.push(lat),
            Ok((name, Err(e))) => tracing::debug!(node = %name, error = %e, "HTTPS latency probe"),
            Err(e) => tracing::debug!(error = %e, "HTTPS latency probe task failed"),
        }
    }
    out.sort_by_key(|l| l.region_id);
    out
}

/// One HTTPS latency measurement to `node` (of region `region_id`), finished by `deadline`.
pub async fn measure_node(
    node: &DerpNode,
    region_id: u16,
    roots: Arc<RootCertStore>,
    deadline: Instant,
) -> Result<HttpsLatency, HttpsProbeError> {
    match tokio::time::timeout_at(deadline, measure_inner(node, region_id, roots)).await {
        Ok(r) => r,
        Err(_) => Err(HttpsProbeError::Timeout {
            node: node.name.clone(),
        }),
    }
}

async fn measure_inner(
    node: &DerpNode,
    region_id: u16,
    roots: Arc<RootCertStore>,
) -> Result<HttpsLatency, HttpsProbeError> {
    let name = node.name.clone();
    let io_err = |source| HttpsProbeError::Io {
        node: name.clone(),
        source,
    };
    let port = u16::try_from(node.derp_port)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(443);
    let addr = node_addr(node, port)
        .await
        .ok_or(HttpsProbeError::NoAddress { node: name.clone() })?;
    let verify = if node.insecure_for_tests {
        TlsVerify::InsecureForTests
    } else {
        TlsVerify::from_cert_name(
            Some(node.cert_name.as_str()).filter(|c| !c.is_empty()),
            roots,
        )
    };
    let host = if node.host_name.is_empty() {
        addr.ip().to_string()
    } else {
        node.host_name.clone()
    };
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| HttpsProbeError::NoAddress { node: name.clone() })?;
    // Through the DERP dialer's socket hook: the agent marks it so the probe never enters its
    // own tunnel (exit node), like every other relay connection.
    let tcp = crate::derp::dial::connect_tcp(&[addr])
        .await
        .map_err(io_err)?;
    tcp.set_nodelay(true).map_err(io_err)?;
    let connector = tokio_rustls::TlsConnector::from(client_tls_config(&verify).map_err(io_err)?);
    let mut tls = connector.connect(server_name, tcp).await.map_err(io_err)?;

    let host_header = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let request = format!(
        "GET /derp/latency-check HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: tailscale-rs netcheck\r\nConnection: close\r\n\r\n"
    );
    let start = Instant::now();
    tls.write_all(request.as_bytes()).await.map_err(io_err)?;
    tls.flush().await.map_err(io_err)?;
    let (head, _) = crate::derp::http::read_head(&mut tls)
        .await
        .map_err(io_err)?;
    let latency = start.elapsed();

    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let status = match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
        _ => 0,
    };
    if status != 200 {
        let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default())
            .into_owned();
        return Err(HttpsProbeError::BadResponse {
            node: name,
            answer: line,
        });
    }
    Ok(HttpsLatency {
        region_id,
        latency,
        addr,
    })
}

/// The node's literal IPv4, else IPv6, else its host name resolved (`"none"` disables a family).
async fn node_addr(node: &DerpNode, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = node.ipv4.parse::<Ipv4Addr>() {
        return Some(SocketAddr::new(ip.into(), port));
    }
    if let Ok(ip) = node.ipv6.parse::<Ipv6Addr>() {
        return Some(SocketAddr::new(ip.into(), port));
    }
    if node.host_name.is_empty() {
        return None;
    }
    let v4_ok = node.ipv4 != "none";
    let v6_ok = node.ipv6 != "none";
    tokio::net::lookup_host((node.host_name.as_str(), port))
        .await
        .ok()?
        .find(|a| if a.is_ipv4() { v4_ok } else { v6_ok })
}

/// Whether the OS can use IPv6: binding a UDP socket to `[::1]:0` works (Go `OSHasIPv6`).
pub fn os_has_ipv6() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}
