//! The real MagicDNS server on loopback, queried over UDP and TCP like a stub resolver would,
//! with fake upstream resolvers (tiny DNS responders on 127.0.0.1) behind it.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dns::{DnsConfig, DnsServer, Resolver};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proto::netmap::NetMap;
use proto::tailcfg::{DnsConfig as WireDns, DnsResolver, Node, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn node(id: i64, name: &str, addrs: &[&str]) -> Node {
    Node {
        id: NodeId(id),
        name: name.to_string(),
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        ..Default::default()
    }
}

fn netmap(with_monitoring: bool, split: Option<SocketAddr>) -> NetMap {
    let mut nm = NetMap::new();
    nm.self_node = Some(node(1, "laptop.example.ts.net.", &["100.64.0.1/32"]));
    if with_monitoring {
        let n = node(
            2,
            "monitoring.example.ts.net.",
            &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
        );
        nm.peers.insert(n.id, n);
    }
    nm.dns = WireDns {
        proxied: true,
        domains: vec!["example.ts.net".into()],
        ..Default::default()
    };
    if let Some(split) = split {
        nm.dns.routes.insert(
            "corp.example".into(),
            vec![DnsResolver::new(split.to_string())],
        );
    }
    nm
}

/// A fake upstream on UDP and TCP (same port): answers every A question with `answer`, except
/// `big.example.` over UDP, which gets a truncated reply to force the TCP retry.
struct Upstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

fn reply(query: &Message, answer: [u8; 4]) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.queries = query.queries.clone();
    if let Some(q) = query.queries.first() {
        m.answers.push(Record::from_rdata(
            q.name.clone(),
            300,
            RData::A(A(answer.into())),
        ));
    }
    m
}

async fn upstream(answer: [u8; 4]) -> Upstream {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&udp_queries);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::SeqCst);
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = reply(&q, answer);
            if q.queries[0].name.to_ascii() == "big.example." {
                r.answers.clear();
                r.metadata.truncation = true;
            }
            udp.send_to(&r.to_vec().unwrap(), from).await.unwrap();
        }
    });
    let counter = Arc::clone(&tcp_queries);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let n = usize::from(s.read_u16().await.unwrap());
                let mut buf = vec![0u8; n];
                s.read_exact(&mut buf).await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let q = Message::from_vec(&buf).unwrap();
                let bytes = reply(&q, answer).to_vec().unwrap();
                let len = u16::try_from(bytes.len()).unwrap();
                s.write_all(&len.to_be_bytes()).await.unwrap();
                s.write_all(&bytes).await.unwrap();
            });
        }
    });
    Upstream {
        addr,
        udp_queries,
        tcp_queries,
    }
}

fn question(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

async fn ask_udp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let q = question(name, t);
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("no DNS answer over UDP")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    m
}

async fn ask_tcp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let bytes = question(name, t).to_vec().unwrap();
    s.write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_u16())
        .await
        .expect("no DNS answer over TCP")
        .unwrap();
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

async fn start(resolver: Arc<Resolver>) -> (DnsServer, SocketAddr) {
    let server = DnsServer::bind(resolver, &["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = server.local_addrs()[0];
    (server, addr)
}

#[tokio::test]
async fn tailnet_names_over_udp_and_tcp() {
    let resolver = Arc::new(Resolver::new(DnsConfig::from_netmap(&netmap(true, None))));
    let (server, addr) = start(Arc::clone(&resolver)).await;

    for name in ["monitoring.example.ts.net.", "MONITORING.", "monitoring."] {
        let m = ask_udp(addr, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(ips(&m), ["100.64.0.2".parse::<IpAddr>().unwrap()], "{name}");
        assert!(m.metadata.authoritative);
        let m = ask_tcp(addr, name, RecordType::A).await;
        assert_eq!(ips(&m), ["100.64.0.2".parse::<IpAddr>().unwrap()], "{name}");
    }
    let m = ask_udp(addr, "monitoring.example.ts.net.", RecordType::AAAA).await;
    assert_eq!(ips(&m), ["fd7a:115c:a1e0::2".parse::<IpAddr>().unwrap()]);
    // Known name, missing family: NOERROR, empty, SOA in authority.
    let m = ask_udp(addr, "laptop.example.ts.net.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // Reverse lookup.
    let m = ask_udp(addr, "2.0.64.100.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(m.answers[0].data.to_string(), "monitoring.example.ts.net.");
    // Unknown tailnet name.
    let m = ask_udp(addr, "nope.example.ts.net.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    // The map changes: the name stops resolving at once.
    resolver.set_config(DnsConfig::from_netmap(&netmap(false, None)));
    let m = ask_udp(addr, "monitoring.example.ts.net.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    server.shutdown().await;
}

#[tokio::test]
async fn other_names_are_forwarded_to_split_routes_and_os_upstreams() {
    let os = upstream([192, 0, 2, 1]).await;
    let corp = upstream([10, 0, 0, 7]).await;
    let resolver = Arc::new(
        Resolver::new(DnsConfig::from_netmap(&netmap(true, Some(corp.addr))))
            .with_timeout(Duration::from_secs(3)),
    );
    // A dead upstream first: the resolver moves on to the next one.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    resolver.set_os_upstreams(vec![dead_addr, os.addr]);
    let (server, addr) = start(Arc::clone(&resolver)).await;

    let m = ask_udp(addr, "www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&m), ["192.0.2.1".parse::<IpAddr>().unwrap()]);
    assert!(os.udp_queries.load(Ordering::SeqCst) >= 1);

    let m = ask_tcp(addr, "git.corp.example.", RecordType::A).await;
    assert_eq!(ips(&m), ["10.0.0.7".parse::<IpAddr>().unwrap()]);
    assert_eq!(corp.udp_queries.load(Ordering::SeqCst), 1);

    // Truncated over UDP: the resolver retries the upstream over TCP.
    let m = ask_udp(addr, "big.example.", RecordType::A).await;
    assert_eq!(ips(&m), ["192.0.2.1".parse::<IpAddr>().unwrap()]);
    assert!(!m.metadata.truncation);
    assert_eq!(os.tcp_queries.load(Ordering::SeqCst), 1);

    // The in-process query says which path answered.
    let q = resolver.query("www.example.com", "A").await.unwrap();
    assert_eq!(q.answers[0].data, "192.0.2.1");
    match q.path {
        dns::AnswerPath::Forwarded { upstream, route } => {
            assert_eq!(upstream, os.addr);
            assert_eq!(route, dns::Route::Os);
        }
        other => panic!("{other:?}"),
    }
    let q = resolver.query("monitoring", "A").await.unwrap();
    assert_eq!(q.path, dns::AnswerPath::Tailnet);
    server.shutdown().await;
}

#[tokio::test]
async fn no_upstream_at_all_is_servfail() {
    let resolver = Arc::new(Resolver::new(DnsConfig::from_netmap(&netmap(true, None))));
    let (server, addr) = start(resolver).await;
    let m = ask_udp(addr, "www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    server.shutdown().await;
}
