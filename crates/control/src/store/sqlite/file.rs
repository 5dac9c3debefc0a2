//! Creating the database file and its directory with owner-only permissions.
//!
//! Called once by [`super::SqliteStore::open`] before SQLite touches the path.

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::path::Path;

use crate::store::StoreError;

/// Creates the parent directories (0700) and an empty database file (0600) if they are missing.
///
/// Creating the file ourselves, before SQLite does, is what sets its mode regardless of the
/// umask's group/other read bits; SQLite then gives its `-wal` and `-shm` files the same mode.
pub(super) fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let io_err = |what: &str, p: &Path, e: std::io::Error| {
        StoreError::Db(format!("cannot create {what} {}: {e}", p.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| io_err("directory", dir, e))?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            warn_if_shared(path);
            Ok(())
        }
        Err(e) => Err(io_err("database file", path, e)),
    }
}

/// An existing file keeps the mode the operator gave it, but a readable-by-others database
/// exposes the server's private keys, so say so.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "database file is accessible to other users; it holds private keys (chmod 600)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
