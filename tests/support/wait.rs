//! Polling helpers with generous bounds, and a free-port picker.
//!
//! End-to-end timings vary with machine load (two shared cores), so waits poll a condition every
//! 100 ms up to a bound far above the expected time, and a timeout reports what the condition
//! last looked like.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One observation of a condition being waited for.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; the wait returns this value.
    Ready(T),
    /// Not yet; the note (e.g. "HTTP 502") ends up in the timeout error.
    NotYet(String),
}

/// Polls `probe` every 100 ms until it returns [`Check::Ready`] or `timeout` passes. An `Err`
/// from the probe is fatal (e.g. the server process died) and ends the wait at once.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Check<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let last = match probe()? {
            Check::Ready(v) => return Ok(v),
            Check::NotYet(note) => note,
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out after {:.1} s waiting for {what}; last observation: {last}",
                start.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A port that is currently free for both TCP and UDP on 127.0.0.1 and has not been handed out
/// before by this process. Inside a fresh namespace every port is free; the host check only
/// keeps picks distinct and in the ephemeral range.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..50 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port found on 127.0.0.1 after 50 tries")
}
