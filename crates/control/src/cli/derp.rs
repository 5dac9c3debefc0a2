//! `control derp`: a standalone DERP relay with STUN, for an extra region.
//!
//! It prints the DERP map region to merge into the control server's `--derp-map` file, so the
//! certificate pin and ports are never copied by hand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use nat::derp::listener::{DerpServerConfig, spawn_derp_server};
use nat::tls::TlsConfig;
use proto::keys::NodePrivate;
use proto::tailcfg::{DerpMap, DerpNode, DerpRegion};

/// Flags of `control derp`.
#[derive(clap::Args)]
pub struct DerpArgs {
    /// Address for DERP over TLS.
    #[arg(long, default_value = "0.0.0.0:443")]
    listen: SocketAddr,
    /// Host name or IP that clients dial (and the certificate's name).
    #[arg(long)]
    hostname: String,
    /// STUN port on the same IP as --listen; 0 disables STUN.
    #[arg(long, default_value_t = 3478)]
    stun_port: u16,
    /// Region id (900-999 are for self-hosted regions).
    #[arg(long, default_value_t = 900)]
    region_id: u16,
    /// Region code shown to users.
    #[arg(long, default_value = "relay")]
    region_code: String,
    /// PEM certificate; without one a self-signed certificate is made and pinned.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Directory for the relay's key and generated certificate.
    #[arg(long, default_value = "/var/lib/control-derp")]
    state_dir: PathBuf,
    /// Write the region's DERP map (JSON) to this file as well as printing it.
    #[arg(long)]
    write_map: Option<PathBuf>,
}

pub async fn run(args: DerpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create --state-dir {}", args.state_dir.display()))?;
    let key = load_or_create_key(&args.state_dir.join("derp.key"))?;
    let tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => TlsConfig::PemFiles {
            cert_path: c.clone(),
            key_path: k.clone(),
        },
        _ => TlsConfig::SelfSigned {
            hostname: args.hostname.clone(),
            state_dir: args.state_dir.clone(),
        },
    };
    let derp = spawn_derp_server(DerpServerConfig::new(args.listen, Some(tls), key)).await?;
    let stun = if args.stun_port != 0 {
        Some(
            nat::stun_server::spawn_stun_server(SocketAddr::new(args.listen.ip(), args.stun_port))
                .await?,
        )
    } else {
        None
    };
    let region_id = i32::from(args.region_id);
    let mut map = DerpMap {
        omit_default_regions: true,
        ..Default::default()
    };
    map.regions.insert(
        region_id,
        DerpRegion {
            region_id,
            region_code: args.region_code.clone(),
            region_name: args.region_code.clone(),
            nodes: vec![DerpNode {
                name: format!("{region_id}a"),
                region_id,
                host_name: args.hostname.clone(),
                // Clients send STUN only to the literal addresses in the map, so announce the
                // relay's address whenever it is known: the hostname if it is an IP, else a
                // specific --listen address.
                ipv4: announced(&args, |ip| ip.is_ipv4()),
                ipv6: announced(&args, |ip| ip.is_ipv6()),
                cert_name: derp.cert_name_pin().map(str::to_string).unwrap_or_default(),
                derp_port: i32::from(derp.local_addr().port()),
                stun_port: stun
                    .as_ref()
                    .map_or(-1, |s| i32::from(s.local_addr().port())),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let json = serde_json::to_string_pretty(&map)?;
    println!("{json}");
    if let Some(path) = &args.write_map {
        // Atomically: whoever waits for the file (a script, a test) never reads half of it.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(addr = %derp.local_addr(), "standalone DERP relay running; pass the map above to `control serve --derp-map`");
    crate::wait_for_signal().await;
    derp.shutdown().await;
    if let Some(s) = stun {
        s.shutdown().await;
    }
    Ok(())
}

/// The address of one family to put in the map's `IPv4`/`IPv6` field ("" when unknown).
fn announced(args: &DerpArgs, family: impl Fn(&std::net::IpAddr) -> bool) -> String {
    let from_host = args.hostname.parse::<std::net::IpAddr>().ok();
    let from_listen = Some(args.listen.ip()).filter(|ip| !ip.is_unspecified());
    from_host
        .or(from_listen)
        .filter(|ip| family(ip))
        .map_or_else(String::new, |ip| ip.to_string())
}

/// The relay's identity key, created once (0600, written atomically).
fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<NodePrivate> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return NodePrivate::from_text(text.trim())
            .with_context(|| format!("{} does not hold a privkey:", path.display()));
    }
    let key = NodePrivate::generate(&mut rand_core::OsRng);
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.to_text().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(key)
}
