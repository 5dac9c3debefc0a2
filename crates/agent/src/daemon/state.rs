//! The daemon's persistent state: a 0700 directory holding `prefs.json` (what the user asked
//! for) and `keys.json` (the machine and node private keys). Both are written atomically
//! (temporary file, fsync, rename, fsync of the directory) with mode 0600, so a crash or power
//! loss leaves either the old or the new file, never a torn one.
//!
//! A file that exists but cannot be read or parsed is an error naming the file. The daemon never
//! replaces a damaged `keys.json` with fresh keys on its own: that would silently give the
//! machine a new identity and orphan the old node at control.
//!
//! The disco key is not stored here: it is regenerated at every start, as in Tailscale.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proto::keys::{MachinePrivate, NodePrivate};
use rand_core::{CryptoRngCore, OsRng};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The preferences file's name inside the state directory.
pub const PREFS_FILE: &str = "prefs.json";
/// The keys file's name inside the state directory.
pub const KEYS_FILE: &str = "keys.json";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The directory could not be created or secured.
    #[error("cannot use state directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    /// A state file could not be read or written.
    #[error("cannot {op} state file {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A state file exists but its content is damaged. Moving it aside is the user's decision.
    #[error(
        "state file {} is corrupt ({reason}); fix it or move it aside to start over{hint}",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        reason: String,
        hint: &'static str,
    },
}

/// What the user asked for, kept across restarts. The auth key is deliberately absent: it is a
/// secret that is only needed once, for the login it was given to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// The control server URL of the last `up`.
    pub control_url: Option<String>,
    /// The hostname to register instead of the OS hostname.
    pub hostname: Option<String>,
    /// ACL tags to request at login.
    pub advertise_tags: Vec<String>,
    /// Whether the node registers as ephemeral.
    pub ephemeral: bool,
    /// Whether the node should be connected: set by `up`, cleared by `down` and `logout`, and
    /// honoured at the next start.
    pub want_running: bool,
    /// Whether the node completed a login with control (cleared by `logout`).
    pub logged_in: bool,
    /// Subnet routes and exit nodes (`--advertise-routes`, `--exit-node`, …).
    pub routing: RoutingPrefs,
    /// `--accept-dns=false`: leave the OS's DNS settings alone. Stored negated so that a
    /// missing field means the default (use MagicDNS).
    pub no_accept_dns: bool,
}

/// Subnet-router and exit-node preferences, as `agent up` left them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingPrefs {
    /// Subnets this node offers (`--advertise-routes`), masked, without default routes.
    pub advertise_routes: Vec<ipnet::IpNet>,
    /// Offer this node as an exit node (`--advertise-exit-node`).
    pub advertise_exit_node: bool,
    /// `--snat-subnet-routes=false`: keep tailnet source addresses on forwarded traffic.
    /// Stored negated so that a missing field means the default (masquerade).
    pub no_snat_subnet_routes: bool,
    /// Use the subnet routes other nodes offer (`--accept-routes`).
    pub accept_routes: bool,
    /// The exit node in use, by control's StableID.
    pub exit_node_id: Option<String>,
    /// The exit node in use, by tailnet IP (given before the node was known by name).
    pub exit_node_ip: Option<std::net::IpAddr>,
    /// Keep the directly connected LANs reachable while using an exit node.
    pub exit_node_allow_lan_access: bool,
}

impl RoutingPrefs {
    /// What goes to control in `Hostinfo.RoutableIPs`: the subnet routes plus, for an exit node,
    /// `0.0.0.0/0` and `::/0`.
    pub fn routable_ips(&self) -> Vec<ipnet::IpNet> {
        let mut out = self.advertise_routes.clone();
        if self.advertise_exit_node {
            out.extend(
                ["0.0.0.0/0", "::/0"]
                    .iter()
                    .filter_map(|s| s.parse::<ipnet::IpNet>().ok()),
            );
        }
        out
    }

    /// Whether an exit node is selected.
    pub fn uses_exit_node(&self) -> bool {
        self.exit_node_id.is_some() || self.exit_node_ip.is_some()
    }
}

/// The node's long-lived private keys. `Debug` of the key types never shows key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// The ts2021 Noise static key: the machine's identity at control.
    pub machine_private: MachinePrivate,
    /// The WireGuard static key: the node's identity in the tailnet.
    pub node_private: NodePrivate,
}

impl Keys {
    /// Fresh keys for a machine that has never run the agent.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            machine_private: MachinePrivate::generate(rng),
            node_private: NodePrivate::generate(rng),
        }
    }
}

/// The opened state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates `dir` (mode 0700) if needed and tightens its mode to 0700 if it is looser, since
    /// it holds private keys.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let err = |source| StateError::Dir {
            path: dir.to_owned(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let meta = fs::metadata(dir).map_err(err)?;
        if !meta.is_dir() {
            return Err(err(io::Error::other("it exists but is not a directory")));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), "state directory was accessible to others; setting mode 0700");
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads `prefs.json`; a missing file means default preferences.
    pub fn load_prefs(&self) -> Result<Prefs, StateError> {
        Ok(self.read_json(PREFS_FILE, "")?.unwrap_or_default())
    }

    /// Atomically replaces `prefs.json`.
    pub fn save_prefs(&self, prefs: &Prefs) -> Result<(), StateError> {
        self.write_json(PREFS_FILE, prefs)
    }

    /// Loads `keys.json`, creating it with fresh keys on first start only.
    pub fn load_or_create_keys(&self) -> Result<Keys, StateError> {
        let hint = " (moving keys.json aside gives this machine a new identity: \
                    it must log in again)";
        if let Some(keys) = self.read_json(KEYS_FILE, hint)? {
            return Ok(keys);
        }
        let keys = Keys::generate(&mut OsRng);
        self.save_keys(&keys)?;
        tracing::info!(
            node_key = %keys.node_private.public(),
            "generated new machine and node keys"
        );
        Ok(keys)
    }

    /// Atomically replaces `keys.json`.
    pub fn save_keys(&self, keys: &Keys) -> Result<(), StateError> {
        self.write_json(KEYS_FILE, keys)
    }

    fn read_json<T: DeserializeOwned>(
        &self,
        name: &str,
        hint: &'static str,
    ) -> Result<Option<T>, StateError> {
        let path = self.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
                hint,
            })
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Io {
            op: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        bytes.push(b'\n');
        write_atomic(&self.dir, name, &bytes).map_err(|source| StateError::Io {
            op: "write",
            path,
            source,
        })
    }
}

/// Writes `dir/name` so that readers (and a reboot) see either the old or the new content.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    // A temporary file left by a crash is garbage from an unfinished write: replace it.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // `mode` only applies when the file is created; enforce 0600 on a leftover file too.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    // The rename is durable only once the directory entry itself is on disk.
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefs_and_keys_round_trip_with_mode_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        assert_eq!(state.load_prefs().unwrap(), Prefs::default());

        let prefs = Prefs {
            control_url: Some("https://control.example".into()),
            want_running: true,
            ..Prefs::default()
        };
        state.save_prefs(&prefs).unwrap();
        assert_eq!(state.load_prefs().unwrap(), prefs);

        let keys = state.load_or_create_keys().unwrap();
        assert_eq!(state.load_or_create_keys().unwrap(), keys);

        for name in [PREFS_FILE, KEYS_FILE] {
            let mode = fs::metadata(state.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let dir_mode = fs::metadata(state.path()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn corrupt_keys_are_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        fs::write(
            tmp.path().join(KEYS_FILE),
            b"{\"machine_private\": \"privkey:12\"",
        )
        .unwrap();
        let err = state.load_or_create_keys().unwrap_err().to_string();
        assert!(err.contains("keys.json"), "{err}");
        assert!(err.contains("corrupt"), "{err}");
        // The damaged file is left alone for the user to inspect.
        assert!(
            fs::read(tmp.path().join(KEYS_FILE))
                .unwrap()
                .starts_with(b"{\"machine")
        );
    }

    #[test]
    fn loose_directory_mode_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(tmp.path()).unwrap();
        let mode = fs::metadata(tmp.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn leftover_temporary_file_does_not_matter() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join(".prefs.json.tmp"), b"garbage from a crash").unwrap();
        assert_eq!(state.load_prefs().unwrap(), Prefs::default());
        state
            .save_prefs(&Prefs {
                ephemeral: true,
                ..Prefs::default()
            })
            .unwrap();
        assert!(state.load_prefs().unwrap().ephemeral);
        assert!(!tmp.path().join(".prefs.json.tmp").exists());
    }
}
