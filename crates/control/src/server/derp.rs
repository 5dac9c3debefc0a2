//! The embedded DERP relay and STUN server, and the DERP map that announces them.
//!
//! With no operator certificate, the relay uses a self-signed one (kept in the data directory so
//! it survives restarts) and pins it through the DERP map's `CertName: "sha256-raw:<hex>"`,
//! which Tailscale clients verify instead of a CA chain.

use std::net::{IpAddr, SocketAddr};

use nat::derp::listener::{DerpServerConfig, DerpServerHandle, spawn_derp_server};
use nat::stun_server::{StunServerHandle, spawn_stun_server};
use nat::tls::TlsConfig;
use proto::tailcfg::{DerpMap, DerpNode, DerpRegion};

use super::ServerError;
use crate::config::Settings;
use crate::model::ServerKeys;

/// The running relay and STUN listeners.
pub struct Relay {
    pub derp: Option<DerpServerHandle>,
    pub stun: Option<StunServerHandle>,
}

impl Relay {
    pub async fn shutdown(self) {
        if let Some(d) = self.derp {
            d.shutdown().await;
        }
        if let Some(s) = self.stun {
            s.shutdown().await;
        }
    }
}

/// Starts DERP (if enabled) and STUN (if enabled).
pub async fn start(s: &Settings, keys: &ServerKeys) -> Result<Option<Relay>, ServerError> {
    let bind_ip = s.derp.as_ref().map_or(s.listen.ip(), |d| d.bind);
    let derp = match &s.derp {
        Some(d) => {
            let tls = match &d.cert {
                Some((cert, key)) => TlsConfig::PemFiles {
                    cert_path: cert.clone(),
                    key_path: key.clone(),
                },
                None => TlsConfig::SelfSigned {
                    hostname: d.host.clone(),
                    state_dir: s.data_dir.clone(),
                },
            };
            let cfg = DerpServerConfig::new(
                SocketAddr::new(d.bind, d.port),
                Some(tls),
                keys.derp.clone(),
            );
            let h = spawn_derp_server(cfg)
                .await
                .map_err(|e| ServerError::Derp(e.to_string()))?;
            tracing::info!(addr = %h.local_addr(), region = d.region_id, "DERP relay listening");
            Some(h)
        }
        None => None,
    };
    let stun = if s.stun_port != 0 {
        let addr = SocketAddr::new(bind_ip, s.stun_port);
        let h = spawn_stun_server(addr)
            .await
            .map_err(|e| ServerError::Listen { addr, source: e })?;
        tracing::info!(addr = %h.local_addr(), "STUN server listening");
        Some(h)
    } else {
        None
    };
    if derp.is_none() && stun.is_none() {
        return Ok(None);
    }
    Ok(Some(Relay { derp, stun }))
}

/// The DERP map sent to every node: the embedded region (if any) plus regions from
/// `--derp-map`.
pub fn derp_map(s: &Settings, relay: Option<&Relay>) -> Result<DerpMap, ServerError> {
    let mut map = match &s.derp_map_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ServerError::Derp(format!("cannot read --derp-map {}: {e}", path.display()))
            })?;
            serde_json::from_str::<DerpMap>(&text).map_err(|e| {
                ServerError::Derp(format!(
                    "--derp-map {}: not a DERP map: {e}",
                    path.display()
                ))
            })?
        }
        None => DerpMap::default(),
    };
    map.omit_default_regions = true;
    let Some(relay) = relay else { return Ok(map) };
    let host = s.derp.as_ref().map(|d| d.host.clone()).unwrap_or_else(|| {
        crate::config::url_host(&s.server_url).unwrap_or_else(|| "127.0.0.1".to_string())
    });
    let region_id = s.derp.as_ref().map_or(999, |d| i32::from(d.region_id));
    let (ipv4, ipv6) = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => (host.clone(), "none".to_string()),
        Ok(IpAddr::V6(_)) => ("none".to_string(), host.clone()),
        Err(_) => (String::new(), String::new()),
    };
    let node = DerpNode {
        name: format!("{region_id}a"),
        region_id,
        host_name: host,
        cert_name: relay
            .derp
            .as_ref()
            .and_then(|d| d.cert_name_pin().map(str::to_string))
            .unwrap_or_default(),
        ipv4,
        ipv6,
        stun_port: relay
            .stun
            .as_ref()
            .map_or(-1, |h| i32::from(h.local_addr().port())),
        stun_only: relay.derp.is_none(),
        derp_port: relay
            .derp
            .as_ref()
            .map_or(0, |h| i32::from(h.local_addr().port())),
        ..Default::default()
    };
    map.regions.insert(
        region_id,
        DerpRegion {
            region_id,
            region_code: "control".into(),
            region_name: "Embedded relay".into(),
            nodes: vec![node],
            ..Default::default()
        },
    );
    Ok(map)
}
