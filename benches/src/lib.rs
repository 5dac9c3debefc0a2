//! Benchmarks. Each binary in `src/bin` measures one thing and prints a table; none asserts a
//! timing. Run them in release mode: `cargo run --release -p benches --bin mapgen`.

/// Resident set size of this process in bytes (Linux), for memory-per-node figures.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
