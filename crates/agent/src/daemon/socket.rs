//! Creating the local API's Unix socket: parent directory, stale-file handling, mode 0660 and
//! the optional group that lets non-root users run the CLI.
//!
//! Called once by the daemon before it starts serving; plain blocking file-system calls.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The socket's directory could not be created.
    #[error("cannot create the socket directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    /// Another daemon answers on the socket.
    #[error(
        "another agent daemon is already listening on {}; stop it first (systemctl stop agent)",
        path.display()
    )]
    InUse { path: PathBuf },
    /// Something that is not a socket sits at the path; it is not ours to delete.
    #[error("{} exists and is not a socket; remove it or choose another --socket", path.display())]
    NotASocket { path: PathBuf },
    /// `--socket-group` names no group.
    #[error("socket group {group:?} does not exist (check /etc/group or pass a numeric GID)")]
    NoSuchGroup { group: String },
    /// Binding, removing the stale file, or setting mode or owner failed.
    #[error("cannot {op} the local API socket {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Binds the local API socket at `path`, replacing a stale socket file left by a daemon that
/// did not shut down cleanly, and gives it mode 0660 and, if `group` is set, that group.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    let gid = group.map(resolve_group).transpose()?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| SocketError::Dir {
            path: parent.to_owned(),
            source,
        })?;
    }
    remove_stale(path)?;

    let io_err = |op| {
        move |source| SocketError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    // Between bind and chmod the socket has the umask's mode. That is never looser than 0660 in
    // practice that matters: connecting needs write permission, which a 022 or 077 umask
    // withholds from others.
    let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io_err("set mode of"))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err("set the group of"))?;
    }
    Ok(listener)
}

/// Removes the socket file at `path` if it is one; used at shutdown.
pub fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket"),
    }
}

/// A socket file nobody listens on is left over from a crash and is removed; a live one means
/// a second daemon, which must not steal the socket from the first.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                op: "inspect",
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_owned(),
        });
    }
    tracing::info!(path = %path.display(), "removing stale socket from an earlier run");
    fs::remove_file(path).map_err(|source| SocketError::Io {
        op: "remove stale",
        path: path.to_owned(),
        source,
    })
}

/// A group name or numeric GID.
fn resolve_group(group: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) | Err(_) => Err(SocketError::NoSuchGroup {
            group: group.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/agent.sock");
        let first = bind(&path, None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);

        let err = bind(&path, None).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");

        drop(first); // the file stays behind, as after a crash
        assert!(path.exists());
        bind(&path, None).unwrap();
    }

    #[tokio::test]
    async fn regular_file_is_not_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.sock");
        fs::write(&path, b"precious").unwrap();
        let err = bind(&path, None).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn socket_group_is_applied() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.sock");
        // Our own group always works, root or not.
        let gid = nix::unistd::getegid().as_raw();
        let _listener = bind(&path, Some(&gid.to_string())).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().gid(), gid);
    }

    #[test]
    fn unknown_group_is_named() {
        let err = resolve_group("no-such-group-agentd").unwrap_err();
        assert!(err.to_string().contains("no-such-group-agentd"));
        assert_eq!(resolve_group("1234").unwrap(), 1234);
    }
}
