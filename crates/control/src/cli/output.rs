//! Printing for the admin commands: aligned tables for people, JSON for scripts.
//!
//! Results go to stdout; notes meant for a person only (hints, secrets' details) go to stderr,
//! so `control keys create | ...` pipes just the key.

use std::io::Write as _;

use chrono::{DateTime, Utc};
use control::api::views::ZERO_TIME;
use serde::Serialize;

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one line per row.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                let w = widths.get(c).copied().unwrap_or(0);
                line.push_str(cell);
                if c + 1 < r.len() {
                    line.push_str(&" ".repeat(w.saturating_sub(cell.chars().count()) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table, or `empty` when it has no rows besides the header.
    pub fn print_or(&self, empty: &str) {
        if self.rows.len() <= 1 {
            eprintln!("{empty}");
        } else {
            print!("{}", self.render());
        }
    }
}

/// Prints `v` as pretty JSON on stdout.
pub fn json(v: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// An API time as a short relative phrase (`3m ago`, `in 89d`), `never` for none or Go's zero
/// time, and the text itself if it does not parse.
pub fn when(t: Option<&str>, now: DateTime<Utc>) -> String {
    let Some(t) = t.filter(|t| !t.is_empty() && *t != ZERO_TIME) else {
        return "never".into();
    };
    let Ok(at) = DateTime::parse_from_rfc3339(t) else {
        return t.to_string();
    };
    let secs = (at.to_utc() - now).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs > 0);
    if n < 5 {
        return "now".into();
    }
    let amount = match n {
        0..=119 => format!("{n}s"),
        120..=7_199 => format!("{}m", n / 60),
        7_200..=172_799 => format!("{}h", n / 3_600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A list for a table cell: comma-separated, `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["1".into(), "web".into()]);
        t.row(vec!["12".into(), "db".into()]);
        assert_eq!(t.render(), "ID  NAME\n1   web\n12  db\n");
    }

    #[test]
    fn relative_times() {
        let now = DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(when(Some("2026-01-09T23:57:00Z"), now), "3m ago");
        assert_eq!(when(Some("2026-04-10T00:00:00Z"), now), "in 90d");
        assert_eq!(when(Some(ZERO_TIME), now), "never");
        assert_eq!(when(None, now), "never");
    }
}
