//! I/O: direct management of /etc/resolv.conf.
//!
//! [`DirectManager::apply`] first backs up the original file into the state directory (mode
//! 0600, written atomically) and only then writes ours (`nameserver 100.100.100.100`, the
//! search domains and a marker comment). [`DirectManager::restore`] puts the original back and
//! deletes the backup only once that worked; it is called on `agent down`, on daemon exit, and
//! at daemon start to recover from a crash (when the backup exists and the file still carries
//! our marker).
//!
//! Writing /etc/resolv.conf: a temporary file in /etc renamed over it (atomic), except when
//! that fails: /etc/resolv.conf is often a bind mount (`ip netns exec` mounts
//! /etc/netns/<ns>/resolv.conf over it; containers do the same), and rename onto a mount point
//! fails with EBUSY. Then the file is truncated and written in place, through the mount.
//!
//! A symlinked /etc/resolv.conf is always written in place, through the link, and the link is
//! kept: replacing the link would change the file for every mount namespace sharing /etc. With
//! `ip netns exec` and a host whose /etc/resolv.conf is a link (to systemd-resolved's stub, say),
//! the bind mount sits on the link's target, so only the namespace's file changes. Only a
//! dangling link (nothing to write through) is replaced by our file, and put back afterwards.
//!
//! Invariants: the backup is written (and synced) before the first change to the file; the
//! backup is never overwritten with a file carrying our marker; the backup is removed only
//! after the original is back, or when someone else has since replaced our file (their file is
//! then the newer original, and it is left alone).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{OsDnsSettings, OsError};
use crate::resolv_conf::{self, Original};

/// What [`DirectManager::restore`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// No backup: nothing of ours to undo.
    NothingToDo,
    /// The original is back and the backup is gone.
    Restored,
    /// The file no longer carried our marker (someone replaced it): it was left alone and the
    /// stale backup removed.
    LeftAlone,
}

/// Manages one resolv.conf file and its backup.
#[derive(Debug, Clone)]
pub struct DirectManager {
    resolv_conf: PathBuf,
    backup: PathBuf,
}

impl DirectManager {
    pub fn new(resolv_conf: impl Into<PathBuf>, backup: impl Into<PathBuf>) -> Self {
        Self {
            resolv_conf: resolv_conf.into(),
            backup: backup.into(),
        }
    }

    /// The managed file.
    pub fn path(&self) -> &Path {
        &self.resolv_conf
    }

    /// Backs up the original (once) and writes our resolv.conf.
    pub fn apply(&self, settings: &OsDnsSettings) -> Result<(), OsError> {
        let current = self.read_original()?;
        let ours = matches!(&current, Original::File(text) if resolv_conf::has_marker(text));
        let have_backup = self.backup.exists();
        if !ours {
            // No backup yet, or someone replaced our file since: what is there now is the
            // original to restore later.
            if have_backup {
                tracing::info!(
                    path = %self.resolv_conf.display(),
                    "resolv.conf was replaced by someone else; backing up the new version"
                );
            }
            write_atomic(
                &self.backup,
                resolv_conf::render_backup(&current).as_bytes(),
            )
            .map_err(|e| OsError::io("back up", &self.backup, e))?;
        } else if !have_backup {
            tracing::warn!(
                path = %self.resolv_conf.display(),
                backup = %self.backup.display(),
                "resolv.conf carries our marker but the backup is missing; the original cannot \
                 be restored"
            );
        }
        let text = resolv_conf::render(
            &settings.nameservers,
            &settings.search_domains,
            &self.backup.display().to_string(),
        );
        if matches!(&current, Original::File(t) if *t == text) {
            return Ok(());
        }
        replace_file(&self.resolv_conf, text.as_bytes())
            .map_err(|e| OsError::io("write", &self.resolv_conf, e))?;
        tracing::info!(path = %self.resolv_conf.display(), "DNS configured (resolv.conf)");
        Ok(())
    }

    /// Puts the original back if the file is still ours; removes the backup.
    pub fn restore(&self) -> Result<Restored, OsError> {
        let backup = match fs::read_to_string(&self.backup) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Restored::NothingToDo),
            Err(e) => return Err(OsError::io("read", &self.backup, e)),
        };
        let current = self.read_original()?;
        let ours = matches!(&current, Original::File(text) if resolv_conf::has_marker(text));
        let outcome = if ours {
            match resolv_conf::parse_backup(&backup) {
                Original::File(content) => replace_file(&self.resolv_conf, content.as_bytes()),
                Original::Symlink(target) => replace_with_symlink(&self.resolv_conf, &target),
                Original::Absent => fs::remove_file(&self.resolv_conf),
            }
            .map_err(|e| OsError::io("restore", &self.resolv_conf, e))?;
            tracing::info!(path = %self.resolv_conf.display(), "original resolv.conf restored");
            Restored::Restored
        } else {
            tracing::info!(
                path = %self.resolv_conf.display(),
                "resolv.conf was replaced by someone else; leaving it and dropping our backup"
            );
            Restored::LeftAlone
        };
        fs::remove_file(&self.backup).map_err(|e| OsError::io("remove", &self.backup, e))?;
        sync_parent(&self.backup);
        Ok(outcome)
    }

    /// The OS's original upstreams: the nameservers of the backup if we hold one, else of the
    /// current file unless it is ours.
    pub fn original_upstreams(&self) -> Vec<SocketAddr> {
        let text = match fs::read_to_string(&self.backup) {
            Ok(b) => match resolv_conf::parse_backup(&b) {
                Original::File(t) => t,
                Original::Symlink(_) | Original::Absent => {
                    // The link's target still holds the original servers, if it exists.
                    fs::read_to_string(&self.resolv_conf)
                        .ok()
                        .filter(|t| !resolv_conf::has_marker(t))
                        .unwrap_or_default()
                }
            },
            Err(_) => fs::read_to_string(&self.resolv_conf)
                .ok()
                .filter(|t| !resolv_conf::has_marker(t))
                .unwrap_or_default(),
        };
        resolv_conf::upstreams(&text)
    }

    /// Whether a backup exists.
    pub fn has_backup(&self) -> bool {
        self.backup.exists()
    }

    /// What is at the managed path now.
    fn read_original(&self) -> Result<Original, OsError> {
        match fs::symlink_metadata(&self.resolv_conf) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Original::Absent),
            Err(e) => return Err(OsError::io("inspect", &self.resolv_conf, e)),
            Ok(meta) if meta.file_type().is_symlink() => {
                // Written through, so the target's content is the original; a dangling link is
                // remembered as a link.
                match fs::read_to_string(&self.resolv_conf) {
                    Ok(text) => return Ok(Original::File(text)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let target = fs::read_link(&self.resolv_conf)
                            .map_err(|e| OsError::io("read link", &self.resolv_conf, e))?;
                        return Ok(Original::Symlink(target.display().to_string()));
                    }
                    Err(e) => return Err(OsError::io("read", &self.resolv_conf, e)),
                }
            }
            Ok(_) => {}
        }
        fs::read_to_string(&self.resolv_conf)
            .map(Original::File)
            .map_err(|e| OsError::io("read", &self.resolv_conf, e))
    }
}

/// Replaces `path` with `bytes`: atomically by rename when possible, otherwise (bind mount:
/// EBUSY; read-only directory; cross-device) by truncating and writing the file in place. A
/// symlink whose target exists is written through, in place, and stays a symlink.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && fs::metadata(path).is_ok() {
        return write_in_place(path, bytes);
    }
    match write_atomic_mode(path, bytes, 0o644) {
        Ok(()) => Ok(()),
        Err(rename_err) => {
            tracing::debug!(
                path = %path.display(),
                error = %rename_err,
                "atomic replace failed (bind mount?); writing in place"
            );
            write_in_place(path, bytes).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{e} (atomic replace failed first: {rename_err})"),
                )
            })
        }
    }
}

/// Truncates and rewrites `path` in place (the file, or a mount point, stays where it is).
pub fn write_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes a 0600 file atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.agent-tmp"))
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res?;
    sync_parent(path);
    Ok(())
}

fn replace_with_symlink(path: &Path, target: &str) -> io::Result<()> {
    let tmp = tmp_path(path);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path);
    Ok(())
}

/// A rename or removal is durable once the directory is synced; failure here only weakens
/// durability, so it is ignored.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::MAGIC_IPV4;

    const ORIGINAL: &str = "# from DHCP\nnameserver 10.0.0.1\nnameserver 127.0.0.53\nsearch lan\n";

    fn settings() -> OsDnsSettings {
        OsDnsSettings {
            nameservers: vec![IpAddr::V4(MAGIC_IPV4)],
            search_domains: vec!["example.ts.net".into()],
            match_domains: Vec::new(),
            default_route: false,
        }
    }

    fn setup() -> (tempfile::TempDir, DirectManager) {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc");
        let state = tmp.path().join("state");
        fs::create_dir_all(&etc).unwrap();
        fs::create_dir_all(&state).unwrap();
        fs::write(etc.join("resolv.conf"), ORIGINAL).unwrap();
        let m = DirectManager::new(etc.join("resolv.conf"), state.join("resolv.conf.backup"));
        (tmp, m)
    }

    #[test]
    fn apply_backs_up_then_writes_and_restore_puts_the_original_back() {
        let (_tmp, m) = setup();
        m.apply(&settings()).unwrap();
        let ours = fs::read_to_string(m.path()).unwrap();
        assert!(ours.contains("nameserver 100.100.100.100\n"), "{ours}");
        assert!(ours.contains("search example.ts.net\n"));
        assert!(resolv_conf::has_marker(&ours));
        let mode = fs::metadata(&m.backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The original upstreams come from the backup, without the resolved stub.
        assert_eq!(m.original_upstreams(), ["10.0.0.1:53".parse().unwrap()]);

        // Applying again (new search domains) keeps the first backup.
        let mut s = settings();
        s.search_domains.push("corp.example.com".into());
        m.apply(&s).unwrap();
        assert!(
            fs::read_to_string(m.path())
                .unwrap()
                .contains("search example.ts.net corp.example.com")
        );
        assert_eq!(m.restore().unwrap(), Restored::Restored);
        assert_eq!(fs::read_to_string(m.path()).unwrap(), ORIGINAL);
        assert!(!m.has_backup());
        assert_eq!(m.restore().unwrap(), Restored::NothingToDo);
    }

    #[test]
    fn crash_recovery_restores_when_the_file_is_still_ours() {
        let (_tmp, m) = setup();
        m.apply(&settings()).unwrap();
        // The daemon "crashes": a new manager (next start) finds backup + marker.
        let next = DirectManager::new(m.path(), &m.backup);
        assert!(next.has_backup());
        assert_eq!(next.restore().unwrap(), Restored::Restored);
        assert_eq!(fs::read_to_string(m.path()).unwrap(), ORIGINAL);
    }

    #[test]
    fn a_file_replaced_by_someone_else_is_never_clobbered() {
        let (_tmp, m) = setup();
        m.apply(&settings()).unwrap();
        let dhcp = "nameserver 10.9.9.9\n";
        fs::write(m.path(), dhcp).unwrap();
        // On the next apply the new file becomes the original...
        m.apply(&settings()).unwrap();
        assert_eq!(m.original_upstreams(), ["10.9.9.9:53".parse().unwrap()]);
        m.restore().unwrap();
        assert_eq!(fs::read_to_string(m.path()).unwrap(), dhcp);
        // ...and after a crash, a foreign file is left alone.
        m.apply(&settings()).unwrap();
        fs::write(m.path(), "nameserver 10.8.8.8\n").unwrap();
        assert_eq!(m.restore().unwrap(), Restored::LeftAlone);
        assert_eq!(
            fs::read_to_string(m.path()).unwrap(),
            "nameserver 10.8.8.8\n"
        );
        assert!(!m.has_backup());
    }

    #[test]
    fn our_own_file_is_never_taken_as_the_original() {
        let (_tmp, m) = setup();
        m.apply(&settings()).unwrap();
        let backup_before = fs::read_to_string(&m.backup).unwrap();
        // Lost state: a second apply while our file is in place must not back up our file.
        m.apply(&settings()).unwrap();
        assert_eq!(fs::read_to_string(&m.backup).unwrap(), backup_before);
        assert!(!resolv_conf::has_marker(&backup_before));
    }

    #[test]
    fn in_place_write_keeps_the_inode_like_a_bind_mount_needs() {
        use std::os::unix::fs::MetadataExt;
        let (_tmp, m) = setup();
        let inode = fs::metadata(m.path()).unwrap().ino();
        write_in_place(m.path(), b"nameserver 100.100.100.100\n").unwrap();
        assert_eq!(fs::metadata(m.path()).unwrap().ino(), inode);
        assert_eq!(
            fs::read_to_string(m.path()).unwrap(),
            "nameserver 100.100.100.100\n"
        );
    }

    #[test]
    fn replace_falls_back_to_in_place_when_rename_is_impossible() {
        // A read-only directory makes the temporary file (and so the rename) fail while the
        // file itself stays writable, the same shape as a bind-mounted /etc/resolv.conf.
        // Root ignores directory permissions, so this only proves the fallback when not root.
        let (_tmp, m) = setup();
        let dir = m.path().parent().unwrap().to_path_buf();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        let res = replace_file(m.path(), b"nameserver 100.100.100.100\n");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        res.unwrap();
        assert_eq!(
            fs::read_to_string(m.path()).unwrap(),
            "nameserver 100.100.100.100\n"
        );
        assert!(!tmp_path(m.path()).exists());
    }

    #[test]
    fn a_symlinked_resolv_conf_is_written_through_and_stays_a_link() {
        // The shape of `ip netns exec` on a host whose /etc/resolv.conf is a link: the
        // namespace's file is mounted on the link's target, and the link itself is shared.
        let (tmp, m) = setup();
        let target = tmp.path().join("netns-resolv.conf");
        fs::write(&target, ORIGINAL).unwrap();
        fs::remove_file(m.path()).unwrap();
        std::os::unix::fs::symlink(&target, m.path()).unwrap();
        m.apply(&settings()).unwrap();
        assert_eq!(fs::read_link(m.path()).unwrap(), target);
        assert!(resolv_conf::has_marker(
            &fs::read_to_string(&target).unwrap()
        ));
        assert_eq!(m.original_upstreams(), ["10.0.0.1:53".parse().unwrap()]);
        assert_eq!(m.restore().unwrap(), Restored::Restored);
        assert_eq!(fs::read_link(m.path()).unwrap(), target);
        assert_eq!(fs::read_to_string(&target).unwrap(), ORIGINAL);
    }

    #[test]
    fn a_dangling_symlink_is_replaced_and_put_back() {
        let (tmp, m) = setup();
        let stub = tmp.path().join("missing-stub-resolv.conf");
        fs::remove_file(m.path()).unwrap();
        std::os::unix::fs::symlink(&stub, m.path()).unwrap();
        m.apply(&settings()).unwrap();
        assert!(
            !fs::symlink_metadata(m.path())
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!stub.exists());
        m.restore().unwrap();
        assert_eq!(fs::read_link(m.path()).unwrap(), stub);
    }

    #[test]
    fn a_missing_resolv_conf_is_missing_again_after_restore() {
        let (_tmp, m) = setup();
        fs::remove_file(m.path()).unwrap();
        m.apply(&settings()).unwrap();
        assert!(m.path().exists());
        m.restore().unwrap();
        assert!(!m.path().exists());
    }
}
