//! Which devices are online, for admin commands that read the database directly.
//!
//! Whether a device is online is known only to the server process (it holds the map streams);
//! the database does not record it. So the server writes a small side file next to the
//! database, `<db>.presence`, with the ids of online devices and the time it was written: at
//! once when the set changes and every few seconds otherwise. `control nodes list --db …` reads
//! it and trusts it only while fresh; without a running server every device shows offline.
//!
//! The writer is a tokio task started with the admin router; it holds only a weak reference to
//! the server state and ends when the server is gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::model::{NodeId, Timestamp};
use crate::server::Shared;

/// A presence file older than this is ignored (the server is gone or stuck).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::seconds(10);

/// How often the writer looks for changes.
const POLL: Duration = Duration::from_millis(500);

/// How often the file is rewritten when nothing changed, to show it is still fresh.
const REFRESH: chrono::Duration = chrono::Duration::seconds(3);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Presence {
    written: Timestamp,
    online: Vec<NodeId>,
}

/// The side file for the database at `db`.
pub fn path_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".presence");
    db.with_file_name(name)
}

/// The online devices per a fresh presence file, or `None` if there is none or it is stale.
pub fn read(db: &Path, now: Timestamp) -> Option<BTreeSet<NodeId>> {
    let text = std::fs::read_to_string(path_for(db)).ok()?;
    let p: Presence = serde_json::from_str(&text).ok()?;
    (now - p.written <= STALE_AFTER).then(|| p.online.into_iter().collect())
}

/// Starts the writer if a tokio runtime is running.
pub fn spawn_writer(shared: &Arc<Shared>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let weak = Arc::downgrade(shared);
    let path = path_for(&shared.settings.db);
    tokio::spawn(write_loop(weak, path));
}

async fn write_loop(weak: Weak<Shared>, path: PathBuf) {
    let mut last: Option<(Vec<NodeId>, Timestamp)> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(shared) = weak.upgrade() else { return };
        let online: Vec<NodeId> = {
            let g = shared.lock();
            g.tailnet
                .nodes()
                .filter(|n| g.tailnet.is_online(n.id))
                .map(|n| n.id)
                .collect()
        };
        drop(shared);
        let now = Utc::now();
        let due = match &last {
            Some((prev, at)) => *prev != online || now - *at >= REFRESH,
            None => true,
        };
        if !due {
            continue;
        }
        match write(
            &path,
            &Presence {
                written: now,
                online: online.clone(),
            },
        ) {
            Ok(()) => last = Some((online, now)),
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "could not write the presence file");
                last = Some((online, now));
            }
        }
    }
}

fn write(path: &Path, p: &Presence) -> std::io::Result<()> {
    let tmp = path.with_extension("presence.tmp");
    std::fs::write(&tmp, serde_json::to_vec(p)?)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fresh_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("control.db");
        assert_eq!(path_for(&db), dir.path().join("control.db.presence"));
        let now = Utc::now();
        assert_eq!(read(&db, now), None);
        write(
            &path_for(&db),
            &Presence {
                written: now,
                online: vec![NodeId(3)],
            },
        )
        .unwrap();
        assert_eq!(read(&db, now), Some([NodeId(3)].into_iter().collect()));
        assert_eq!(read(&db, now + chrono::Duration::seconds(30)), None);
    }
}
