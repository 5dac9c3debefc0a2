//! `agent netcheck`: asks the daemon for a fresh network report (`GET /localapi/v0/netcheck`) and
//! prints it like `tailscale netcheck`, or as JSON with `--json`.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;

use super::client::LocalClient;
use crate::ipn::{NetcheckReport, RegionLatency};

/// `agent netcheck` flags.
#[derive(Debug, Clone, Args)]
pub struct NetcheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also show per-family latencies and why port mapping is unavailable.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// Runs `agent netcheck`.
pub async fn run(client: &LocalClient, args: NetcheckArgs) -> Result<ExitCode, String> {
    let report: NetcheckReport = client.get("netcheck").await.map_err(|e| e.to_string())?;
    let text = if args.json {
        let mut t = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        t.push('\n');
        t
    } else {
        format(&report, args.verbose)
    };
    super::commands::print(&text);
    Ok(ExitCode::SUCCESS)
}

/// The human-readable report.
pub fn format(r: &NetcheckReport, verbose: bool) -> String {
    let mut out = String::from("\nReport:\n");
    if let Some(t) = r.time {
        let _ = writeln!(
            out,
            "\t* Time: {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
    let _ = writeln!(out, "\t* UDP: {}", r.udp);
    let ipv4 = match (r.ipv4, r.global_v4) {
        (true, Some(a)) => format!("yes, {a}"),
        (true, None) => "yes".to_string(),
        (false, _) => "(no addr found)".to_string(),
    };
    let _ = writeln!(out, "\t* IPv4: {ipv4}");
    let ipv6 = match (r.ipv6, r.global_v6, r.os_has_ipv6) {
        (true, Some(a), _) => format!("yes, {a}"),
        (true, None, _) => "yes".to_string(),
        (false, _, true) => "no, but OS has support".to_string(),
        (false, _, false) => "no, unavailable in OS".to_string(),
    };
    let _ = writeln!(out, "\t* IPv6: {ipv6}");
    let varies = r
        .mapping_varies_by_dest_ip
        .map(|v| v.to_string())
        .unwrap_or_default();
    let _ = writeln!(out, "\t* MappingVariesByDestIP: {varies}");
    let pm = &r.port_mapping;
    let services: Vec<&str> = [(pm.upnp, "UPnP"), (pm.pmp, "NAT-PMP"), (pm.pcp, "PCP")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    let _ = writeln!(out, "\t* PortMapping: {}", services.join(", "));
    if verbose {
        if let Some(m) = pm.mapping {
            let _ = writeln!(out, "\t* PortMapped: {m}");
        }
        if let Some(e) = &pm.error {
            let _ = writeln!(out, "\t* PortMappingError: {e}");
        }
    }
    let nearest = r
        .preferred_derp
        .and_then(|id| r.regions.iter().find(|g| g.id == id))
        .map(region_label)
        .unwrap_or_default();
    let _ = writeln!(out, "\t* Nearest DERP: {nearest}");
    if r.https_fallback {
        out.push_str("\t* DERP latency (over HTTPS: UDP is blocked):\n");
    } else {
        out.push_str("\t* DERP latency:\n");
    }
    let width = r.regions.iter().map(|g| code(g).len()).max().unwrap_or(0) + 1;
    for g in &r.regions {
        let label = format!("{}:", code(g));
        let mut line = format!(
            "\t\t- {label:<width$} {:<8} ({})",
            g.latency_ms.map(ms).unwrap_or_default(),
            region_label(g),
            width = width
        );
        if verbose {
            let v4 = g.latency_v4_ms.map(ms).unwrap_or_else(|| "-".into());
            let v6 = g.latency_v6_ms.map(ms).unwrap_or_else(|| "-".into());
            let _ = write!(line, "  v4 {v4}  v6 {v6}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The region's code, or its ID when it has none.
fn code(g: &RegionLatency) -> String {
    if g.code.is_empty() {
        g.id.to_string()
    } else {
        g.code.clone()
    }
}

/// The region's display name, falling back to its code.
fn region_label(g: &RegionLatency) -> String {
    if g.name.is_empty() {
        code(g)
    } else {
        g.name.clone()
    }
}

/// Milliseconds the way Go prints a rounded `time.Duration`: `12.3ms`, `150ms`, `1.2s`.
fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.1}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipn::PortMappingReport;

    fn report() -> NetcheckReport {
        NetcheckReport {
            time: None,
            udp: true,
            ipv4: true,
            ipv6: false,
            global_v4: Some("198.51.100.3:55433".parse().unwrap()),
            global_v6: None,
            os_has_ipv6: true,
            mapping_varies_by_dest_ip: Some(true),
            port_mapping: PortMappingReport {
                pmp: true,
                pcp: true,
                mapping: Some("198.51.100.3:41641".parse().unwrap()),
                ..Default::default()
            },
            preferred_derp: Some(2),
            regions: vec![
                RegionLatency {
                    id: 2,
                    code: "lab2".into(),
                    name: "Lab Two".into(),
                    latency_ms: Some(1.234),
                    latency_v4_ms: Some(1.234),
                    latency_v6_ms: None,
                    method: "stun".into(),
                },
                RegionLatency {
                    id: 1,
                    code: "lab1".into(),
                    name: "Lab One".into(),
                    latency_ms: None,
                    latency_v4_ms: None,
                    latency_v6_ms: None,
                    method: String::new(),
                },
            ],
            https_fallback: false,
        }
    }

    #[test]
    fn text_report_reads_like_tailscale_netcheck() {
        let text = format(&report(), false);
        assert!(text.contains("\t* UDP: true\n"), "{text}");
        assert!(
            text.contains("\t* IPv4: yes, 198.51.100.3:55433\n"),
            "{text}"
        );
        assert!(
            text.contains("\t* IPv6: no, but OS has support\n"),
            "{text}"
        );
        assert!(text.contains("\t* MappingVariesByDestIP: true\n"), "{text}");
        assert!(text.contains("\t* PortMapping: NAT-PMP, PCP\n"), "{text}");
        assert!(text.contains("\t* Nearest DERP: Lab Two\n"), "{text}");
        assert!(text.contains("\t\t- lab2: 1.2ms"), "{text}");
        // The silent region is listed after the answering one, without a latency.
        let lab1 = text.find("- lab1:").unwrap();
        assert!(text.find("- lab2:").unwrap() < lab1);
        let line = text[lab1..].lines().next().unwrap();
        assert!(
            line.ends_with("(Lab One)") && !line.contains("ms"),
            "{text}"
        );
        assert!(!text.contains("PortMapped"));
    }

    #[test]
    fn verbose_adds_mapping_and_families() {
        let text = format(&report(), true);
        assert!(
            text.contains("\t* PortMapped: 198.51.100.3:41641\n"),
            "{text}"
        );
        assert!(text.contains("v4 1.2ms  v6 -"), "{text}");
    }

    #[test]
    fn blocked_udp_and_unknown_mapping() {
        let mut r = report();
        r.udp = false;
        r.ipv4 = false;
        r.global_v4 = None;
        r.mapping_varies_by_dest_ip = None;
        r.os_has_ipv6 = false;
        r.port_mapping = PortMappingReport::default();
        r.https_fallback = true;
        let text = format(&r, false);
        assert!(text.contains("\t* UDP: false\n"), "{text}");
        assert!(text.contains("\t* IPv4: (no addr found)\n"), "{text}");
        assert!(text.contains("\t* IPv6: no, unavailable in OS\n"), "{text}");
        assert!(text.contains("\t* MappingVariesByDestIP: \n"), "{text}");
        assert!(text.contains("\t* PortMapping: \n"), "{text}");
        assert!(text.contains("over HTTPS"), "{text}");
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(ms(1.234), "1.2ms");
        assert_eq!(ms(150.4), "150ms");
        assert_eq!(ms(1234.0), "1.2s");
    }
}
