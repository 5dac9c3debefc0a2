//! [`Resolver`]: the MagicDNS resolver shared by the UDP/TCP server and `agent dns query`.
//!
//! It holds the current [`DnsConfig`] and the OS's original upstreams behind [`ArcSwap`]s, so
//! the agent swaps in a new config on every network map without stopping the server and the
//! next question already sees it. Answering is [`crate::answer::plan`] (sans-IO) plus, for
//! forwarded questions, [`crate::forward::forward`] (I/O).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use serde::{Deserialize, Serialize};

use crate::answer::{self, Plan, Route};
use crate::config::DnsConfig;
use crate::forward::{self, DEFAULT_TIMEOUT};

/// How a question was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AnswerPath {
    /// From the tailnet's records (names, reverse, extra records, local zones).
    Tailnet,
    /// Forwarded; `upstream` answered.
    Forwarded { upstream: SocketAddr, route: Route },
    /// Forwarding failed (SERVFAIL was returned); `reason` says why.
    Failed { reason: String },
    /// The question could not be answered at all (malformed, unsupported opcode, no upstream).
    Refused { reason: String },
}

/// The answer to one question, as a DNS message plus how it was reached.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub message: Message,
    pub path: AnswerPath,
}

/// One resource record as text, for `agent dns query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordText {
    pub name: String,
    pub ttl: u32,
    #[serde(rename = "type")]
    pub rtype: String,
    pub data: String,
}

/// The answer `agent dns query` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAnswer {
    /// The name asked, as given.
    pub name: String,
    /// The record type asked (`A`, `AAAA`, `PTR`, …).
    #[serde(rename = "type")]
    pub rtype: String,
    /// `NoError`, `NXDomain`, `ServFail`, …
    pub rcode: String,
    pub answers: Vec<RecordText>,
    pub authority: Vec<RecordText>,
    pub path: AnswerPath,
}

/// Why an in-process query could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    #[error("{name:?} is not a valid DNS name: {reason}")]
    BadName { name: String, reason: String },
    #[error("{0:?} is not a DNS record type (try A, AAAA, PTR, TXT, MX, SRV, CNAME, NS, SOA)")]
    BadType(String),
    #[error("cannot encode the query: {0}")]
    Encode(String),
}

/// The MagicDNS resolver.
pub struct Resolver {
    config: ArcSwap<DnsConfig>,
    os_upstreams: ArcSwap<Vec<SocketAddr>>,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config.load())
            .field("os_upstreams", &self.os_upstreams.load())
            .finish()
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new(DnsConfig::default())
    }
}

impl Resolver {
    pub fn new(config: DnsConfig) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            os_upstreams: ArcSwap::from_pointee(Vec::new()),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long each upstream gets per attempt (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replaces the configuration; questions from now on see the new one.
    pub fn set_config(&self, config: DnsConfig) {
        self.config.store(Arc::new(config));
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<DnsConfig> {
        self.config.load_full()
    }

    /// Sets the OS's original upstream resolvers (the fallback for non-tailnet names when
    /// there are no global resolvers). Our own addresses are dropped to avoid loops.
    pub fn set_os_upstreams(&self, mut upstreams: Vec<SocketAddr>) {
        upstreams.retain(|a| !answer::is_self_upstream(a));
        upstreams.dedup();
        self.os_upstreams.store(Arc::new(upstreams));
    }

    /// The OS's original upstream resolvers.
    pub fn os_upstreams(&self) -> Vec<SocketAddr> {
        self.os_upstreams.load().as_ref().clone()
    }

    /// Answers one request. `raw` is the request as received (forwarded verbatim, apart from
    /// its ID); `request` is its parse.
    pub async fn resolve(&self, request: &Message, raw: &[u8]) -> Resolution {
        let refuse = |code: ResponseCode, reason: &str| Resolution {
            message: reply_to(request, code),
            path: AnswerPath::Refused {
                reason: reason.to_string(),
            },
        };
        if request.metadata.message_type != MessageType::Query {
            return refuse(ResponseCode::FormErr, "not a query");
        }
        if request.metadata.op_code != OpCode::Query {
            return refuse(ResponseCode::NotImp, "only standard queries are supported");
        }
        let [query] = request.queries.as_slice() else {
            return refuse(ResponseCode::FormErr, "exactly one question is supported");
        };
        let config = self.config.load();
        let os = self.os_upstreams.load();
        let plan = answer::plan(
            &config,
            &os,
            &query.name,
            query.query_type,
            query.query_class,
        );
        match plan {
            Plan::Local(local) => {
                let mut message = reply_to(request, local.rcode);
                message.metadata.authoritative = true;
                message.answers = local.answers;
                message.authorities = local.authorities;
                Resolution {
                    message,
                    path: AnswerPath::Tailnet,
                }
            }
            Plan::NoUpstream => Resolution {
                message: reply_to(request, ResponseCode::ServFail),
                path: AnswerPath::Failed {
                    reason: "not a tailnet name, and no upstream resolver is known".into(),
                },
            },
            Plan::Forward { upstreams, route } => {
                let upstreams: Vec<SocketAddr> = upstreams
                    .into_iter()
                    .filter(|a| !answer::is_self_upstream(a))
                    .collect();
                match forward::forward(raw, &upstreams, self.timeout).await {
                    Ok((bytes, upstream)) => match Message::from_vec(&bytes) {
                        Ok(mut message) => {
                            message.metadata.id = request.metadata.id;
                            message.metadata.recursion_available = true;
                            Resolution {
                                message,
                                path: AnswerPath::Forwarded { upstream, route },
                            }
                        }
                        Err(e) => Resolution {
                            message: reply_to(request, ResponseCode::ServFail),
                            path: AnswerPath::Failed {
                                reason: format!("{upstream} sent an unreadable answer: {e}"),
                            },
                        },
                    },
                    Err(e) => Resolution {
                        message: reply_to(request, ResponseCode::ServFail),
                        path: AnswerPath::Failed {
                            reason: e.to_string(),
                        },
                    },
                }
            }
        }
    }

    /// Asks this resolver a question in-process (`agent dns query`), exactly as a client
    /// would over the network. `rtype` is a type name such as `A`, `AAAA` or `PTR`; an IP
    /// address as `name` with type PTR is turned into its reverse name.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<QueryAnswer, QueryError> {
        let qtype: RecordType = rtype
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| QueryError::BadType(rtype.to_string()))?;
        let ascii = match name.parse::<std::net::IpAddr>() {
            Ok(ip) if qtype == RecordType::PTR => crate::names::reverse_name(ip),
            _ => name.to_string(),
        };
        let mut qname = Name::from_utf8(&ascii).map_err(|e| QueryError::BadName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        qname.set_fqdn(true);
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        let mut q = Query::query(qname, qtype);
        q.set_query_class(DNSClass::IN);
        request.add_query(q);
        let raw = request
            .to_vec()
            .map_err(|e| QueryError::Encode(e.to_string()))?;
        let res = self.resolve(&request, &raw).await;
        let text = |records: &[hickory_proto::rr::Record]| {
            records
                .iter()
                .map(|r| RecordText {
                    name: r.name.to_ascii(),
                    ttl: r.ttl,
                    rtype: r.record_type().to_string(),
                    data: r.data.to_string(),
                })
                .collect()
        };
        Ok(QueryAnswer {
            name: name.to_string(),
            rtype: qtype.to_string(),
            rcode: format!("{:?}", res.message.metadata.response_code),
            answers: text(&res.message.answers),
            authority: text(&res.message.authorities),
            path: res.path,
        })
    }
}

/// An empty response to `request` with `code`, echoing its question (and EDNS, if it had any).
fn reply_to(request: &Message, code: ResponseCode) -> Message {
    let mut m = Message::response(request.metadata.id, request.metadata.op_code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = code;
    m.queries = request.queries.clone();
    if let Some(req_edns) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(req_edns.max_payload().max(512));
        edns.set_dnssec_ok(req_edns.flags().dnssec_ok);
        m.edns = Some(edns);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample_netmap;

    #[tokio::test]
    async fn config_swaps_take_effect_at_once() {
        let resolver = Resolver::new(DnsConfig::from_netmap(&sample_netmap()));
        let a = resolver.query("monitoring", "A").await.unwrap();
        assert_eq!(a.rcode, "NoError");
        assert_eq!(a.answers[0].data, "100.64.0.2");
        assert_eq!(a.path, AnswerPath::Tailnet);

        let mut nm = sample_netmap();
        nm.peers.retain(|_, p| !p.name.starts_with("Monitoring"));
        nm.dns.extra_records.clear();
        resolver.set_config(DnsConfig::from_netmap(&nm));
        let gone = resolver
            .query("monitoring.example.ts.net", "A")
            .await
            .unwrap();
        assert_eq!(gone.rcode, "NXDomain");
        assert!(gone.answers.is_empty());
        assert_eq!(gone.authority[0].rtype, "SOA");
    }

    #[tokio::test]
    async fn query_parses_types_and_reverse_addresses() {
        let resolver = Resolver::new(DnsConfig::from_netmap(&sample_netmap()));
        let ptr = resolver.query("100.64.0.3", "ptr").await.unwrap();
        assert_eq!(ptr.answers[0].data, "db.example.ts.net.");
        assert!(matches!(
            resolver.query("x", "BOGUS").await,
            Err(QueryError::BadType(_))
        ));
    }

    #[tokio::test]
    async fn no_upstream_is_servfail_and_self_upstreams_are_dropped() {
        let mut cfg = DnsConfig::from_netmap(&sample_netmap());
        cfg.resolvers.clear();
        let resolver = Resolver::new(cfg);
        resolver.set_os_upstreams(vec!["100.100.100.100:53".parse().unwrap()]);
        assert!(resolver.os_upstreams().is_empty());
        let a = resolver.query("example.org", "A").await.unwrap();
        assert_eq!(a.rcode, "ServFail");
        assert!(matches!(a.path, AnswerPath::Failed { .. }));
    }
}
