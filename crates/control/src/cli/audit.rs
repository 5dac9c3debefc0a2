//! `control audit`: the newest administrative changes first.
//!
//! `--since` takes an RFC 3339 time, a date (`2026-01-31`, midnight UTC) or a duration back
//! from now (`24h`, `7d`); `--action` keeps entries whose action starts with the text given
//! (`node.`, `policy.set`).

use chrono::{DateTime, NaiveDate, Utc};

use super::Target;
use super::output::{self, Table};

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    target: Target,
    /// Show at most N entries.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only entries at or after this time: 2026-01-31T12:00:00Z, 2026-01-31, or 24h (ago).
    #[arg(long)]
    since: Option<String>,
    /// Only actions starting with this, e.g. `node.` or `policy.set`.
    #[arg(long)]
    action: Option<String>,
}

pub async fn run(a: AuditArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, now))
        .transpose()?;
    let mut b = a.target.backend().await?;
    let logs = b.audit(since, a.limit, a.action).await?;
    if a.target.json {
        return output::json(&logs);
    }
    let mut t = Table::new(&["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
    for e in &logs {
        let detail = match &e.detail {
            serde_json::Value::Null => String::new(),
            serde_json::Value::Object(o) if o.is_empty() => String::new(),
            d => d.to_string(),
        };
        t.row(vec![
            e.event_time.replace('T', " "),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            shorten(&detail, 80),
        ]);
    }
    t.print_or("no audit entries match");
    Ok(())
}

fn parse_since(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    match control::config::parse_duration(s) {
        Ok(d) => Ok(now - d),
        Err(_) => anyhow::bail!(
            "--since {s:?}: use a time like 2026-01-31T12:00:00Z, a date like 2026-01-31, or a duration like 24h"
        ),
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            parse_since("24h", now).unwrap().to_rfc3339(),
            "2026-01-09T12:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-01-02", now).unwrap().to_rfc3339(),
            "2026-01-02T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-01-02T03:04:05Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-02T03:04:05+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
