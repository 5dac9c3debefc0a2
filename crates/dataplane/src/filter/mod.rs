//! The inbound packet filter, with Tailscale's semantics (`wgengine/filter/filter.go`).
//!
//! Driven by the engine: [`Filter::check_inbound`] runs on every decrypted packet before it may be
//! written to the TUN device and returns the [`Allowed`] proof on success;
//! [`Filter::record_outbound`] runs on every packet we send so UDP/SCTP replies get through;
//! [`Filter::expire`] runs from the engine's timer. Time is always an argument.
//!
//! The order of checks (reference §6):
//! 1. fewer than 20 bytes, unknown protocol, multicast or link-local destination (except
//!    169.254.169.254) → drop; a non-first fragment → accept;
//! 2. the destination must be local (our addresses and the routes we serve) → else drop;
//! 3. TCP: non-SYN accepted, SYN needs a full rule match; UDP/SCTP: accepted if the reverse flow
//!    was seen outbound, else needs a full rule match; ICMP echo replies and errors accepted, other
//!    ICMP needs any rule letting the source reach the destination IP; TSMP accepted; other
//!    protocols need a rule listing the protocol with ports 0–65535;
//! 4. anything else → drop (default deny). [`Filter::deny_all`] is the state before the first
//!    filter arrives.

mod flows;
mod rules;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ipnet::IpNet;
use proto::tailcfg::FilterRule;

pub use flows::{FLOW_IDLE_TIMEOUT, FlowKey, FlowTable, MAX_FLOWS};
pub use rules::RuleError;
pub(crate) use rules::range_to_prefixes;

use crate::DropReason;
use crate::packet::{PacketInfo, Transport};

/// Proof that a packet passed the inbound filter.
///
/// Zero-sized and impossible to build outside this module, and neither `Clone` nor `Copy`, so
/// the TUN-write path (which demands one) cannot be reached without running the filter.
#[derive(Debug)]
pub struct Allowed(());

/// Cloud metadata address that stays reachable despite being link-local (Tailscale's exception).
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// A compiled packet filter plus its UDP/SCTP flow memory.
#[derive(Debug)]
pub struct Filter {
    matches: Vec<rules::Match>,
    local: Vec<IpNet>,
    flows: FlowTable,
}

impl Filter {
    /// The filter before the first netmap arrives: nothing inbound is allowed.
    pub fn deny_all() -> Self {
        Filter {
            matches: Vec::new(),
            local: Vec::new(),
            flows: FlowTable::default(),
        }
    }

    /// Compiles `rules` for a node whose local prefixes (own addresses plus served routes) are
    /// `local`. Entries that fail to parse are skipped and returned; the rest still apply.
    pub fn compile(rules: &[FilterRule], local: Vec<IpNet>) -> (Self, Vec<RuleError>) {
        let (matches, errors) = rules::compile(rules);
        let local = local.into_iter().map(|n| n.trunc()).collect();
        (
            Filter {
                matches,
                local,
                flows: FlowTable::default(),
            },
            errors,
        )
    }

    /// Replaces the rules, keeping the flow memory (replies to flows in progress still pass).
    pub fn replace_rules(&mut self, rules: &[FilterRule]) -> Vec<RuleError> {
        let (matches, errors) = rules::compile(rules);
        self.matches = matches;
        errors
    }

    /// Replaces the local prefixes.
    pub fn set_local(&mut self, local: Vec<IpNet>) {
        self.local = local.into_iter().map(|n| n.trunc()).collect();
    }

    /// Whether any rule is installed (false for [`Filter::deny_all`]).
    pub fn has_rules(&self) -> bool {
        !self.matches.is_empty()
    }

    /// Records an outbound packet. Outbound traffic is always allowed; for UDP and SCTP the
    /// reverse 5-tuple is remembered so the reply passes [`Filter::check_inbound`].
    pub fn record_outbound(&mut self, p: &PacketInfo, now: Instant) {
        if matches!(p.transport, Transport::Udp { .. } | Transport::Sctp { .. }) {
            let key = FlowKey {
                proto: p.proto,
                src: p.dst,
                src_port: p.dst_port(),
                dst: p.src,
                dst_port: p.src_port(),
            };
            self.flows.insert(key, now);
        }
    }

    /// Runs the inbound filter over raw packet bytes.
    pub fn check_inbound(&mut self, packet: &[u8], now: Instant) -> Result<Allowed, DropReason> {
        if packet.len() < 20 {
            return Err(DropReason::TooShort);
        }
        let info = PacketInfo::parse(packet).map_err(|_| DropReason::Malformed)?;
        self.check_inbound_parsed(&info, now)
    }

    /// Runs the inbound filter over an already parsed packet (at least 20 bytes long).
    pub fn check_inbound_parsed(
        &mut self,
        p: &PacketInfo,
        now: Instant,
    ) -> Result<Allowed, DropReason> {
        if p.transport == Transport::Unknown {
            return Err(DropReason::UnknownProtocol);
        }
        if p.dst.is_multicast() {
            return Err(DropReason::Multicast);
        }
        if is_link_local(p.dst) && p.dst != IpAddr::V4(METADATA_V4) {
            return Err(DropReason::LinkLocal);
        }
        if p.transport == Transport::LaterFragment {
            // Only the first fragment carries ports; it was filtered on its own.
            return Ok(Allowed(()));
        }
        if !self.local.iter().any(|n| n.contains(&p.dst)) {
            return Err(DropReason::NotLocal);
        }
        let ok = match p.transport {
            Transport::Tcp { .. } => !p.is_tcp_syn() || rules::matches_full(&self.matches, p),
            Transport::Udp { .. } | Transport::Sctp { .. } => {
                let key = FlowKey {
                    proto: p.proto,
                    src: p.src,
                    src_port: p.src_port(),
                    dst: p.dst,
                    dst_port: p.dst_port(),
                };
                self.flows.contains(&key, now) || rules::matches_full(&self.matches, p)
            }
            Transport::Icmp { .. } => {
                p.is_icmp_echo_reply()
                    || p.is_icmp_error()
                    || rules::matches_ips_only(&self.matches, p)
            }
            Transport::Tsmp => true,
            Transport::Other => rules::matches_proto_all_ports(&self.matches, p),
            Transport::LaterFragment | Transport::Unknown => false,
        };
        if ok {
            Ok(Allowed(()))
        } else {
            Err(DropReason::FilterDenied)
        }
    }

    /// Forgets idle UDP/SCTP flows.
    pub fn expire(&mut self, now: Instant) {
        self.flows.expire(now);
    }

    /// Number of remembered outbound flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests;
