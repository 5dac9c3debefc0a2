//! Lab pieces for the MagicDNS, subnet-router and exit-node tests (`magicdns.rs`,
//! `subnet_exit.rs`), built on a [`Lan`] (see `topology.rs`).
//!
//! * DNS: [`start_dns_upstream`] runs a tiny authoritative DNS server (Python, UDP and TCP) that
//!   plays the ISP resolver a host's original `resolv.conf` points at; [`dns_query`] asks a given
//!   server one question (a `dig` stand-in: rcode and answers, UDP or TCP); [`getent`] resolves
//!   through the namespace's system resolver as any program would; [`resolv_conf`] and
//!   [`set_resolv_conf`] read and write the namespace's own `/etc/netns/<ns>/resolv.conf`, which
//!   `ip netns exec` bind-mounts over `/etc/resolv.conf` (so an agent never touches the
//!   machine's file).
//! * Links beyond the hub bridge: [`office_lan`] puts a legacy host (no agent) on a LAN behind
//!   one or more subnet routers; [`Internet`] is a namespace standing for the internet, with a
//!   web host address, and [`Internet::uplink`] gives a host a point-to-point uplink into it with
//!   a default route, as a home router or a cloud VM would have.
//! * [`check_contained`] replaces `Lan::check_no_route_out` for these labs, where default routes
//!   exist but only ever point at namespaces the test created: every link is loopback, veth,
//!   bridge or TUN, and every gateway is an address of one of the lab's namespaces.
//!
//! Everything runs in the LAN's namespaces through `ip -n`/`ip netns exec`; nothing is created in
//! the root namespace, and the namespaces go with the [`Lan`] (even on failure).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

pub use crate::control::BASE_DOMAIN;
use crate::netns::{etc_dir, ip};
use crate::topology::{PATH, python3, run_in};
use crate::{AuthKey, Check, Host, HttpReply, Lan, Spawn, wait_until};

/// The MagicDNS resolver's IPv4 address.
pub const QUAD100: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// The MagicDNS resolver's IPv6 address.
pub const QUAD100_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);

/// A name only the upstream (ISP) resolver knows, and its answers.
pub const UPSTREAM_NAME: &str = "portal.isp.test";
pub const UPSTREAM_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);
pub const UPSTREAM_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80);

/// How long a one-shot helper (DNS query, getent, curl) may take before it is killed.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// An authoritative DNS server for a fixed set of names (argv: address, port, JSON records
/// `{"name.": {"A": [...], "AAAA": [...]}}`), on UDP and TCP. Every other name gets NXDOMAIN.
/// Each query is logged as `query <name> <type> from <ip> rcode <n>` so a test can see who
/// asked (the agent's forwarder or the host directly).
const DNS_SERVER_PY: &str = r#"
import json, socket, struct, sys, threading
addr, port, records = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
TYPES = {1: "A", 28: "AAAA", 12: "PTR", 16: "TXT", 2: "NS", 6: "SOA", 15: "MX", 5: "CNAME"}
records = {k.lower().rstrip(".") + ".": v for k, v in records.items()}

def read_name(msg, off):
    labels = []
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            ptr = struct.unpack("!H", msg[off:off + 2])[0] & 0x3FFF
            rest, _ = read_name(msg, ptr)
            return ".".join(labels + [rest]).strip("."), off + 2
        off += 1
        if n == 0:
            return ".".join(labels), off
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n

def answer(query, peer, proto):
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!3H", query[:6])
    if qd < 1:
        return None
    name, off = read_name(query, 12)
    qtype, _qclass = struct.unpack("!HH", query[off:off + 4])
    question = query[12:off + 4]
    key = name.lower().rstrip(".") + "."
    rrs = []
    rcode = 0
    if key in records:
        for v in records[key].get(TYPES.get(qtype, "?"), []):
            if qtype == 1:
                rdata = socket.inet_pton(socket.AF_INET, v)
            elif qtype == 28:
                rdata = socket.inet_pton(socket.AF_INET6, v)
            else:
                continue
            rrs.append(b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata)
    else:
        rcode = 3
    print(f"query {key} {TYPES.get(qtype, qtype)} from {peer} over {proto} rcode {rcode}", flush=True)
    out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode
    return struct.pack("!6H", qid, out_flags, 1, len(rrs), 0, 0) + question + b"".join(rrs)

def serve_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(4096)
        try:
            reply = answer(data, peer[0], "udp")
        except Exception as e:
            print(f"bad udp query from {peer[0]}: {e}", flush=True)
            continue
        if reply:
            s.sendto(reply, peer)

def serve_tcp_conn(conn, peer):
    with conn:
        conn.settimeout(10)
        try:
            while True:
                head = conn.recv(2)
                if len(head) < 2:
                    return
                n = struct.unpack("!H", head)[0]
                data = b""
                while len(data) < n:
                    chunk = conn.recv(n - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = answer(data, peer[0], "tcp")
                if reply:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except Exception as e:
            print(f"tcp connection from {peer[0]}: {e}", flush=True)

def serve_tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, peer), daemon=True).start()

threading.Thread(target=serve_tcp, daemon=True).start()
print(f"dns listening on {addr}:{port}", flush=True)
serve_udp()
"#;

/// One DNS question to one server (argv: server, port, name, type, udp|tcp, timeout); prints
/// `{"rcode": n, "aa": bool, "answers": [{"name", "type", "data"}]}`. Exit status 2 and the
/// error on stderr when no answer arrives. An IP address as the name of a PTR query is turned
/// into its reverse name.
const DNS_QUERY_PY: &str = r#"
import ipaddress, json, random, socket, struct, sys
server, port, name, qtype_s, proto, timeout = sys.argv[1:7]
port, timeout = int(port), float(timeout)
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}
NAMES = {v: k for k, v in TYPES.items()}
qtype = TYPES[qtype_s.upper()]
if qtype == 12:
    try:
        name = ipaddress.ip_address(name).reverse_pointer
    except ValueError:
        pass

def encode_name(n):
    out = b""
    for label in n.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"

def read_name(msg, off):
    labels = []
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            ptr = struct.unpack("!H", msg[off:off + 2])[0] & 0x3FFF
            rest, _ = read_name(msg, ptr)
            return ".".join(labels + [rest]).strip(".") + ".", off + 2
        off += 1
        if n == 0:
            return ".".join(labels) + ".", off
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n

qid = random.randrange(65536)
query = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)
family = socket.AF_INET6 if ":" in server else socket.AF_INET
try:
    if proto == "tcp":
        s = socket.create_connection((server, port), timeout=timeout)
        s.sendall(struct.pack("!H", len(query)) + query)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            chunk = s.recv(65535)
            if not chunk:
                raise OSError("connection closed before a full answer")
            buf += chunk
        msg = buf[2:]
    else:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.sendto(query, (server, port))
        while True:
            msg, _ = s.recvfrom(65535)
            if struct.unpack("!H", msg[:2])[0] == qid:
                break
except OSError as e:
    sys.stderr.write(f"{type(e).__name__}: {e}\n")
    sys.exit(2)

_id, flags, qd, an, _ns, _ar = struct.unpack("!6H", msg[:12])
off = 12
for _ in range(qd):
    _, off = read_name(msg, off)
    off += 4
answers = []
for _ in range(an):
    rname, off = read_name(msg, off)
    rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
    off += 10
    rdata = msg[off:off + rdlen]
    if rtype == 1:
        data = socket.inet_ntop(socket.AF_INET, rdata)
    elif rtype == 28:
        data = socket.inet_ntop(socket.AF_INET6, rdata)
    elif rtype in (2, 5, 12):
        data, _ = read_name(msg, off)
    elif rtype == 16:
        parts, i = [], 0
        while i < len(rdata):
            parts.append(rdata[i + 1:i + 1 + rdata[i]].decode("utf-8", "replace"))
            i += 1 + rdata[i]
        data = "".join(parts)
    else:
        data = rdata.hex()
    off += rdlen
    answers.append({"name": rname, "type": NAMES.get(rtype, str(rtype)), "data": data})
print(json.dumps({"rcode": flags & 0xF, "aa": bool(flags & 0x0400), "answers": answers}))
"#;

/// Starts [`DNS_SERVER_PY`] on `host`, bound to `addr:53`, answering `records` (name, type,
/// value); waits until it listens. Its log is `<host>-dns.log` in the LAN directory.
pub fn start_dns_upstream(
    lan: &mut Lan<'_>,
    host: &Host,
    addr: Ipv4Addr,
    records: &[(&str, &str, &str)],
) -> anyhow::Result<()> {
    let mut map = serde_json::Map::new();
    for (name, rtype, value) in records {
        let entry = map
            .entry((*name).to_owned())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        let list = entry
            .as_object_mut()
            .context("record map")?
            .entry((*rtype).to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = list {
            a.push(Value::String((*value).to_owned()));
        }
    }
    let script = lan.dir().join("dns_upstream.py");
    std::fs::write(&script, DNS_SERVER_PY)?;
    let spec = Spawn::new(python3()?)
        .clear_env()
        .env("PATH", PATH)
        .arg("-u")
        .arg(&script)
        .args([
            addr.to_string(),
            "53".into(),
            Value::Object(map).to_string(),
        ]);
    let name = format!("{}-dns", host.name());
    lan.spawn(host, &name, &spec)?;
    let needle = format!("dns listening on {addr}:53");
    wait_until(&format!("{name} to listen"), CMD_TIMEOUT, || {
        lan.ensure_running()?;
        let log = lan.log_text(&name).unwrap_or_default();
        Ok(if log.contains(&needle) {
            Check::Ready(())
        } else if log.contains("Traceback") {
            bail!("{name} failed to start:\n{log}")
        } else {
            Check::NotYet("not listening yet".into())
        })
    })
}

/// The answer to one DNS question.
#[derive(Debug, Clone)]
pub struct DnsAnswer {
    /// 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED.
    pub rcode: u8,
    /// The authoritative-answer bit.
    pub authoritative: bool,
    /// `(type, data)` of each answer record, e.g. `("A", "100.64.0.1")`, `("PTR", "a.b.")`.
    pub answers: Vec<(String, String)>,
}

impl DnsAnswer {
    pub fn is_nxdomain(&self) -> bool {
        self.rcode == 3
    }

    /// The data of every answer record of `rtype`.
    pub fn values(&self, rtype: &str) -> Vec<&str> {
        self.answers
            .iter()
            .filter(|(t, _)| t == rtype)
            .map(|(_, d)| d.as_str())
            .collect()
    }
}

impl std::fmt::Display for DnsAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rcode = match self.rcode {
            0 => "NOERROR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            5 => "REFUSED",
            _ => "rcode?",
        };
        write!(f, "{rcode}({})", self.rcode)?;
        for (t, d) in &self.answers {
            write!(f, " {t} {d}")?;
        }
        Ok(())
    }
}

/// Which transport [`dns_query`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsProto {
    Udp,
    Tcp,
}

/// Asks `server:53` for `name`/`rtype` from `host`'s namespace (a `dig @server` stand-in). No
/// answer within `timeout` is an `Err`; any DNS answer, NXDOMAIN included, is `Ok`.
pub fn dns_query(
    host: &Host,
    server: IpAddr,
    name: &str,
    rtype: &str,
    proto: DnsProto,
    timeout: Duration,
) -> anyhow::Result<DnsAnswer> {
    let script = host.dir().join("dns_query.py");
    if !script.exists() {
        std::fs::write(&script, DNS_QUERY_PY)?;
    }
    let proto_s = match proto {
        DnsProto::Udp => "udp",
        DnsProto::Tcp => "tcp",
    };
    let spec = Spawn::new(python3()?)
        .clear_env()
        .env("PATH", PATH)
        .arg(&script)
        .args([
            server.to_string(),
            "53".into(),
            name.to_owned(),
            rtype.to_owned(),
            proto_s.to_owned(),
            format!("{:.1}", timeout.as_secs_f64()),
        ]);
    let out = host.exec(&spec)?;
    ensure!(
        out.status.success(),
        "DNS {rtype} {name} @{server} over {proto_s} from {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "dns_query printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let answers = v["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["type"].as_str().unwrap_or("?").to_owned(),
                        r["data"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(DnsAnswer {
        rcode: v["rcode"]
            .as_u64()
            .and_then(|r| u8::try_from(r).ok())
            .unwrap_or(255),
        authoritative: v["aa"].as_bool().unwrap_or(false),
        answers,
    })
}

/// `getent <database> <key>` in `host`'s namespace, i.e. the system resolver as every program
/// uses it (`/etc/nsswitch.conf`, then the namespace's `resolv.conf`). `Ok(None)` when the key
/// is not found (exit status 2); other failures are `Err`.
pub fn getent(host: &Host, database: &str, key: &str) -> anyhow::Result<Option<String>> {
    let out = host.exec_args("getent", &[database, key])?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(2) => Ok(None),
        _ => bail!(
            "getent {database} {key} on {} failed ({}): {}",
            host.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// The addresses `getent ahostsv4|ahostsv6 <name>` returns (v4-mapped ones dropped).
pub fn resolve_addrs(host: &Host, name: &str, v6: bool) -> anyhow::Result<Vec<IpAddr>> {
    let db = if v6 { "ahostsv6" } else { "ahostsv4" };
    let Some(text) = getent(host, db, name)? else {
        return Ok(Vec::new());
    };
    let mut addrs: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .filter(|a: &IpAddr| match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
            IpAddr::V4(_) => true,
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Path of the namespace's own resolv.conf (`/etc/netns/<ns>/resolv.conf`), which programs in
/// the namespace see as `/etc/resolv.conf`.
pub fn resolv_conf_path(host: &Host) -> PathBuf {
    etc_dir(host.netns().name()).join("resolv.conf")
}

/// The namespace's resolv.conf as programs in it see it.
pub fn resolv_conf(host: &Host) -> anyhow::Result<String> {
    let path = resolv_conf_path(host);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Replaces the namespace's resolv.conf; do this before the agent starts, as DHCP would have.
pub fn set_resolv_conf(host: &Host, text: &str) -> anyhow::Result<()> {
    let path = resolv_conf_path(host);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Whether a resolv.conf text sends queries to the MagicDNS resolver.
pub fn points_at_quad100(resolv_conf: &str) -> bool {
    resolv_conf.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("nameserver")
            && w.next()
                .is_some_and(|a| a == "100.100.100.100" || a == "fd7a:115c:a1e0::53")
    })
}

/// `curl <extra args> <url>` in `host`'s namespace (e.g. `-6`). Transport errors are `Err`.
pub fn curl_with(
    host: &Host,
    extra: &[&str],
    url: &str,
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    let spec = Spawn::new("curl")
        .clear_env()
        .env("PATH", PATH)
        .args(["-sS", "--noproxy", "*", "-m"])
        .arg(format!("{:.1}", timeout.as_secs_f64()))
        .args(extra)
        .args(["-w", "\n%{http_code}", url]);
    let out = host.exec(&spec)?;
    ensure!(
        out.status.success(),
        "curl {} {url} on {}: {}",
        extra.join(" "),
        host.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok(HttpReply {
        status: code
            .trim()
            .parse()
            .with_context(|| format!("curl status {code:?}"))?,
        body: body.to_owned(),
    })
}

/// The source address a `Lan::start_tcp_echo` server reports (`<tag> saw <ip>: <msg>`).
pub fn echo_source(reply: &str) -> Option<IpAddr> {
    let rest = reply.split_once(" saw ")?.1;
    rest.split_once(": ")?.0.parse().ok()
}

/// Connects to a TCP echo server and returns the source address it saw.
pub fn tcp_source(from: &Host, to: IpAddr, port: u16, timeout: Duration) -> anyhow::Result<IpAddr> {
    let msg = format!("hello from {}", from.name());
    let reply = from.tcp_echo(to, port, &msg, timeout)?;
    echo_source(&reply).with_context(|| format!("unexpected echo reply {reply:?}"))
}

/// Waits until a TCP exchange `from` -> `to:port` works and the server sees `want` as the
/// source; returns the time it took.
pub fn wait_tcp_source(
    from: &Host,
    to: IpAddr,
    port: u16,
    want: IpAddr,
    bound: Duration,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    wait_until(
        &format!("{} -> {to}:{port} to arrive from {want}", from.name()),
        bound,
        || {
            Ok(match tcp_source(from, to, port, Duration::from_secs(3)) {
                Ok(src) if src == want => Check::Ready(t.elapsed()),
                Ok(src) => Check::NotYet(format!("arrived from {src}")),
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        },
    )
}

/// Waits until TCP `from` -> `to:port` fails (3 s connect timeout) twice in a row; returns the
/// time it took and the last error.
pub fn wait_tcp_fails(
    from: &Host,
    to: IpAddr,
    port: u16,
    bound: Duration,
) -> anyhow::Result<(Duration, String)> {
    let t = Instant::now();
    let mut fails = 0;
    wait_until(
        &format!("{} -> {to}:{port} to fail", from.name()),
        bound,
        || {
            Ok(match tcp_source(from, to, port, Duration::from_secs(3)) {
                Ok(src) => {
                    fails = 0;
                    Check::NotYet(format!("still works (arrives from {src})"))
                }
                Err(e) => {
                    fails += 1;
                    if fails >= 2 {
                        Check::Ready((t.elapsed(), format!("{e:#}")))
                    } else {
                        Check::NotYet(format!("failed once: {e:#}"))
                    }
                }
            })
        },
    )
}

/// The first IPv6 address of a node entry (`self` or a peer) of `agent status --json`.
pub fn node_ipv6(node: &Value) -> Option<Ipv6Addr> {
    node.get("addresses")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|a| a.split('/').next()?.parse::<Ipv6Addr>().ok())
        .next()
}

// ------------------------------------------------------------------------------------------
// Links

/// Runs `ip -n <host ns> <args>`.
pub fn ip_in(host: &Host, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", host.netns().name()];
    full.extend_from_slice(args);
    ip(&full)
}

/// Writes a sysctl in `host`'s namespace, e.g. `("net/ipv6/conf/eth1/disable_ipv6", "1")`.
pub fn set_sysctl(host: &Host, key: &str, value: &str) -> anyhow::Result<()> {
    let spec = Spawn::new("/bin/sh")
        .clear_env()
        .env("PATH", PATH)
        .args(["-c", &format!("echo {value} > /proc/sys/{key}")]);
    let out = host.exec(&spec)?;
    ensure!(
        out.status.success(),
        "sysctl {key}={value} on {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Reads a sysctl in `host`'s namespace.
pub fn sysctl(host: &Host, key: &str) -> anyhow::Result<String> {
    let out = host.exec_args("cat", &[&format!("/proc/sys/{key}")])?;
    ensure!(out.status.success(), "cannot read sysctl {key}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Creates a veth pair `a:a_if` <-> `b:b_if` (created in `a`'s namespace, the peer moved into
/// `b`'s), with IPv6 off on both ends unless `ipv6` is set.
pub fn veth(a: &Host, a_if: &str, b: &Host, b_if: &str, ipv6: bool) -> anyhow::Result<()> {
    ip_in(
        a,
        &[
            "link",
            "add",
            a_if,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.netns().name(),
        ],
    )?;
    if !ipv6 {
        set_sysctl(a, &format!("net/ipv6/conf/{a_if}/disable_ipv6"), "1")?;
        set_sysctl(b, &format!("net/ipv6/conf/{b_if}/disable_ipv6"), "1")?;
    }
    Ok(())
}

/// Adds an address (`10.0.0.1/24`, `2001:db8::1/64`; IPv6 without duplicate detection) and
/// brings the link up.
pub fn addr_up(host: &Host, dev: &str, cidr: &str) -> anyhow::Result<()> {
    if cidr.contains(':') {
        ip_in(host, &["addr", "add", cidr, "dev", dev, "nodad"])?;
    } else {
        ip_in(host, &["addr", "add", cidr, "dev", dev])?;
    }
    ip_in(host, &["link", "set", dev, "up"])?;
    Ok(())
}

/// The legacy LAN behind subnet routers: the legacy host holds the LAN's switch (a bridge) and
/// [`LEGACY_IP`]; each router gets `eth1` on the LAN with the given address. The legacy host has
/// no agent and no default route (masqueraded replies go back on-link).
pub const LEGACY_NET: &str = "192.168.1.0/24";
/// The legacy host's address.
pub const LEGACY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 50);

/// Creates the legacy host and wires `routers` (host, LAN address) to its LAN.
pub fn office_lan(
    lan: &mut Lan<'_>,
    legacy_name: &str,
    routers: &[(&Host, Ipv4Addr)],
) -> anyhow::Result<Host> {
    let legacy = lan.add_isolated_host(legacy_name, LEGACY_IP)?;
    ip_in(&legacy, &["link", "add", "br1", "type", "bridge"])?;
    set_sysctl(&legacy, "net/ipv6/conf/br1/disable_ipv6", "1")?;
    addr_up(&legacy, "br1", &format!("{LEGACY_IP}/24"))?;
    for (i, (router, router_ip)) in routers.iter().enumerate() {
        let port = format!("sw{i}");
        veth(router, "eth1", &legacy, &port, false)?;
        ip_in(&legacy, &["link", "set", &port, "master", "br1"])?;
        ip_in(&legacy, &["link", "set", &port, "up"])?;
        addr_up(router, "eth1", &format!("{router_ip}/24"))?;
        crate::report(format_args!(
            "{}: eth1 {router_ip}/24 on the LAN of {legacy_name} ({LEGACY_IP})",
            router.name()
        ));
    }
    Ok(legacy)
}

/// A namespace standing for the internet: it holds the web host's addresses ([`Internet::WEB_V4`],
/// [`Internet::WEB_V6`]) on `lo` and one point-to-point link per uplink. It has no default route:
/// it only answers the uplinks it is connected to.
#[derive(Debug, Clone)]
pub struct Internet {
    pub host: Host,
    uplinks: u8,
}

/// One host's uplink into the [`Internet`].
#[derive(Debug, Clone, Copy)]
pub struct Uplink {
    /// The host's own address on the uplink (what the internet sees without NAT elsewhere).
    pub v4: Ipv4Addr,
    /// The host's IPv6 address on the uplink, when it has one.
    pub v6: Option<Ipv6Addr>,
}

impl Internet {
    /// The web host's public IPv4 address.
    pub const WEB_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// The web host's public IPv6 address.
    pub const WEB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);

    pub fn create(lan: &mut Lan<'_>, name: &str) -> anyhow::Result<Self> {
        let host = lan.add_isolated_host(name, Self::WEB_V4)?;
        ip_in(
            &host,
            &["addr", "add", &format!("{}/32", Self::WEB_V4), "dev", "lo"],
        )?;
        ip_in(
            &host,
            &["addr", "add", &format!("{}/128", Self::WEB_V6), "dev", "lo"],
        )?;
        Ok(Internet { host, uplinks: 0 })
    }

    /// Connects `host` with a point-to-point link (`eth1`, 198.51.100.<4n+2>/30, and with
    /// `ipv6` also 2001:db8:<n+1>::2/64) and gives it default routes into the internet.
    pub fn uplink(&mut self, host: &Host, ipv6: bool) -> anyhow::Result<Uplink> {
        let n = self.uplinks;
        ensure!(n < 60, "too many uplinks");
        self.uplinks += 1;
        let inet_if = format!("up{n}");
        let base = 4 * n;
        let inet_v4 = Ipv4Addr::new(198, 51, 100, base + 1);
        let host_v4 = Ipv4Addr::new(198, 51, 100, base + 2);
        let net6 = 0x1 + u16::from(n);
        let inet_v6 = Ipv6Addr::new(0x2001, 0xdb8, net6, 0, 0, 0, 0, 1);
        let host_v6 = Ipv6Addr::new(0x2001, 0xdb8, net6, 0, 0, 0, 0, 2);
        veth(&self.host, &inet_if, host, "eth1", ipv6)?;
        addr_up(&self.host, &inet_if, &format!("{inet_v4}/30"))?;
        addr_up(host, "eth1", &format!("{host_v4}/30"))?;
        ip_in(
            host,
            &["route", "add", "default", "via", &inet_v4.to_string()],
        )?;
        if ipv6 {
            addr_up(&self.host, &inet_if, &format!("{inet_v6}/64"))?;
            addr_up(host, "eth1", &format!("{host_v6}/64"))?;
            ip_in(
                host,
                &["-6", "route", "add", "default", "via", &inet_v6.to_string()],
            )?;
        }
        crate::report(format_args!(
            "{}: uplink eth1 {host_v4}{} into the internet ({})",
            host.name(),
            if ipv6 {
                format!(" and {host_v6}")
            } else {
                String::new()
            },
            self.host.name()
        ));
        Ok(Uplink {
            v4: host_v4,
            v6: ipv6.then_some(host_v6),
        })
    }
}

/// Fails unless every namespace of the lab holds only loopback, veth, bridge and TUN links and
/// every route through a gateway points at an address of one of the lab's namespaces. With no
/// physical link and every gateway inside the lab, no packet can leave the machine.
pub fn check_contained(lan: &Lan<'_>) -> anyhow::Result<()> {
    let mut namespaces: Vec<String> = vec![lan.hub().name().to_owned()];
    namespaces.extend(lan.hosts().iter().map(|h| h.netns().name().to_owned()));
    let mut lab_addrs = BTreeSet::new();
    for ns in &namespaces {
        let out = ip(&["-n", ns, "-o", "addr", "show"])?;
        for line in out.lines() {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if (w == "inet" || w == "inet6")
                    && let Some(a) = words.next().and_then(|c| c.split('/').next())
                {
                    lab_addrs.insert(a.to_owned());
                }
            }
        }
    }
    for ns in &namespaces {
        let links = ip(&["-n", ns, "-d", "-o", "link", "show"])?;
        for line in links.lines() {
            // `-d` prints the link kind (`veth`, `bridge`, `tun`) after the flags.
            let ok = line.contains("link/loopback")
                || line.contains(" veth ")
                || line.contains(" bridge ")
                || line.contains(" tun ");
            ensure!(
                ok,
                "namespace {ns} has a link of an unexpected kind: {line}"
            );
        }
        for family in ["-4", "-6"] {
            let routes = ip(&["-n", ns, family, "route", "show", "table", "all"])?;
            for line in routes.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(i) = words.iter().position(|w| *w == "via") {
                    let gw = words.get(i + 1).copied().unwrap_or("");
                    // `via inet6 <addr>` is how IPv6 gateways of IPv4 routes are shown.
                    let gw = if gw == "inet6" || gw == "inet" {
                        words.get(i + 2).copied().unwrap_or("")
                    } else {
                        gw
                    };
                    ensure!(
                        lab_addrs.contains(gw),
                        "namespace {ns} routes through {gw}, which is no address of this lab: \
                         {line}"
                    );
                }
            }
        }
    }
    Ok(())
}

/// `nft list ruleset` in `host`'s namespace.
pub fn nft_ruleset(host: &Host) -> anyhow::Result<String> {
    let out = host.exec_args("nft", &["list", "ruleset"])?;
    ensure!(
        out.status.success(),
        "nft list ruleset on {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip rule` and routing table 52 in `host`'s namespace, for reports.
pub fn policy_routing(host: &Host) -> String {
    let rules = ip_in(host, &["rule", "show"]).unwrap_or_else(|e| format!("{e:#}"));
    let t52 = ip_in(host, &["route", "show", "table", "52"]).unwrap_or_else(|e| format!("{e:#}"));
    let t52v6 =
        ip_in(host, &["-6", "route", "show", "table", "52"]).unwrap_or_else(|e| format!("{e:#}"));
    format!(
        "ip rule:\n{}\ntable 52:\n{}{}",
        rules.trim_end(),
        t52,
        t52v6
    )
}

/// `control routes list --json`, parsed: one entry per device with routes
/// (`name`, `advertisedRoutes`, `enabledRoutes`, `primaryRoutes`).
pub fn routes_list(lan: &Lan<'_>) -> anyhow::Result<Value> {
    let out = lan.control_cli(&["routes", "list", "--json"])?;
    serde_json::from_str(&out).context("`control routes list --json` did not print JSON")
}

/// An admin API key for [`live_routes_list`] (`control apikeys create`).
pub fn create_api_key(lan: &Lan<'_>) -> anyhow::Result<AuthKey> {
    let out = lan.control_cli(&["apikeys", "create", "--json"])?;
    let v: Value =
        serde_json::from_str(&out).context("`control apikeys create --json` did not print JSON")?;
    let key = v["key"]
        .as_str()
        .context("`control apikeys create --json` printed no string field \"key\"")?;
    Ok(AuthKey::from_secret(key.to_owned()))
}

/// `control routes list --json --server <control URL>` with `api_key` (in the environment):
/// the running server's own view, including which router is primary right now.
pub fn live_routes_list(lan: &Lan<'_>, api_key: &AuthKey) -> anyhow::Result<Value> {
    let spec = Spawn::new(lan.env().control()?)
        .clear_env()
        .env("PATH", PATH)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env("CONTROL_API_KEY", api_key.expose())
        .args(["routes", "list", "--json", "--server", lan.control_url()]);
    let out = run_in(lan.hub(), &spec, CMD_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "`control routes list --server` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout)
        .context("`control routes list --json --server` did not print JSON")
}

/// The `(advertised, enabled, primary)` routes of device `name` in [`routes_list`] output.
pub fn device_routes(list: &Value, name: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    list.as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"].as_str() == Some(name)))
        .map(|r| {
            // `control routes list --json` writes camelCase; snake_case is accepted too.
            let field = |camel: &str, snake: &str| {
                strings(
                    r.get(camel)
                        .or_else(|| r.get(snake))
                        .unwrap_or(&Value::Null),
                )
            };
            (
                field("advertisedRoutes", "advertised_routes"),
                field("enabledRoutes", "enabled_routes"),
                field("primaryRoutes", "primary_routes"),
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn echo_source_parses_v4_and_v6() {
        assert_eq!(
            echo_source("web saw 198.51.100.2: hello from laptop\n"),
            Some("198.51.100.2".parse().unwrap())
        );
        assert_eq!(
            echo_source("web saw 2001:db8:1::2: hello"),
            Some("2001:db8:1::2".parse().unwrap())
        );
        assert_eq!(echo_source("garbage"), None);
    }

    #[test]
    fn quad100_in_resolv_conf() {
        assert!(points_at_quad100(
            "# managed\nnameserver 100.100.100.100\nsearch tail.test\n"
        ));
        assert!(!points_at_quad100("nameserver 10.99.0.9\n"));
    }

    #[test]
    fn device_routes_by_name() {
        let v: Value = serde_json::from_str(
            r#"[{"id":"1","name":"office","advertisedRoutes":["192.168.1.0/24"],
                 "enabledRoutes":["192.168.1.0/24"],"primaryRoutes":[]}]"#,
        )
        .unwrap();
        let (adv, en, pri) = device_routes(&v, "office");
        assert_eq!(adv, vec!["192.168.1.0/24"]);
        assert_eq!(en, vec!["192.168.1.0/24"]);
        assert!(pri.is_empty());
        assert_eq!(device_routes(&v, "other").0.len(), 0);
    }
}
