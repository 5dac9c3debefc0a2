//! TLS certificates for the DERP relay: operator-provided PEM files or a self-signed certificate
//! persisted in a state directory, plus the `sha256-raw:` pin clients use to trust it.
//!
//! Called once at start-up by whoever starts the relay ([`TlsConfig::load`]); the result feeds
//! [`TlsMaterial::server_config`]. [`cert_name_pin`] needs no TLS stack and is always available,
//! so the control server can compute `DERPNode.CertName` from a certificate's DER bytes.
//!
//! A self-signed certificate is generated with rcgen (ECDSA P-256) for one host name or IP
//! address (as a SAN; IPs become IP SANs), written as `derp-selfsigned-<host>.crt`/`.key` with
//! the key file mode 0600 and both files written atomically (temporary file + rename), and
//! reused on later starts so the pin stays stable. The validity is rcgen's default (1975 to
//! 4096): Tailscale checks the pin and the dates only, so a long validity means a pin published
//! in the DERP map never expires on its own.

use sha2::{Digest, Sha256};

/// The `DERPNode.CertName` value that pins a certificate: `sha256-raw:` and the lowercase hex
/// SHA-256 of the DER-encoded leaf certificate (what tailscale's `tlsdial` compares).
pub fn cert_name_pin(der: &[u8]) -> String {
    format!("sha256-raw:{}", hex::encode(Sha256::digest(der)))
}

/// Parses a `sha256-raw:<64 hex>` CertName into the pinned digest. `None` for any other form.
pub fn parse_cert_name_pin(cert_name: &str) -> Option<[u8; 32]> {
    let hex_part = cert_name.strip_prefix("sha256-raw:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

#[cfg(feature = "derp-server")]
pub use material::{TlsConfig, TlsError, TlsMaterial};

#[cfg(feature = "derp-server")]
mod material {
    use std::fmt;
    use std::fs;
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// Why certificates could not be loaded or created.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum TlsError {
        /// Reading or writing a certificate or key file failed.
        #[error("{action} {path}: {source}")]
        Io {
            action: &'static str,
            path: PathBuf,
            source: io::Error,
        },
        /// A PEM file holds no certificate.
        #[error("no certificate found in {0}")]
        NoCertificate(String),
        /// A PEM file holds no private key.
        #[error("no private key found in {0}")]
        NoPrivateKey(String),
        /// The PEM text is malformed.
        #[error("malformed PEM in {what}: {source}")]
        Pem { what: String, source: io::Error },
        /// rcgen could not create the certificate (e.g. an invalid host name).
        #[error("cannot create a self-signed certificate for {host:?}: {reason}")]
        Generate { host: String, reason: String },
        /// rustls rejected the certificate/key pair.
        #[error("the certificate and key are not usable for TLS: {0}")]
        Rustls(#[from] rustls::Error),
    }

    /// Where the relay's certificate comes from.
    #[derive(Clone, Debug)]
    #[non_exhaustive]
    pub enum TlsConfig {
        /// Operator-provided PEM files (full chain, leaf first; PKCS#8, PKCS#1 or SEC1 key).
        PemFiles {
            cert_path: PathBuf,
            key_path: PathBuf,
        },
        /// A self-signed certificate for `hostname` (DNS name or IP), kept in `state_dir`.
        SelfSigned {
            hostname: String,
            state_dir: PathBuf,
        },
        /// Already-loaded material (tests, or callers with their own storage).
        Material(TlsMaterial),
    }

    impl TlsConfig {
        /// Loads (or creates) the certificate and key.
        pub fn load(&self) -> Result<TlsMaterial, TlsError> {
            match self {
                Self::PemFiles {
                    cert_path,
                    key_path,
                } => TlsMaterial::from_pem_files(cert_path, key_path),
                Self::SelfSigned {
                    hostname,
                    state_dir,
                } => TlsMaterial::load_or_create_self_signed(hostname, state_dir),
                Self::Material(m) => Ok(m.clone()),
            }
        }
    }

    /// A certificate chain and its private key. `Debug` never shows the key.
    pub struct TlsMaterial {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    impl Clone for TlsMaterial {
        fn clone(&self) -> Self {
            Self {
                chain: self.chain.clone(),
                key: self.key.clone_key(),
            }
        }
    }

    impl fmt::Debug for TlsMaterial {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TlsMaterial")
                .field("certificates", &self.chain.len())
                .field("cert_name_pin", &self.cert_name_pin())
                .finish_non_exhaustive()
        }
    }

    impl TlsMaterial {
        /// Parses PEM text: all certificates from `cert_pem`, the first private key from `key_pem`.
        pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
            Self::from_pem_named(cert_pem, "certificate PEM", key_pem, "key PEM")
        }

        fn from_pem_named(
            cert_pem: &[u8],
            cert_what: &str,
            key_pem: &[u8],
            key_what: &str,
        ) -> Result<Self, TlsError> {
            let chain = rustls_pemfile::certs(&mut &cert_pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TlsError::Pem {
                    what: cert_what.to_owned(),
                    source,
                })?;
            if chain.is_empty() {
                return Err(TlsError::NoCertificate(cert_what.to_owned()));
            }
            let key = rustls_pemfile::private_key(&mut &key_pem[..])
                .map_err(|source| TlsError::Pem {
                    what: key_what.to_owned(),
                    source,
                })?
                .ok_or_else(|| TlsError::NoPrivateKey(key_what.to_owned()))?;
            Ok(Self { chain, key })
        }

        /// Reads operator-provided PEM files.
        pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
            let read = |p: &Path| {
                fs::read(p).map_err(|source| TlsError::Io {
                    action: "read",
                    path: p.to_owned(),
                    source,
                })
            };
            Self::from_pem_named(
                &read(cert_path)?,
                &cert_path.display().to_string(),
                &read(key_path)?,
                &key_path.display().to_string(),
            )
        }

        /// A fresh in-memory self-signed certificate for `hostname` (not persisted).
        pub fn self_signed(hostname: &str) -> Result<Self, TlsError> {
            let (cert_pem, key_pem) = generate_pem(hostname)?;
            Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
        }

        /// Loads the self-signed certificate for `hostname` from `state_dir`, creating and
        /// persisting one if it is missing or unreadable.
        pub fn load_or_create_self_signed(
            hostname: &str,
            state_dir: &Path,
        ) -> Result<Self, TlsError> {
            let stem = format!("derp-selfsigned-{}", sanitize(hostname));
            let cert_path = state_dir.join(format!("{stem}.crt"));
            let key_path = state_dir.join(format!("{stem}.key"));
            if cert_path.exists() && key_path.exists() {
                match Self::from_pem_files(&cert_path, &key_path) {
                    Ok(m) => return Ok(m),
                    Err(err) => {
                        tracing::warn!(%err, "derp: stored self-signed certificate unusable; creating a new one")
                    }
                }
            }
            create_dir_private(state_dir)?;
            let (cert_pem, key_pem) = generate_pem(hostname)?;
            // Key first: a crash in between leaves a key without a certificate, which is
            // regenerated on the next start, never a certificate without its key.
            write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
            tracing::info!(path = %cert_path.display(), "derp: created self-signed certificate");
            Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
        }

        /// The certificate chain, leaf first.
        pub fn chain(&self) -> &[CertificateDer<'static>] {
            &self.chain
        }

        /// DER bytes of the leaf certificate.
        pub fn leaf_der(&self) -> &[u8] {
            self.chain.first().map_or(&[], |c| c.as_ref())
        }

        /// The `sha256-raw:<hex>` CertName that pins this leaf certificate.
        pub fn cert_name_pin(&self) -> String {
            super::cert_name_pin(self.leaf_der())
        }

        /// A rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`).
        pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(self.chain.clone(), self.key.clone_key())?;
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(cfg))
        }
    }

    fn generate_pem(hostname: &str) -> Result<(String, String), TlsError> {
        let gen_err = |e: rcgen::Error| TlsError::Generate {
            host: hostname.to_owned(),
            reason: e.to_string(),
        };
        // Strip the brackets of an IPv6 literal so it becomes an IP SAN.
        let name = hostname
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut params = rcgen::CertificateParams::new(vec![name.clone()]).map_err(gen_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// File-name-safe form of a host name or IP literal.
    fn sanitize(host: &str) -> String {
        host.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    fn create_dir_private(dir: &Path) -> Result<(), TlsError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|source| TlsError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })
    }

    /// Writes `data` to a temporary file beside `path` with `mode`, syncs it, then renames it
    /// over `path`, so readers see either the old or the new file, never a partial one.
    fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
        let io_err = |action, source| TlsError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let result = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| io_err("write", e))
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        #[test]
        fn self_signed_is_persisted_and_reused() {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let a = TlsMaterial::load_or_create_self_signed("127.0.0.1", &state).unwrap();
            let b = TlsMaterial::load_or_create_self_signed("127.0.0.1", &state).unwrap();
            assert_eq!(a.cert_name_pin(), b.cert_name_pin());
            let key_path = state.join("derp-selfsigned-127.0.0.1.key");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(
                    fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
            let other =
                TlsMaterial::load_or_create_self_signed("derp.example.test", &state).unwrap();
            assert_ne!(other.cert_name_pin(), a.cert_name_pin());
            assert!(a.server_config().is_ok());
            assert!(!format!("{a:?}").contains("PRIVATE"));
        }

        #[test]
        fn corrupt_files_are_replaced() {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("derp-selfsigned-h.crt"), "garbage").unwrap();
            fs::write(dir.path().join("derp-selfsigned-h.key"), "garbage").unwrap();
            let m = TlsMaterial::load_or_create_self_signed("h", dir.path()).unwrap();
            assert!(m.server_config().is_ok());
        }

        #[test]
        fn pem_errors_are_clear() {
            assert!(matches!(
                TlsMaterial::from_pem(b"", b""),
                Err(TlsError::NoCertificate(_))
            ));
            let (cert, _) = generate_pem("x").unwrap();
            assert!(matches!(
                TlsMaterial::from_pem(cert.as_bytes(), b""),
                Err(TlsError::NoPrivateKey(_))
            ));
        }

        #[test]
        fn pin_format() {
            let pin = super::super::cert_name_pin(b"abc");
            assert_eq!(
                pin,
                "sha256-raw:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            );
            assert_eq!(
                super::super::parse_cert_name_pin(&pin).map(hex::encode),
                Some(pin[11..].to_owned())
            );
            assert_eq!(super::super::parse_cert_name_pin("derp.example.com"), None);
        }
    }
}
