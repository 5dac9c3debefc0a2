//! UPnP IGD port mapping (feature `portmap`), through the `igd-next` crate on tokio: an SSDP
//! search on the LAN, then SOAP calls to the gateway's WANIPConnection service.
//!
//! Unlike NAT-PMP and PCP this is not sans-IO: igd-next does its own I/O (HTTP and SSDP), so only
//! the [`super::io`] shell calls it, as a fallback when neither NAT-PMP nor PCP answers (UPnP is
//! the slowest and least predictable of the three, as in Tailscale's portmapper).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use igd_next::PortMappingProtocol;
use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;

use super::{Mapping, PortmapError, Protocol};

/// The description a mapping carries in the gateway's table.
const DESCRIPTION: &str = "tailscale-rs wireguard";

/// A UPnP Internet Gateway Device found on the LAN.
#[derive(Debug)]
pub struct UpnpGateway {
    gateway: Gateway<Tokio>,
    local_ip: Ipv4Addr,
}

/// Searches the LAN for an IGD with SSDP from `local_ip`, waiting at most `timeout`.
pub async fn search(local_ip: Ipv4Addr, timeout: Duration) -> Result<UpnpGateway, PortmapError> {
    let mut opts = igd_next::SearchOptions::default();
    opts.bind_addr = SocketAddr::from((local_ip, 0));
    opts.timeout = Some(timeout);
    opts.single_search_timeout = Some(timeout);
    opts.gateway_ip_version = igd_next::GatewayIpVersion::V4;
    let gateway = igd_next::aio::tokio::search_gateway(opts)
        .await
        .map_err(upnp_err)?;
    tracing::debug!(gateway = %gateway.addr, "found a UPnP IGD");
    Ok(UpnpGateway { gateway, local_ip })
}

impl UpnpGateway {
    /// The address of the gateway's HTTP (SOAP) service.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.addr
    }

    /// The gateway's public address.
    pub async fn external_ip(&self) -> Result<Ipv4Addr, PortmapError> {
        match self.gateway.get_external_ip().await.map_err(upnp_err)? {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(v6) => Err(PortmapError::Upnp(format!(
                "external address {v6} is not IPv4"
            ))),
        }
    }

    /// Maps UDP `suggested_external` (or any free port if that is taken) to our
    /// `internal_port` for `lifetime`.
    pub async fn map(
        &self,
        internal_port: u16,
        suggested_external: u16,
        lifetime: Duration,
    ) -> Result<Mapping, PortmapError> {
        let local = SocketAddr::from((self.local_ip, internal_port));
        let lease = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        let port = match self
            .gateway
            .add_port(
                PortMappingProtocol::UDP,
                suggested_external,
                local,
                lease,
                DESCRIPTION,
            )
            .await
        {
            Ok(()) => suggested_external,
            Err(e) => {
                tracing::debug!(error = %e, "UPnP AddPortMapping failed, asking for any port");
                self.gateway
                    .add_any_port(PortMappingProtocol::UDP, local, lease, DESCRIPTION)
                    .await
                    .map_err(upnp_err)?
            }
        };
        let ip = self.external_ip().await?;
        Ok(Mapping {
            protocol: Protocol::Upnp,
            external: SocketAddr::from((ip, port)),
            internal_port,
            lifetime,
        })
    }

    /// Deletes the mapping of UDP `external_port`.
    pub async fn unmap(&self, external_port: u16) -> Result<(), PortmapError> {
        self.gateway
            .remove_port(PortMappingProtocol::UDP, external_port)
            .await
            .map_err(upnp_err)
    }
}

fn upnp_err(e: impl std::fmt::Display) -> PortmapError {
    PortmapError::Upnp(e.to_string())
}
