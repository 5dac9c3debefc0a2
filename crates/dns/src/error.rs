//! Errors of the DNS server's set-up. Resolution itself never fails: problems become SERVFAIL
//! answers (see [`crate::AnswerPath`]).

use std::net::SocketAddr;

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A UDP socket or TCP listener could not be opened.
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
