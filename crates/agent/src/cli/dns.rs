//! `agent dns status` and `agent dns query NAME [TYPE]`: MagicDNS diagnosis, one local API call
//! each (`GET dns/status`, `GET dns/query`), printed as text or JSON.
//!
//! `dns query` asks the daemon's own resolver in-process (exactly what a client querying
//! 100.100.100.100 gets) and prints the answer section and which path answered. It exits 0
//! when the answer is NOERROR, 1 otherwise (NXDOMAIN, SERVFAIL), like `host`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Subcommand;

use super::client::LocalClient;
use crate::ipn::{DnsQueryReply, DnsStatus};

/// `agent dns ...`
#[derive(Debug, Clone, Subcommand)]
pub enum DnsCommand {
    /// Show MagicDNS settings: base domain, OS mode, resolvers, split DNS, names.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon's resolver (100.100.100.100) a question.
    Query {
        /// The name (FQDN or short name), or an IP address for a reverse (PTR) lookup.
        name: String,
        /// Record type: A, AAAA, PTR, TXT, MX, SRV, … (default A; PTR for an IP address).
        #[arg(value_name = "TYPE")]
        qtype: Option<String>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `dns` subcommand.
pub async fn run(client: &LocalClient, cmd: DnsCommand) -> Result<ExitCode, String> {
    match cmd {
        DnsCommand::Status { json } => {
            let st: DnsStatus = client.get("dns/status").await.map_err(|e| e.to_string())?;
            if json {
                print_json(&st)?;
            } else {
                print(&format_status(&st));
            }
            Ok(ExitCode::SUCCESS)
        }
        DnsCommand::Query { name, qtype, json } => {
            let qtype = qtype.unwrap_or_else(|| {
                if name.parse::<std::net::IpAddr>().is_ok() {
                    "PTR".into()
                } else {
                    "A".into()
                }
            });
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("name", &name)
                .append_pair("type", &qtype)
                .finish();
            let answer: DnsQueryReply = client
                .get(&format!("dns/query?{query}"))
                .await
                .map_err(|e| e.to_string())?;
            if json {
                print_json(&answer)?;
            } else {
                print(&format_answer(&answer));
            }
            Ok(if answer.rcode == "NoError" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `agent dns status` as text.
pub fn format_status(st: &DnsStatus) -> String {
    let mut out = String::new();
    let on = |b: bool| if b { "on" } else { "off" };
    let _ = writeln!(out, "MagicDNS:        {}", on(st.magic_dns));
    let _ = writeln!(
        out,
        "Base domain:     {}",
        st.base_domain.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "Accept DNS:      {}", on(st.accept_dns));
    let os = match &st.resolv_conf {
        Some(path) => format!("{} ({path})", st.os_mode),
        None => st.os_mode.to_string(),
    };
    let _ = writeln!(out, "OS DNS:          {os}");
    let _ = writeln!(out, "Listening:       {}", list(&st.listening));
    let _ = writeln!(out, "Search domains:  {}", list(&st.search_domains));
    if st.resolvers.is_empty() {
        let _ = writeln!(
            out,
            "Resolvers:       none set; other names go to the OS's upstreams: {}",
            list(&st.os_upstreams)
        );
    } else {
        let _ = writeln!(out, "Resolvers:       {}", list(&st.resolvers));
    }
    if !st.fallback_resolvers.is_empty() {
        let _ = writeln!(out, "Fallback:        {}", list(&st.fallback_resolvers));
    }
    if !st.split_routes.is_empty() {
        out.push_str("Split DNS:\n");
        for (suffix, resolvers) in &st.split_routes {
            let to = if resolvers.is_empty() {
                "answered by MagicDNS".to_string()
            } else {
                list(resolvers)
            };
            let _ = writeln!(out, "  {suffix} -> {to}");
        }
    }
    if !st.unsupported_resolvers.is_empty() {
        let _ = writeln!(
            out,
            "Not supported (ignored): {}",
            list(&st.unsupported_resolvers)
        );
    }
    out.push_str("Names:\n");
    if st.names.is_empty() {
        out.push_str("  -\n");
    }
    for n in &st.names {
        let short = n
            .short
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {}{short}  {}", n.name, list(&n.addresses));
    }
    for h in &st.health {
        let _ = writeln!(out, "# {h}");
    }
    out
}

/// `agent dns query` as text: which path answered, the status, then dig-style records.
pub fn format_answer(a: &DnsQueryReply) -> String {
    let mut out = String::new();
    let path = match &a.path {
        ::dns::AnswerPath::Tailnet => "tailnet (MagicDNS)".to_string(),
        ::dns::AnswerPath::Forwarded { upstream, route } => {
            let via = match route {
                ::dns::Route::Split { suffix } => format!("split DNS for {suffix}"),
                ::dns::Route::Global => "global resolver".into(),
                ::dns::Route::Os => "OS upstream".into(),
                ::dns::Route::Fallback => "fallback resolver".into(),
                _ => "upstream".into(),
            };
            format!("forwarded to {upstream} ({via})")
        }
        ::dns::AnswerPath::Failed { reason } => format!("failed: {reason}"),
        ::dns::AnswerPath::Refused { reason } => format!("refused: {reason}"),
        _ => "unknown".into(),
    };
    let _ = writeln!(out, ";; {} {}: {}", a.name, a.rtype, a.rcode);
    let _ = writeln!(out, ";; answered by: {path}");
    for r in &a.answers {
        let _ = writeln!(out, "{}\t{}\tIN\t{}\t{}", r.name, r.ttl, r.rtype, r.data);
    }
    if a.answers.is_empty() {
        out.push_str(";; no records\n");
    }
    out
}

fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    text.push('\n');
    print(&text);
    Ok(())
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipn::DnsName;

    #[test]
    fn status_text_names_mode_resolvers_and_names() {
        let st = DnsStatus {
            magic_dns: true,
            base_domain: Some("example.ts.net".into()),
            accept_dns: true,
            os_mode: ::dns::os::OsMode::Direct,
            resolv_conf: Some("/etc/resolv.conf".into()),
            listening: vec!["100.100.100.100:53".parse().unwrap()],
            search_domains: vec!["example.ts.net".into()],
            resolvers: vec![],
            fallback_resolvers: vec![],
            os_upstreams: vec!["10.0.0.1:53".parse().unwrap()],
            split_routes: [("internal".to_string(), vec![])].into_iter().collect(),
            unsupported_resolvers: vec![],
            names: vec![DnsName {
                name: "monitoring.example.ts.net".into(),
                short: Some("monitoring".into()),
                addresses: vec!["100.64.0.2".parse().unwrap()],
            }],
            health: vec![],
        };
        let text = format_status(&st);
        assert!(text.contains("MagicDNS:        on\n"), "{text}");
        assert!(
            text.contains("OS DNS:          direct (/etc/resolv.conf)\n"),
            "{text}"
        );
        assert!(text.contains("OS's upstreams: 10.0.0.1:53"), "{text}");
        assert!(text.contains("internal -> answered by MagicDNS"), "{text}");
        assert!(
            text.contains("  monitoring.example.ts.net (monitoring)  100.64.0.2\n"),
            "{text}"
        );
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["os_mode"], "direct");
    }

    #[test]
    fn answer_text_says_which_path_answered() {
        let a = DnsQueryReply {
            name: "www.example.com".into(),
            rtype: "A".into(),
            rcode: "NoError".into(),
            answers: vec![::dns::RecordText {
                name: "www.example.com.".into(),
                ttl: 300,
                rtype: "A".into(),
                data: "192.0.2.1".into(),
            }],
            authority: vec![],
            path: ::dns::AnswerPath::Forwarded {
                upstream: "10.0.0.1:53".parse().unwrap(),
                route: ::dns::Route::Os,
            },
        };
        let text = format_answer(&a);
        assert!(
            text.contains(";; answered by: forwarded to 10.0.0.1:53 (OS upstream)"),
            "{text}"
        );
        assert!(
            text.contains("www.example.com.\t300\tIN\tA\t192.0.2.1\n"),
            "{text}"
        );
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["path"]["kind"], "forwarded");
        assert_eq!(json["path"]["route"]["kind"], "os");
    }
}
