//! Unit tests of the sans-IO port mapping client under fake time: a scripted gateway answers
//! (or does not) and the tests check what a user of the mapping would see.

#![allow(clippy::unwrap_used)]

use super::*;

const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(11, 77, 0, 1);
const PORT: u16 = 41641;
const NONCE: [u8; 12] = [7; 12];

fn server() -> SocketAddr {
    SocketAddr::from((GW, 5351))
}

fn client() -> Client {
    Client::new(Config::new(GW, ME, PORT, NONCE))
}

fn pmp_ext(epoch: u32, ip: Ipv4Addr) -> Vec<u8> {
    let mut b = vec![0, 128, 0, 0];
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&ip.octets());
    b
}

fn pmp_map(epoch: u32, external_port: u16, lifetime: u32) -> Vec<u8> {
    let mut b = vec![0, 129, 0, 0];
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&PORT.to_be_bytes());
    b.extend_from_slice(&external_port.to_be_bytes());
    b.extend_from_slice(&lifetime.to_be_bytes());
    b
}

fn pmp_error(opcode: u8, result: u16) -> Vec<u8> {
    let mut b = vec![0, 128 + opcode];
    b.extend_from_slice(&result.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    b
}

fn pcp_announce(result: u8, epoch: u32) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[0] = 2;
    b[1] = 0x80;
    b[3] = result;
    b[8..12].copy_from_slice(&epoch.to_be_bytes());
    b
}

fn pcp_map(result: u8, lifetime: u32, epoch: u32, nonce: [u8; 12], external_port: u16) -> Vec<u8> {
    let mut b = vec![0u8; 60];
    b[0] = 2;
    b[1] = 0x81;
    b[3] = result;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..12].copy_from_slice(&epoch.to_be_bytes());
    b[24..36].copy_from_slice(&nonce);
    b[36] = 17;
    b[40..42].copy_from_slice(&PORT.to_be_bytes());
    b[42..44].copy_from_slice(&external_port.to_be_bytes());
    b[44..60].copy_from_slice(&PUBLIC.to_ipv6_mapped().octets());
    b
}

fn drain_tx(c: &mut Client) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((to, b)) = c.poll_transmit() {
        assert_eq!(to, server());
        out.push(b);
    }
    out
}

fn drain_events(c: &mut Client) -> Vec<PortmapEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Feeds an answer from the gateway and returns the events.
fn answer(c: &mut Client, bytes: &[u8], now: Instant) -> Vec<PortmapEvent> {
    assert!(c.handle_datagram(server(), bytes, now));
    drain_events(c)
}

/// A client holding a PCP mapping granted at `t0` with a 7200 s lifetime.
fn pcp_mapped(t0: Instant) -> Client {
    let mut c = client();
    c.request_mapping(t0);
    assert_eq!(drain_tx(&mut c).len(), 2, "probe: NAT-PMP and PCP");
    answer(&mut c, &pmp_ext(10, PUBLIC), t0);
    let ev = answer(&mut c, &pcp_announce(0, 10), t0);
    assert!(matches!(
        ev[..],
        [PortmapEvent::Probed(ProbeResult {
            pmp: true,
            pcp: true,
            ..
        })]
    ));
    let tx = drain_tx(&mut c);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0][1], pcp::OP_MAP, "PCP is preferred");
    assert_eq!(&tx[0][24..36], &NONCE);
    let ev = answer(&mut c, &pcp_map(0, 7200, 10, NONCE, 50000), t0);
    assert_eq!(
        ev,
        vec![PortmapEvent::Mapped(Mapping {
            protocol: Protocol::Pcp,
            external: SocketAddr::from((PUBLIC, 50000)),
            internal_port: PORT,
            lifetime: Duration::from_secs(7200),
        })]
    );
    c
}

/// A client holding a NAT-PMP mapping (the gateway speaks only NAT-PMP).
fn pmp_mapped(t0: Instant) -> Client {
    let mut c = client();
    c.request_mapping(t0);
    drain_tx(&mut c);
    answer(&mut c, &pmp_ext(100, PUBLIC), t0);
    // A NAT-PMP-only gateway rejects PCP's version 2 in NAT-PMP format.
    let ev = answer(&mut c, &pmp_error(0, 1), t0);
    assert!(matches!(
        ev[..],
        [PortmapEvent::Probed(ProbeResult {
            pmp: true,
            pcp: false,
            public_ip: Some(PUBLIC),
            ..
        })]
    ));
    let tx = drain_tx(&mut c);
    assert_eq!(
        tx,
        vec![
            pmp::encode_map_request(PORT, PORT, 7200).to_vec(),
            vec![0, 0]
        ]
    );
    assert!(
        answer(&mut c, &pmp_map(100, 41641, 7200), t0).is_empty(),
        "waits for the address"
    );
    let ev = answer(&mut c, &pmp_ext(100, PUBLIC), t0);
    assert!(
        matches!(ev[..], [PortmapEvent::Mapped(m)] if m.protocol == Protocol::NatPmp
        && m.external == SocketAddr::from((PUBLIC, 41641)))
    );
    c
}

#[test]
fn probe_reports_both_services_and_the_public_ip() {
    let t0 = Instant::now();
    let mut c = client();
    c.probe(t0);
    let tx = drain_tx(&mut c);
    assert_eq!(
        tx,
        vec![vec![0, 0], pcp::encode_announce(IpAddr::V4(ME)).to_vec()]
    );
    assert!(answer(&mut c, &pcp_announce(0, 5), t0).is_empty());
    assert_eq!(
        answer(&mut c, &pmp_ext(5, PUBLIC), t0),
        vec![PortmapEvent::Probed(ProbeResult {
            pmp: true,
            pcp: true,
            upnp: false,
            public_ip: Some(PUBLIC)
        })]
    );
    assert_eq!(c.poll_timeout(), None, "nothing to do after a bare probe");
}

#[test]
fn silent_gateway_is_retried_at_250ms_doubling_then_reported() {
    let t0 = Instant::now();
    let mut c = client();
    c.request_mapping(t0);
    assert_eq!(drain_tx(&mut c).len(), 2);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 1..MAX_TRIES {
        let next = c.poll_timeout().unwrap();
        waits.push(next - now);
        now = next;
        c.handle_timeout(now);
        assert_eq!(drain_tx(&mut c).len(), 2, "both probes are resent");
    }
    let ms = |m| Duration::from_millis(m);
    assert_eq!(waits, vec![ms(250), ms(500), ms(1000)]);
    now = c.poll_timeout().unwrap();
    c.handle_timeout(now);
    assert!(drain_tx(&mut c).is_empty());
    let ev = drain_events(&mut c);
    assert_eq!(ev[0], PortmapEvent::Probed(ProbeResult::default()));
    assert_eq!(
        ev[1],
        PortmapEvent::Failed(PortmapError::NoService { gateway: GW })
    );
    // A later round starts by itself.
    assert_eq!(c.poll_timeout(), Some(now + RETRY_AFTER_FAILURE));
    c.handle_timeout(now + RETRY_AFTER_FAILURE);
    assert_eq!(drain_tx(&mut c).len(), 2);
}

#[test]
fn pcp_mapping_is_checked_renewed_at_half_life_and_released() {
    let t0 = Instant::now();
    let mut c = pcp_mapped(t0);
    // The first deadline is the liveness check; the gateway's epoch advanced with the clock.
    let check = c.poll_timeout().unwrap();
    assert_eq!(check, t0 + DEFAULT_CHECK_INTERVAL);
    c.handle_timeout(check);
    let tx = drain_tx(&mut c);
    assert_eq!(tx, vec![pcp::encode_announce(IpAddr::V4(ME)).to_vec()]);
    assert!(answer(&mut c, &pcp_announce(0, 130), check).is_empty());

    let renew = t0 + Duration::from_secs(3600);
    while let Some(now) = c.poll_timeout().filter(|t| *t < renew) {
        c.handle_timeout(now);
        drain_tx(&mut c);
        let epoch = 10 + (now - t0).as_secs() as u32;
        answer(&mut c, &pcp_announce(0, epoch), now);
    }
    assert_eq!(c.poll_timeout(), Some(renew));
    c.handle_timeout(renew);
    let tx = drain_tx(&mut c);
    assert_eq!(tx.len(), 1);
    assert_eq!(&tx[0][24..36], &NONCE, "renewal repeats the nonce");
    assert_eq!(
        u16::from_be_bytes([tx[0][42], tx[0][43]]),
        50000,
        "asks for the same port"
    );
    let ev = answer(&mut c, &pcp_map(0, 7200, 3610, NONCE, 50000), renew);
    assert!(matches!(ev[..], [PortmapEvent::Renewed(m)] if m.external.port() == 50000));

    c.release(renew);
    let tx = drain_tx(&mut c);
    assert_eq!(tx.len(), 1);
    assert_eq!(&tx[0][4..8], &[0, 0, 0, 0], "lifetime 0 deletes");
    assert_eq!(&tx[0][24..36], &NONCE);
    assert_eq!(
        answer(&mut c, &pcp_map(0, 0, 3610, NONCE, 50000), renew),
        vec![PortmapEvent::Released]
    );
    assert_eq!(c.mapping(), None);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn pmp_mapping_release_sends_lifetime_zero_and_port_zero() {
    let t0 = Instant::now();
    let mut c = pmp_mapped(t0);
    c.release(t0);
    assert_eq!(
        drain_tx(&mut c),
        vec![pmp::encode_map_request(PORT, 0, 0).to_vec()]
    );
    let mut del = pmp_map(100, 0, 0);
    assert_eq!(answer(&mut c, &del, t0), vec![PortmapEvent::Released]);
    // A late duplicate changes nothing.
    del[11] = 1;
    assert!(answer(&mut c, &del, t0).is_empty());
}

#[test]
fn gateway_restart_is_noticed_at_the_next_check_and_remapped() {
    let t0 = Instant::now();
    let mut c = pmp_mapped(t0);
    let check = c.poll_timeout().unwrap();
    c.handle_timeout(check);
    assert_eq!(drain_tx(&mut c), vec![vec![0, 0]]);
    // 120 s later the gateway's epoch reads 3 s: it rebooted.
    let ev = answer(&mut c, &pmp_ext(3, PUBLIC), check);
    assert!(matches!(
        &ev[..],
        [PortmapEvent::Lost {
            reason: PortmapError::GatewayRestarted,
            ..
        }]
    ));
    let tx = drain_tx(&mut c);
    assert_eq!(
        tx[0],
        pmp::encode_map_request(PORT, 41641, 7200).to_vec(),
        "re-mapped at once"
    );
    assert!(answer(&mut c, &pmp_map(3, 41641, 7200), check).is_empty());
    let ev = answer(&mut c, &pmp_ext(3, PUBLIC), check);
    assert!(matches!(ev[..], [PortmapEvent::Mapped(_)]));
    assert!(c.mapping().is_some());
}

#[test]
fn epoch_rule_tolerates_jitter_but_not_a_restart() {
    let t0 = Instant::now();
    let prev = Epoch {
        server: 1000,
        at: t0,
    };
    assert!(!epoch_lost(prev, 1000, t0));
    assert!(!epoch_lost(prev, 999, t0), "one second of rounding");
    assert!(!epoch_lost(prev, 1061, t0 + Duration::from_secs(60)));
    assert!(epoch_lost(prev, 5, t0 + Duration::from_secs(60)));
    assert!(
        epoch_lost(prev, 1010, t0 + Duration::from_secs(600)),
        "server clock lags: restart"
    );
    assert!(
        epoch_lost(prev, 5000, t0 + Duration::from_secs(10)),
        "server clock jumped"
    );
}

#[test]
fn new_public_address_moves_the_mapping() {
    let t0 = Instant::now();
    let mut c = pmp_mapped(t0);
    let check = c.poll_timeout().unwrap();
    c.handle_timeout(check);
    drain_tx(&mut c);
    let new_ip = Ipv4Addr::new(11, 77, 0, 9);
    let ev = answer(&mut c, &pmp_ext(220, new_ip), check);
    assert!(
        matches!(ev[..], [PortmapEvent::Mapped(m)] if m.external == SocketAddr::from((new_ip, 41641)))
    );
}

#[test]
fn refused_pcp_falls_back_to_pmp_then_reports_the_typed_error() {
    let t0 = Instant::now();
    let mut c = client();
    c.request_mapping(t0);
    drain_tx(&mut c);
    answer(&mut c, &pmp_ext(1, PUBLIC), t0);
    answer(&mut c, &pcp_announce(0, 1), t0);
    drain_tx(&mut c);
    // PCP: NOT_AUTHORIZED.
    assert!(answer(&mut c, &pcp_map(2, 0, 1, NONCE, 0), t0).is_empty());
    let tx = drain_tx(&mut c);
    assert_eq!(
        tx[0],
        pmp::encode_map_request(PORT, PORT, 7200).to_vec(),
        "falls back to NAT-PMP"
    );
    // NAT-PMP: out of resources.
    let ev = answer(&mut c, &pmp_error(1, 4), t0);
    assert_eq!(
        ev,
        vec![PortmapEvent::Failed(PortmapError::PmpRefused(
            pmp::ResultCode::OutOfResources
        ))]
    );
    let msg = PortmapError::PcpRefused(pcp::ResultCode::NotAuthorized).to_string();
    assert!(msg.contains("not authorized"), "{msg}");
}

#[test]
fn unanswered_renewals_end_in_expiry_then_a_new_attempt() {
    let t0 = Instant::now();
    let mut c = pcp_mapped(t0);
    let expiry = t0 + Duration::from_secs(7200);
    let mut now = t0;
    let mut lost = None;
    let mut sent_after_loss = false;
    for _ in 0..10_000 {
        let Some(t) = c.poll_timeout() else { break };
        assert!(t >= now, "deadlines never go back");
        now = t;
        c.handle_timeout(now);
        let tx = drain_tx(&mut c);
        for ev in drain_events(&mut c) {
            if let PortmapEvent::Lost { reason, .. } = ev {
                lost = Some((reason, now));
            }
        }
        if lost.is_some() && !tx.is_empty() {
            sent_after_loss = true;
            break;
        }
    }
    let (reason, at) = lost.expect("the mapping was lost");
    assert_eq!(reason, PortmapError::Expired);
    assert_eq!(at, expiry);
    assert!(sent_after_loss, "a fresh request follows the loss");
}

#[test]
fn foreign_and_malformed_datagrams_are_ignored() {
    let t0 = Instant::now();
    let mut c = pcp_mapped(t0);
    let other = SocketAddr::from((Ipv4Addr::new(192, 168, 77, 9), 5351));
    assert!(!c.handle_datagram(other, &pmp_ext(1, PUBLIC), t0));
    assert!(!c.handle_datagram(SocketAddr::from((GW, 5350)), &pmp_ext(1, PUBLIC), t0));
    for junk in [
        &[][..],
        &[0],
        &[2, 0x81, 0],
        &[9; 60],
        &[0, 0x81, 0, 0, 0, 0, 0, 1, 2],
    ] {
        assert!(c.handle_datagram(server(), junk, t0));
    }
    // A PCP answer with someone else's nonce is not ours.
    c.handle_timeout(t0 + Duration::from_secs(3600));
    drain_tx(&mut c);
    assert!(
        answer(
            &mut c,
            &pcp_map(0, 7200, 3610, [1; 12], 60000),
            t0 + Duration::from_secs(3600)
        )
        .is_empty()
    );
    assert_eq!(c.mapping().unwrap().external.port(), 50000);
}

#[test]
fn pcp_can_be_turned_off() {
    let t0 = Instant::now();
    let mut cfg = Config::new(GW, ME, PORT, NONCE);
    cfg.use_pcp = false;
    let mut c = Client::new(cfg);
    c.request_mapping(t0);
    assert_eq!(drain_tx(&mut c), vec![vec![0, 0]], "only NAT-PMP is probed");
    answer(&mut c, &pmp_ext(1, PUBLIC), t0);
    assert_eq!(
        drain_tx(&mut c)[0],
        pmp::encode_map_request(PORT, PORT, 7200).to_vec()
    );
}

#[test]
fn release_without_a_mapping_is_immediate() {
    let t0 = Instant::now();
    let mut c = client();
    c.release(t0);
    assert_eq!(drain_events(&mut c), vec![PortmapEvent::Released]);
    assert!(drain_tx(&mut c).is_empty());
}

proptest::proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
        let t0 = Instant::now();
        let mut c = client();
        c.request_mapping(t0);
        let _ = c.handle_datagram(server(), &bytes, t0);
        let _ = pmp::decode(&bytes);
        let _ = pcp::decode(&bytes);
        let mut v = bytes.clone();
        if let Some(b) = v.get_mut(0) { *b = 2; }
        let _ = c.handle_datagram(server(), &v, t0);
        if let Some(b) = v.get_mut(0) { *b = 0; }
        let _ = c.handle_datagram(server(), &v, t0);
        c.handle_timeout(t0 + Duration::from_secs(1));
    }
}
