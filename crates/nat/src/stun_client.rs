//! The STUN side of netcheck: probe the relays' STUN servers from the agent's own UDP socket,
//! learn our public (mapped) addresses, per-region latency, whether the NAT is "hard", and pick a
//! home DERP region.
//!
//! Sans-IO. Drive a [`StunClient`] like this:
//!
//! 1. [`StunClient::set_regions`] with the STUN servers (from the DERP map via
//!    [`regions_from_derp_map`], or hand-built).
//! 2. [`StunClient::start_report`] to begin a probe round (the agent does this every 20–26 s while
//!    active, on link changes, …).
//! 3. Drain [`StunClient::poll_transmit`]: send each 40-byte request from the **same** UDP socket
//!    that carries WireGuard, so the mapping learned is the one peers must use.
//! 4. Feed every datagram that [`proto::disco::classify`] calls STUN to
//!    [`StunClient::handle_datagram`]; replies are matched by transaction ID.
//! 5. Call [`StunClient::handle_timeout`] at [`StunClient::poll_timeout`]; retries (100 ms and
//!    200 ms after the first attempt, rotating through a region's servers) and the end of the
//!    round are timer-driven.
//! 6. [`StunClient::poll_event`] yields [`StunEvent::ReportReady`] when the round ends.
//!
//! Reference: `tailscale-derp-disco-nat.md` §3 and §6 (Go `net/netcheck/netcheck.go`).
//! Simplifications: every round is a "full" report (all regions, three attempts per family);
//! there is no HTTPS/ICMP fallback, port mapping or captive-portal check.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proto::stun::{REQUEST_LEN, TxId, binding_request, parse_binding_response};
use proto::tailcfg::DerpMap;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Attempts per region and address family, sent at these offsets from the round's start.
pub const ATTEMPT_OFFSETS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(200),
];
/// The STUN phase of a report never lasts longer than this.
pub const STUN_PHASE_MAX: Duration = Duration::from_secs(3);
/// Region latencies are the best seen over this window of past reports.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// A home region we got a DERP frame from this recently counts as reachable in this round.
pub const HOME_HEARD_RECENTLY: Duration = Duration::from_secs(8);
/// With no STUN answers at all, keep a home region heard from this recently.
pub const HOME_HEARD_FALLBACK: Duration = Duration::from_secs(120);
/// Keep the old home unless the best region is at least this much faster…
pub const HOME_STICKY_ABS: Duration = Duration::from_millis(10);
/// Default STUN port of a DERP node (`STUNPort` 0).
pub const DEFAULT_STUN_PORT: u16 = 3478;
/// After this many regions answered, stop waiting once the slowest latency seen has elapsed
/// again (twice, as on Go's full reports).
const ENOUGH_REGIONS: usize = 3;

/// A region's `HomeParams.RegionScore` as a latency multiplier: missing, zero, negative or
/// non-finite scores count as 1, and the rest are clamped to [1/1000, 1000] so that scaling a
/// latency can never overflow (`Duration::mul_f64` panics on overflow; the map comes from the
/// network).
pub fn region_score(raw: Option<f64>) -> f64 {
    match raw {
        Some(s) if s.is_finite() && s > 0.0 => s.clamp(1e-3, 1e3),
        _ => 1.0,
    }
}

/// One STUN server of a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StunServer {
    /// The node's name, for logs (`"900a"`).
    pub name: String,
    /// Literal addresses to probe (IPv4 and/or IPv6).
    pub addrs: Vec<IpAddr>,
    /// UDP port of the STUN service.
    pub port: u16,
}

/// A DERP region as far as STUN is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct StunRegion {
    /// The region ID (the DERP map key; also the home DERP value sent to control).
    pub region_id: u16,
    /// Servers in preference order; attempts rotate through them.
    pub servers: Vec<StunServer>,
    /// `DERPMap.HomeParams.RegionScore`: latency multiplier for home selection (1.0 = neutral).
    pub score: f64,
    /// Measure latency but never pick as home (`Avoid`).
    pub avoid: bool,
}

/// Converts a DERP map to STUN regions. Only literal `IPv4`/`IPv6` node addresses are used
/// (resolving `HostName` is the shell's job; nodes without literal IPs are skipped), `STUNPort`
/// 0 means 3478 and a negative port disables STUN on that node. `NoMeasureNoHome` regions are
/// left out.
pub fn regions_from_derp_map(map: &DerpMap) -> Vec<StunRegion> {
    let scores = map.home_params.as_ref().map(|h| &h.region_score);
    let mut out = Vec::new();
    for (id, region) in &map.regions {
        let Ok(region_id) = u16::try_from(*id) else {
            continue;
        };
        if region.no_measure_no_home {
            continue;
        }
        let servers: Vec<StunServer> = region
            .nodes
            .iter()
            .filter_map(|n| {
                let port = match n.stun_port {
                    0 => DEFAULT_STUN_PORT,
                    p => u16::try_from(p).ok()?,
                };
                let addrs: Vec<IpAddr> = [&n.ipv4, &n.ipv6]
                    .into_iter()
                    .filter_map(|s| s.parse().ok())
                    .collect();
                (!addrs.is_empty()).then(|| StunServer {
                    name: n.name.clone(),
                    addrs,
                    port,
                })
            })
            .collect();
        if servers.is_empty() {
            continue;
        }
        let score = region_score(scores.and_then(|s| s.get(id)).copied());
        out.push(StunRegion {
            region_id,
            servers,
            score,
            avoid: region.avoid,
        });
    }
    out
}

/// The outcome of one probe round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Any STUN reply arrived.
    pub udp: bool,
    /// A reply arrived over IPv4.
    pub ipv4: bool,
    /// A reply arrived over IPv6.
    pub ipv6: bool,
    /// Our public IPv4 ip:port (from the first IPv4 reply).
    pub global_v4: Option<SocketAddr>,
    /// Our public IPv6 ip:port.
    pub global_v6: Option<SocketAddr>,
    /// IPv4 only: `Some(true)` when two servers saw different mappings (an endpoint-dependent,
    /// "hard" NAT where direct connections usually need the peer to be reachable). `None` with
    /// fewer than two IPv4 answers.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Best round-trip time per region, either family.
    pub region_latency: BTreeMap<u16, Duration>,
    /// Best IPv4 round-trip time per region.
    pub region_v4_latency: BTreeMap<u16, Duration>,
    /// Best IPv6 round-trip time per region.
    pub region_v6_latency: BTreeMap<u16, Duration>,
    /// The mapped address each server reported (server address → our address as it saw it).
    pub mapped: BTreeMap<SocketAddr, SocketAddr>,
    /// The chosen home region (with stickiness), if any region is usable.
    pub preferred_derp: Option<u16>,
}

impl Report {
    /// Our STUN-derived endpoints to advertise: the global v4/v6 addresses plus any other
    /// mapping observed more than once (reference §3.2, `EndpointSTUN`).
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self.global_v4.into_iter().chain(self.global_v6).collect();
        let mut counts: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for m in self.mapped.values() {
            *counts.entry(*m).or_default() += 1;
        }
        for (addr, n) in counts {
            if n > 1 && !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }
}

/// A STUN request to send from the agent's WireGuard UDP socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StunTransmit {
    /// The STUN server.
    pub dest: SocketAddr,
    /// The 40-byte Binding Request.
    pub payload: [u8; REQUEST_LEN],
}

/// Something the STUN client wants the agent to know.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum StunEvent {
    /// A probe round finished.
    ReportReady(Report),
}

/// Which address families to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    /// Probe IPv4 servers.
    pub ipv4: bool,
    /// Probe IPv6 servers (only if the OS can bind an IPv6 socket).
    pub ipv6: bool,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Debug)]
struct PendingAttempt {
    at: Instant,
    region: u16,
    family: Family,
    dest: SocketAddr,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    sent_at: Instant,
    region: u16,
    family: Family,
    server: SocketAddr,
}

#[derive(Debug)]
struct Round {
    started: Instant,
    deadline: Instant,
    /// Attempts not sent yet, in time order.
    pending: Vec<PendingAttempt>,
    /// Sent requests by transaction ID.
    in_flight: BTreeMap<[u8; 12], InFlight>,
    /// (region, family) sets that already got an answer; their other attempts are cancelled.
    answered: BTreeSet<(u16, Family)>,
    report: Report,
    /// Order of IPv4 answers, to take `global_v4` from the first.
    first_v4: Option<SocketAddr>,
    v4_mappings: BTreeSet<SocketAddr>,
    /// IPv4 server addresses that answered: a verdict on the mapping needs two of them.
    v4_servers: BTreeSet<IpAddr>,
}

/// The STUN prober and home-region chooser. See the module documentation for the driving loop.
#[derive(Debug)]
pub struct StunClient {
    regions: Vec<StunRegion>,
    families: Families,
    rng: StdRng,
    round: Option<Round>,
    transmits: VecDeque<StunTransmit>,
    events: VecDeque<StunEvent>,
    /// Past per-region latencies with the time measured, for the 5-minute best-of window.
    history: VecDeque<(Instant, BTreeMap<u16, Duration>)>,
    home: Option<u16>,
    /// When a DERP frame was last received per region (fed by the DERP shell).
    derp_heard: BTreeMap<u16, Instant>,
    last_report: Option<Report>,
}

impl StunClient {
    /// A client with no regions. `rng_seed` feeds transaction IDs (32 OS-random bytes in
    /// production).
    pub fn new(rng_seed: [u8; 32], families: Families) -> Self {
        Self {
            regions: Vec::new(),
            families,
            rng: StdRng::from_seed(rng_seed),
            round: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            history: VecDeque::new(),
            home: None,
            derp_heard: BTreeMap::new(),
            last_report: None,
        }
    }

    /// Replaces the set of regions to probe. Takes effect at the next [`Self::start_report`].
    pub fn set_regions(&mut self, regions: Vec<StunRegion>) {
        self.regions = regions;
    }

    /// Changes which families are probed from the next round on.
    pub fn set_families(&mut self, families: Families) {
        self.families = families;
    }

    /// Records that a DERP frame arrived from `region`: evidence for home-region stickiness.
    pub fn note_derp_heard(&mut self, region: u16, now: Instant) {
        self.derp_heard.insert(region, now);
    }

    /// The current home region, if chosen.
    pub fn preferred_derp(&self) -> Option<u16> {
        self.home
    }

    /// The most recent finished report.
    pub fn last_report(&self) -> Option<&Report> {
        self.last_report.as_ref()
    }

    /// Whether a round is in progress.
    pub fn is_running(&self) -> bool {
        self.round.is_some()
    }

    /// Starts a probe round (a round already running is abandoned). Every region gets three
    /// attempts per enabled family at 0, 100 and 200 ms, rotating through its servers.
    pub fn start_report(&mut self, now: Instant) {
        let mut pending = Vec::new();
        for region in &self.regions {
            for family in [Family::V4, Family::V6] {
                let enabled = match family {
                    Family::V4 => self.families.ipv4,
                    Family::V6 => self.families.ipv6,
                };
                if !enabled {
                    continue;
                }
                let dests: Vec<SocketAddr> = region
                    .servers
                    .iter()
                    .flat_map(|s| {
                        s.addrs
                            .iter()
                            .filter(|ip| family_of(ip) == family)
                            .map(|ip| SocketAddr::new(*ip, s.port))
                    })
                    .collect();
                if dests.is_empty() {
                    continue;
                }
                for (i, offset) in ATTEMPT_OFFSETS.iter().enumerate() {
                    let Some(dest) = dests.get(i % dests.len()) else {
                        continue;
                    };
                    pending.push(PendingAttempt {
                        at: now + *offset,
                        region: region.region_id,
                        family,
                        dest: *dest,
                    });
                }
            }
        }
        pending.sort_by_key(|p| p.at);
        self.round = Some(Round {
            started: now,
            deadline: now + STUN_PHASE_MAX,
            pending,
            in_flight: BTreeMap::new(),
            answered: BTreeSet::new(),
            report: Report::default(),
            first_v4: None,
            v4_mappings: BTreeSet::new(),
            v4_servers: BTreeSet::new(),
        });
        self.handle_timeout(now);
    }

    /// Feeds a datagram received from `from` on the agent's UDP socket. Returns `true` if it was
    /// a reply to one of our requests (and was consumed), `false` if it is not ours.
    pub fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> bool {
        let Ok((tx, mapped)) = parse_binding_response(datagram) else {
            return false;
        };
        let Some(round) = self.round.as_mut() else {
            return false;
        };
        let Some(probe) = round.in_flight.remove(&tx.0) else {
            return false;
        };
        // Replies come back from the server we asked; anything else is spoofed or confused.
        if unmap(probe.server) != unmap(from) {
            round.in_flight.insert(tx.0, probe);
            return false;
        }
        let rtt = now.saturating_duration_since(probe.sent_at);
        let r = &mut round.report;
        r.udp = true;
        let best = |m: &mut BTreeMap<u16, Duration>| {
            let e = m.entry(probe.region).or_insert(rtt);
            *e = (*e).min(rtt);
        };
        best(&mut r.region_latency);
        match probe.family {
            Family::V4 => {
                r.ipv4 = true;
                best(&mut r.region_v4_latency);
                if round.first_v4.is_none() {
                    round.first_v4 = Some(mapped);
                    r.global_v4 = Some(mapped);
                }
                round.v4_mappings.insert(mapped);
                round.v4_servers.insert(unmap(probe.server).ip());
                // One server (or one server IP) cannot tell an endpoint-dependent NAT apart.
                if round.v4_mappings.len() > 1 {
                    r.mapping_varies_by_dest_ip = Some(true);
                } else if round.v4_servers.len() > 1 {
                    r.mapping_varies_by_dest_ip = Some(false);
                }
            }
            Family::V6 => {
                r.ipv6 = true;
                best(&mut r.region_v6_latency);
                r.global_v6.get_or_insert(mapped);
            }
        }
        r.mapped.insert(probe.server, mapped);
        // One answer per (region, family) is enough: cancel the remaining attempts of that set.
        round.answered.insert((probe.region, probe.family));
        round
            .pending
            .retain(|p| !(p.region == probe.region && p.family == probe.family));
        // Once a few regions answered, stop after the slowest latency so far has elapsed again
        // (doubled), instead of waiting the full STUN phase for far or dead regions.
        let regions_answered = round.report.region_latency.len();
        if regions_answered >= ENOUGH_REGIONS {
            let slowest = round
                .report
                .region_latency
                .values()
                .max()
                .copied()
                .unwrap_or_default();
            round.deadline = round.deadline.min(now + slowest * 2);
        }
        self.handle_timeout(now);
        true
    }

    /// Sends due attempts and finishes the round when everything answered or time ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        while let Some(first) = round.pending.first() {
            if first.at > now {
                break;
            }
            let attempt = round.pending.remove(0);
            let mut tx = [0u8; 12];
            self.rng.fill_bytes(&mut tx);
            round.in_flight.insert(
                tx,
                InFlight {
                    sent_at: now,
                    region: attempt.region,
                    family: attempt.family,
                    server: attempt.dest,
                },
            );
            self.transmits.push_back(StunTransmit {
                dest: attempt.dest,
                payload: binding_request(TxId(tx)),
            });
        }
        let all_sets_answered = round.pending.is_empty()
            && round
                .in_flight
                .values()
                .all(|p| round.answered.contains(&(p.region, p.family)));
        if now >= round.deadline || all_sets_answered {
            self.finish_round(now);
        }
    }

    /// When [`Self::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let round = self.round.as_ref()?;
        let next_attempt = round.pending.first().map(|p| p.at);
        Some(next_attempt.map_or(round.deadline, |a| a.min(round.deadline)))
    }

    /// The next STUN request to send.
    pub fn poll_transmit(&mut self) -> Option<StunTransmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<StunEvent> {
        self.events.pop_front()
    }

    fn finish_round(&mut self, now: Instant) {
        let Some(round) = self.round.take() else {
            return;
        };
        let mut report = round.report;
        self.history.push_back((now, report.region_latency.clone()));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > LATENCY_WINDOW)
        {
            self.history.pop_front();
        }
        let home = self.choose_home(&report, round.started, now);
        self.home = home;
        report.preferred_derp = home;
        self.last_report = Some(report.clone());
        self.events.push_back(StunEvent::ReportReady(report));
    }

    /// Home choice (reference §6): best latency per region over the last 5 minutes, scaled by
    /// the region score; the lowest wins, but the old home is kept while it is still reachable
    /// and the winner is not clearly better.
    fn choose_home(&self, report: &Report, started: Instant, now: Instant) -> Option<u16> {
        let mut best_by_region: BTreeMap<u16, Duration> = BTreeMap::new();
        for (_, lat) in &self.history {
            for (region, d) in lat {
                let e = best_by_region.entry(*region).or_insert(*d);
                *e = (*e).min(*d);
            }
        }
        let scored = |region: u16, d: Duration| -> Duration {
            let score = self
                .regions
                .iter()
                .find(|r| r.region_id == region)
                .map_or(1.0, |r| r.score);
            d.mul_f64(score)
        };
        let eligible = |region: &u16| {
            !self
                .regions
                .iter()
                .any(|r| r.region_id == *region && r.avoid)
        };
        // Only regions that answered in this report are candidates.
        let best = report
            .region_latency
            .keys()
            .filter(|r| eligible(r))
            .filter_map(|r| best_by_region.get(r).map(|d| (*r, scored(*r, *d))))
            .min_by_key(|(r, d)| (*d, *r));

        let old = self.home;
        // Whether the region's relay sent us a frame no earlier than `window` before `reference`.
        let heard_within = |region: u16, window: Duration, reference: Instant| {
            self.derp_heard
                .get(&region)
                .is_some_and(|t| *t + window >= reference)
        };
        let Some((best_region, best_lat)) = best else {
            // Nothing answered: keep the old home if its relay was heard from recently.
            return old.filter(|h| heard_within(*h, HOME_HEARD_FALLBACK, now));
        };
        let Some(old) = old else {
            return Some(best_region);
        };
        if old == best_region {
            return Some(old);
        }
        let old_lat = best_by_region.get(&old).map(|d| scored(old, *d));
        let old_reachable = report.region_latency.contains_key(&old)
            || heard_within(old, HOME_HEARD_RECENTLY, started);
        if old_reachable {
            match old_lat {
                Some(old_lat) => {
                    let close = old_lat.saturating_sub(best_lat) < HOME_STICKY_ABS;
                    let not_much_better = best_lat.mul_f64(3.0) > old_lat.mul_f64(2.0);
                    if close || not_much_better {
                        return Some(old);
                    }
                }
                // Reachable via DERP but no latency: no evidence the new one is better.
                None => return Some(old),
            }
        }
        Some(best_region)
    }
}

fn family_of(ip: &IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::stun::{binding_response, parse_binding_request};

    fn region(id: u16, servers: &[&str]) -> StunRegion {
        StunRegion {
            region_id: id,
            servers: servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let a: SocketAddr = s.parse().unwrap();
                    StunServer {
                        name: format!("{id}{i}"),
                        addrs: vec![a.ip()],
                        port: a.port(),
                    }
                })
                .collect(),
            score: 1.0,
            avoid: false,
        }
    }

    /// A fake STUN server world: each server answers after its latency with the mapping the NAT
    /// gives towards it, or never if `None`.
    struct World {
        servers: BTreeMap<SocketAddr, (Duration, Option<SocketAddr>)>,
    }

    impl World {
        /// Runs one round to completion and returns the report.
        fn run(&self, c: &mut StunClient, t0: Instant) -> Report {
            c.start_report(t0);
            let mut now = t0;
            let mut inbox: Vec<(Instant, SocketAddr, Vec<u8>)> = Vec::new();
            for _ in 0..10_000 {
                while let Some(tx) = c.poll_transmit() {
                    let txid = parse_binding_request(&tx.payload).unwrap();
                    if let Some((lat, Some(mapped))) = self.servers.get(&tx.dest) {
                        inbox.push((now + *lat, tx.dest, binding_response(txid, *mapped)));
                    }
                }
                if let Some(StunEvent::ReportReady(r)) = c.poll_event() {
                    return r;
                }
                inbox.sort_by_key(|m| m.0);
                let next_in = inbox.first().map(|m| m.0);
                let next = match (next_in, c.poll_timeout()) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).expect("client must be waiting for something"),
                };
                now = next;
                if next_in == Some(next) {
                    let (_, from, bytes) = inbox.remove(0);
                    c.handle_datagram(&bytes, from, now);
                } else {
                    c.handle_timeout(now);
                }
            }
            panic!("round never finished");
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn hostile_region_scores_cannot_overflow() {
        assert_eq!(region_score(None), 1.0);
        assert_eq!(region_score(Some(0.0)), 1.0);
        assert_eq!(region_score(Some(-2.0)), 1.0);
        assert_eq!(region_score(Some(f64::NAN)), 1.0);
        assert_eq!(region_score(Some(f64::INFINITY)), 1.0);
        assert_eq!(region_score(Some(1e300)), 1e3);
        assert_eq!(region_score(Some(0.5)), 0.5);
        // The worst case still scales a latency without panicking.
        let _ = Duration::from_secs(3).mul_f64(region_score(Some(1e300)));
    }

    #[test]
    fn easy_nat_learns_endpoint_latency_and_home() {
        let public: SocketAddr = "203.0.113.5:41641".parse().unwrap();
        let world = World {
            servers: [
                ("127.0.0.1:3478", ms(30)),
                ("127.0.0.2:3478", ms(10)),
                ("[::1]:3478", ms(12)),
            ]
            .into_iter()
            .map(|(s, l)| {
                let a: SocketAddr = s.parse().unwrap();
                let mapped = if a.is_ipv6() {
                    "[2001:db8::5]:41641".parse().unwrap()
                } else {
                    public
                };
                (a, (l, Some(mapped)))
            })
            .collect(),
        };
        let mut c = StunClient::new([1; 32], Families::default());
        c.set_regions(vec![
            region(1, &["127.0.0.1:3478"]),
            region(2, &["127.0.0.2:3478", "[::1]:3478"]),
        ]);
        let r = world.run(&mut c, Instant::now());
        assert!(r.udp && r.ipv4 && r.ipv6);
        assert_eq!(r.global_v4, Some(public));
        assert_eq!(r.global_v6, Some("[2001:db8::5]:41641".parse().unwrap()));
        assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
        assert_eq!(r.region_latency.get(&1), Some(&ms(30)));
        assert_eq!(r.region_latency.get(&2), Some(&ms(10)));
        assert_eq!(r.preferred_derp, Some(2));
        assert_eq!(c.preferred_derp(), Some(2));
        assert!(r.endpoints().contains(&public));
        assert!(!c.is_running());
    }

    #[test]
    fn hard_nat_is_detected() {
        let world = World {
            servers: [
                ("127.0.0.1:3478", "198.51.100.1:1000"),
                ("127.0.0.2:3478", "198.51.100.1:2000"),
            ]
            .into_iter()
            .map(|(s, m)| (s.parse().unwrap(), (ms(5), Some(m.parse().unwrap()))))
            .collect(),
        };
        let mut c = StunClient::new(
            [2; 32],
            Families {
                ipv4: true,
                ipv6: false,
            },
        );
        c.set_regions(vec![
            region(1, &["127.0.0.1:3478"]),
            region(2, &["127.0.0.2:3478"]),
        ]);
        let r = world.run(&mut c, Instant::now());
        assert_eq!(r.mapping_varies_by_dest_ip, Some(true));
        assert!(r.udp);
    }

    #[test]
    fn udp_blocked_times_out_with_no_udp() {
        let world = World {
            servers: [("127.0.0.1:3478".parse().unwrap(), (ms(5), None))]
                .into_iter()
                .collect(),
        };
        let mut c = StunClient::new([3; 32], Families::default());
        c.set_regions(vec![region(1, &["127.0.0.1:3478"])]);
        let t0 = Instant::now();
        let mut sent = 0;
        c.start_report(t0);
        while c.poll_transmit().is_some() {
            sent += 1;
        }
        // The retries at 100 ms and 200 ms come from the timer.
        c.handle_timeout(t0 + ms(100));
        c.handle_timeout(t0 + ms(200));
        while c.poll_transmit().is_some() {
            sent += 1;
        }
        assert_eq!(sent, 3);
        assert_eq!(c.poll_timeout(), Some(t0 + STUN_PHASE_MAX));
        let r = world.run(&mut c, t0);
        assert!(!r.udp);
        assert_eq!(r.global_v4, None);
        assert_eq!(r.preferred_derp, None);
    }

    #[test]
    fn ignores_unknown_and_misrouted_replies() {
        let mut c = StunClient::new([4; 32], Families::default());
        c.set_regions(vec![region(1, &["127.0.0.1:3478"])]);
        let t0 = Instant::now();
        c.start_report(t0);
        let tx = c.poll_transmit().unwrap();
        let txid = parse_binding_request(&tx.payload).unwrap();
        let mapped: SocketAddr = "1.2.3.4:5".parse().unwrap();
        let other: SocketAddr = "127.0.0.9:3478".parse().unwrap();
        assert!(!c.handle_datagram(&binding_response(TxId([0; 12]), mapped), tx.dest, t0));
        assert!(!c.handle_datagram(&binding_response(txid, mapped), other, t0));
        assert!(!c.handle_datagram(b"garbage", tx.dest, t0));
        assert!(c.handle_datagram(&binding_response(txid, mapped), tx.dest, t0 + ms(3)));
        // Its region answered, so the round is complete.
        match c.poll_event() {
            Some(StunEvent::ReportReady(r)) => assert_eq!(r.global_v4, Some(mapped)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn home_region_is_sticky() {
        let world = |l1: u64, l2: u64| World {
            servers: [("127.0.0.1:3478", l1), ("127.0.0.2:3478", l2)]
                .into_iter()
                .map(|(s, l)| {
                    (
                        s.parse().unwrap(),
                        (ms(l), Some("1.2.3.4:5".parse().unwrap())),
                    )
                })
                .collect(),
        };
        let mut c = StunClient::new([5; 32], Families::default());
        c.set_regions(vec![
            region(1, &["127.0.0.1:3478"]),
            region(2, &["127.0.0.2:3478"]),
        ]);
        let t0 = Instant::now();
        assert_eq!(world(20, 40).run(&mut c, t0).preferred_derp, Some(1));
        // Six minutes later region 2 is a bit faster (15 vs 20 ms): less than 10 ms better, stay.
        let t1 = t0 + Duration::from_secs(360);
        assert_eq!(world(20, 15).run(&mut c, t1).preferred_derp, Some(1));
        // Much faster (5 vs 60 ms): move.
        let t2 = t1 + Duration::from_secs(360);
        assert_eq!(world(60, 5).run(&mut c, t2).preferred_derp, Some(2));
    }

    #[test]
    fn derp_map_conversion() {
        let json = r#"{"Regions":{"900":{"RegionID":900,"RegionCode":"x","Nodes":[
            {"Name":"900a","RegionID":900,"HostName":"a","IPv4":"127.0.0.1","STUNPort":3479},
            {"Name":"900b","RegionID":900,"HostName":"b","IPv4":"127.0.0.2","IPv6":"::1"},
            {"Name":"900c","RegionID":900,"HostName":"c","IPv4":"127.0.0.3","STUNPort":-1},
            {"Name":"900d","RegionID":900,"HostName":"d.example"}]},
            "901":{"RegionID":901,"NoMeasureNoHome":true,"Nodes":[
            {"Name":"901a","RegionID":901,"IPv4":"127.0.0.4"}]}}}"#;
        let map: DerpMap = serde_json::from_str(json).unwrap();
        let regions = regions_from_derp_map(&map);
        assert_eq!(regions.len(), 1);
        let r = &regions[0];
        assert_eq!(r.region_id, 900);
        assert_eq!(r.servers.len(), 2);
        assert_eq!(r.servers[0].port, 3479);
        assert_eq!(r.servers[1].port, DEFAULT_STUN_PORT);
        assert_eq!(r.servers[1].addrs.len(), 2);
    }
}
