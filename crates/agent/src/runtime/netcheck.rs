//! `agent netcheck` in the driver: a fresh STUN round from the WireGuard socket (so the mapping
//! shown is the one peers use), a one-shot port mapping probe of the gateway, HTTPS latencies to
//! the DERP regions when no STUN reply arrived (UDP blocked), assembled with
//! `nat::netcheck::Report` and answered as an [`ipn::NetcheckReport`](crate::ipn::NetcheckReport).
//!
//! Driven by the driver: [`Driver::start_netcheck`] on the local API command starts the STUN
//! round and spawns the probe (its result comes back as [`super::Side::NetcheckProbe`]);
//! [`Driver::netcheck_on_stun`] takes the round's report from `handle_report` and, without UDP,
//! spawns the HTTPS measurement ([`super::Side::NetcheckHttps`]); [`Driver::netcheck_timeout`]
//! answers with what is known when a part hangs. Requests that arrive while one runs share it.
//!
//! The same `nat::netcheck::Report` gives the `Hostinfo.NetInfo` sent to control after every
//! STUN round ([`Driver::net_info`]).

use std::time::{Duration, Instant};

use nat::netcheck::{HttpsLatency, LatencyMethod, PortMapping};
use nat::portmap::ProbeResult;
use nat::stun_client::Report;
use proto::tailcfg::NetInfo;
use tokio::sync::oneshot;

use super::{Driver, Side};
use crate::daemon::backend::BackendError;
use crate::ipn::{BackendState, NetcheckReport, PortMappingReport, RegionLatency};

/// The whole check gives up waiting for missing parts after this.
const NETCHECK_TIMEOUT: Duration = Duration::from_secs(12);
/// The port mapping probe (NAT-PMP/PCP retries take 3.75 s, the UPnP search 2 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<NetcheckReport, BackendError>>;

/// A netcheck in progress (field `netcheck` of the driver).
#[derive(Debug, Default)]
pub(super) struct NetcheckState {
    run: Option<Run>,
}

#[derive(Debug)]
struct Run {
    replies: Vec<Reply>,
    deadline: Instant,
    stun: Option<Report>,
    /// `Some(Err)` when the probe could not run (no gateway).
    probe: Option<Result<ProbeResult, String>>,
    /// No STUN reply: HTTPS latencies were asked for.
    https_wanted: bool,
    https: Option<Vec<HttpsLatency>>,
}

impl Driver {
    /// Starts a netcheck (or joins the one running).
    pub(super) fn start_netcheck(&mut self, reply: Reply, now: Instant) {
        let have_map = self.netmap.as_ref().is_some_and(|m| m.derp_map.is_some());
        if self.backend_state != BackendState::Running || self.control.is_none() {
            let _ = reply.send(Err(BackendError::NotRunning {
                state: self.backend_state,
            }));
            return;
        }
        if !have_map {
            let _ = reply.send(Err(BackendError::NotAvailable(
                "no DERP map from the control server yet, so there is nothing to measure".into(),
            )));
            return;
        }
        if let Some(run) = &mut self.netcheck.run {
            run.replies.push(reply);
            return;
        }
        // A fresh round (abandoning a periodic one in progress): its report also refreshes our
        // endpoints as usual.
        self.stun.start_report(now);
        self.next_stun = now + super::RESTUN;
        self.netcheck.run = Some(Run {
            replies: vec![reply],
            deadline: now + NETCHECK_TIMEOUT,
            stun: None,
            probe: None,
            https_wanted: false,
            https: None,
        });
        let side = self.side_tx.clone();
        let gateway = self.net.snapshot.gateway_v4();
        tokio::spawn(async move {
            let result = match gateway {
                None => Err("no IPv4 default gateway".to_string()),
                Some(gw) => {
                    let opts = nat::portmap::io::Options::default();
                    let probe = async {
                        let local = nat::portmap::io::local_ip_towards(gw)?;
                        nat::portmap::io::probe_gateway(gw, local, &opts).await
                    };
                    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                        Ok(Ok(r)) => Ok(r),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("the gateway did not answer the port mapping probe".into()),
                    }
                }
            };
            let _ = side.send(Side::NetcheckProbe(result)).await;
        });
    }

    /// A STUN round finished (called from `handle_report`).
    pub(super) fn netcheck_on_stun(&mut self, report: &Report) {
        let map = self.netmap.as_ref().and_then(|m| m.derp_map.clone());
        let Some(run) = &mut self.netcheck.run else {
            return;
        };
        if run.stun.is_some() {
            return;
        }
        run.stun = Some(report.clone());
        if !report.udp
            && let Some(map) = map
        {
            // UDP is blocked: measure the regions over HTTPS instead (at most 5 s).
            run.https_wanted = true;
            let side = self.side_tx.clone();
            tokio::spawn(async move {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                let got = nat::netcheck::probe::https_latencies(
                    &map,
                    std::sync::Arc::new(roots),
                    nat::netcheck::probe::HTTPS_PROBE_TIMEOUT,
                )
                .await;
                let _ = side.send(Side::NetcheckHttps(got)).await;
            });
        }
        self.netcheck_maybe_finish(false);
    }

    /// The HTTPS latency measurement finished.
    pub(super) fn netcheck_on_https(&mut self, results: Vec<HttpsLatency>) {
        if let Some(run) = &mut self.netcheck.run {
            run.https = Some(results);
        }
        self.netcheck_maybe_finish(false);
    }

    /// The port mapping probe finished.
    pub(super) fn netcheck_on_probe(&mut self, result: Result<ProbeResult, String>) {
        if let Some(run) = &mut self.netcheck.run {
            run.probe = Some(result);
        }
        self.netcheck_maybe_finish(false);
    }

    /// Answers with what is known once the deadline passed.
    pub(super) fn netcheck_timeout(&mut self, now: Instant) {
        if self
            .netcheck
            .run
            .as_ref()
            .is_some_and(|r| now >= r.deadline)
        {
            self.netcheck_maybe_finish(true);
        }
    }

    fn netcheck_maybe_finish(&mut self, force: bool) {
        let done = self.netcheck.run.as_ref().is_some_and(|r| {
            force
                || (r.stun.is_some() && r.probe.is_some() && (!r.https_wanted || r.https.is_some()))
        });
        if !done {
            return;
        }
        let Some(run) = self.netcheck.run.take() else {
            return;
        };
        let report =
            self.build_netcheck(run.stun.as_ref(), run.probe.as_ref(), run.https.as_deref());
        for r in run.replies {
            let _ = r.send(Ok(report.clone()));
        }
    }

    /// The `nat::netcheck` report for a STUN round, with this node's IPv6 support and port
    /// mapping filled in.
    fn nat_report(&self, stun: &Report, probe: Option<&ProbeResult>) -> nat::netcheck::Report {
        let map = self.netmap.as_ref().and_then(|m| m.derp_map.as_ref());
        let mut r = nat::netcheck::Report::from_stun(stun, map);
        r.os_has_ipv6 = self.udp.has_ipv6() && nat::netcheck::probe::os_has_ipv6();
        let (pmp, pcp, upnp) = super::portmap::services(self.portmap.mapping.as_ref(), probe);
        let probed = probe.is_some() || self.portmap.probe.is_some();
        if probed || self.portmap.mapping.is_some() {
            r.port_mapping = Some(PortMapping {
                upnp,
                pmp,
                pcp,
                have_mapping: self.portmap.mapping.is_some(),
            });
        }
        r
    }

    /// What we tell control about our network (`Hostinfo.NetInfo`) after a STUN round; `home`
    /// is the home region actually in use.
    pub(super) fn net_info(&self, report: &Report, home: Option<u16>) -> NetInfo {
        let mut ni = self
            .nat_report(report, self.portmap.probe.as_ref())
            .to_net_info();
        ni.preferred_derp = home.map_or(0, i32::from);
        ni
    }

    fn build_netcheck(
        &self,
        stun: Option<&Report>,
        probe: Option<&Result<ProbeResult, String>>,
        https: Option<&[HttpsLatency]>,
    ) -> NetcheckReport {
        let empty = Report::default();
        let probe_ok = probe.and_then(|p| p.as_ref().ok());
        let map = self.netmap.as_ref().and_then(|m| m.derp_map.as_ref());
        let mut r = self.nat_report(stun.unwrap_or(&empty), probe_ok);
        if let Some(h) = https {
            r.add_https_latencies(h, map);
        }
        let pm = r.port_mapping.unwrap_or_default();
        let error = match probe {
            Some(Err(e)) => Some(e.clone()),
            _ if self.portmap.mapping.is_none() => self.portmap.last_error.clone(),
            _ => None,
        };
        NetcheckReport {
            time: Some(chrono::Utc::now()),
            udp: r.udp,
            ipv4: r.ipv4,
            ipv6: r.ipv6,
            global_v4: r.global_v4,
            global_v6: r.global_v6,
            os_has_ipv6: r.os_has_ipv6,
            mapping_varies_by_dest_ip: r.mapping_varies_by_dest_ip,
            port_mapping: PortMappingReport {
                upnp: pm.upnp,
                pmp: pm.pmp,
                pcp: pm.pcp,
                mapping: self.portmap_endpoint(),
                error,
            },
            preferred_derp: r.preferred_derp.or(self.derp.home()),
            regions: map.map(|m| region_latencies(m, &r)).unwrap_or_default(),
            https_fallback: https.is_some_and(|h| !h.is_empty()),
        }
    }
}

/// Every measurable region of the map with its latencies, fastest first, unanswered ones last
/// (by ID).
pub(super) fn region_latencies(
    map: &proto::tailcfg::DerpMap,
    r: &nat::netcheck::Report,
) -> Vec<RegionLatency> {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let mut out: Vec<RegionLatency> = map
        .regions
        .values()
        .filter(|reg| !reg.no_measure_no_home)
        .filter_map(|reg| {
            let id = u16::try_from(reg.region_id).ok()?;
            let m = r.regions.get(&id);
            Some(RegionLatency {
                id,
                code: reg.region_code.clone(),
                name: reg.region_name.clone(),
                latency_ms: ms(m.and_then(|m| m.best())),
                latency_v4_ms: ms(m.and_then(|m| m.latency_v4)),
                latency_v6_ms: ms(m.and_then(|m| m.latency_v6)),
                method: match m.map(|m| m.method) {
                    Some(LatencyMethod::Stun) => "stun".into(),
                    Some(LatencyMethod::Https) => "https".into(),
                    _ => String::new(),
                },
            })
        })
        .collect();
    out.sort_by(|a, b| match (a.latency_ms, b.latency_ms) {
        (Some(x), Some(y)) => x.total_cmp(&y).then(a.id.cmp(&b.id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::tailcfg::{DerpMap, DerpRegion};

    fn region(id: i32, code: &str) -> DerpRegion {
        DerpRegion {
            region_id: id,
            region_code: code.into(),
            region_name: code.to_uppercase(),
            ..Default::default()
        }
    }

    #[test]
    fn regions_sort_fastest_first_and_silent_last() {
        let mut map = DerpMap::default();
        for (id, code) in [(1, "aaa"), (2, "bbb"), (3, "ccc"), (4, "ddd")] {
            map.regions.insert(id, region(id, code));
        }
        let mut stun = Report::default();
        stun.region_latency.insert(2, Duration::from_millis(30));
        stun.region_v4_latency.insert(2, Duration::from_millis(30));
        stun.region_latency.insert(3, Duration::from_millis(5));
        stun.region_v4_latency.insert(3, Duration::from_millis(5));
        let r = nat::netcheck::Report::from_stun(&stun, Some(&map));
        let got = region_latencies(&map, &r);
        let order: Vec<u16> = got.iter().map(|g| g.id).collect();
        assert_eq!(order, vec![3, 2, 1, 4]);
        assert_eq!(got[0].code, "ccc");
        assert_eq!(got[0].latency_v4_ms, Some(5.0));
        assert_eq!(got[0].latency_v6_ms, None);
        assert_eq!(got[0].method, "stun");
        assert_eq!(got[2].latency_ms, None);
        assert_eq!(got[2].method, "");
    }
}
