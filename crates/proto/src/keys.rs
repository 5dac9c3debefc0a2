//! Curve25519 key types with Tailscale's typed text forms.
//!
//! Every public key is written as a fixed prefix plus 64 lowercase hex characters
//! (`nodekey:…`, `mkey:…`, `discokey:…`); private keys use `privkey:`. A zero key is still
//! written in full (prefix + 64 zeros), never as an empty string. Parsing accepts upper- or
//! lower-case hex and demands the exact prefix.
//!
//! Private keys never print their bytes through `Debug`, so they cannot leak into logs.

use std::fmt;
use std::str::FromStr;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a key's text form was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyParseError {
    /// The text does not start with the prefix this key type uses.
    #[error("key {got:?} must start with {want:?}")]
    WrongPrefix { want: &'static str, got: String },
    /// The hex part is not 64 hex characters.
    #[error("key hex has the wrong size or characters: got {got} characters, want 64 hex digits")]
    BadHex { got: usize },
}

fn parse_hex32(prefix: &'static str, s: &str) -> Result<[u8; 32], KeyParseError> {
    let Some(hex_part) = s.strip_prefix(prefix) else {
        let shown: String = s.chars().take(16).collect();
        return Err(KeyParseError::WrongPrefix {
            want: prefix,
            got: shown,
        });
    };
    let mut out = [0u8; 32];
    if hex_part.len() != 64 {
        return Err(KeyParseError::BadHex {
            got: hex_part.len(),
        });
    }
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| KeyParseError::BadHex {
        got: hex_part.len(),
    })?;
    Ok(out)
}

/// Generates a clamped X25519 private scalar, as Tailscale does for new keys.
fn random_clamped(rng: &mut impl CryptoRngCore) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    b[0] &= 248;
    b[31] = (b[31] & 127) | 64;
    b
}

macro_rules! public_key {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The text prefix of this key type.
            pub const PREFIX: &'static str = $prefix;

            /// Wraps raw key bytes.
            pub const fn from_bytes(b: [u8; 32]) -> Self {
                Self(b)
            }

            /// The raw 32 bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The all-zero key ("unset" on the wire).
            pub const fn zero() -> Self {
                Self([0; 32])
            }

            /// Whether this is the all-zero key.
            pub fn is_zero(&self) -> bool {
                self.0 == [0; 32]
            }

            /// The first few hex digits, for logs (`[nodekey:ab12c]`).
            pub fn short(&self) -> String {
                format!("[{}{}]", $prefix, &hex::encode(&self.0[..3])[..5])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = KeyParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32($prefix, s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                // Go writes a zero key in full, but tolerate "" as zero like Go's decoder does.
                if s.is_empty() {
                    return Ok(Self::zero());
                }
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! private_key {
    ($(#[$doc:meta])* $name:ident => $public:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Generates a fresh clamped key from `rng`.
            pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
                Self(random_clamped(rng))
            }

            /// Wraps raw private key bytes.
            pub const fn from_bytes(b: [u8; 32]) -> Self {
                Self(b)
            }

            /// The raw 32 secret bytes. Handle with care.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The matching public key.
            pub fn public(&self) -> $public {
                let secret = x25519_dalek::StaticSecret::from(self.0);
                $public(*x25519_dalek::PublicKey::from(&secret).as_bytes())
            }

            /// The X25519 secret, for Diffie-Hellman.
            pub fn to_static_secret(&self) -> x25519_dalek::StaticSecret {
                x25519_dalek::StaticSecret::from(self.0)
            }

            /// The `privkey:<hex>` text form. Deliberately not `Display`, so that a private key
            /// is never formatted into a log line by accident.
            pub fn to_text(&self) -> String {
                format!("privkey:{}", hex::encode(self.0))
            }

            /// Parses the `privkey:<hex>` text form.
            pub fn from_text(s: &str) -> Result<Self, KeyParseError> {
                parse_hex32("privkey:", s).map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<private> public={})", stringify!($name), self.public())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_text())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_text(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

public_key!(
    /// A machine's identity; the client's Noise static key in ts2021. Also the server's key.
    MachinePublic, "mkey:"
);
public_key!(
    /// A node key: the node's WireGuard public key and its DERP identity.
    NodePublic, "nodekey:"
);
public_key!(
    /// A disco key: seals path-discovery messages. Regenerated at every process start.
    DiscoPublic, "discokey:"
);
public_key!(
    /// A per-connection challenge key sent in the ts2021 early payload.
    ChallengePublic, "chalpub:"
);

private_key!(
    /// A machine private key (ts2021 Noise static key).
    MachinePrivate => MachinePublic
);
private_key!(
    /// A node private key (WireGuard static key).
    NodePrivate => NodePublic
);
private_key!(
    /// A disco private key.
    DiscoPrivate => DiscoPublic
);

/// The 32-byte Ed25519 tailnet-lock public key (`nlpub:`). We accept and store it; the
/// control server does not implement tailnet lock.
pub type NlPublicText = String;

#[cfg(test)]
mod tests {
    use super::*;

    struct CountingRng(u8);
    impl rand_core::RngCore for CountingRng {
        fn next_u32(&mut self) -> u32 {
            self.0 = self.0.wrapping_add(1);
            u32::from(self.0)
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for CountingRng {}

    #[test]
    fn text_round_trip() {
        let k = NodePrivate::generate(&mut CountingRng(0)).public();
        let s = k.to_string();
        assert!(s.starts_with("nodekey:") && s.len() == 8 + 64);
        assert_eq!(s.parse::<NodePublic>(), Ok(k));
        assert_eq!(
            s.to_uppercase()
                .replace("NODEKEY:", "nodekey:")
                .parse::<NodePublic>(),
            Ok(k)
        );
    }

    #[test]
    fn zero_key_is_written_in_full() {
        assert_eq!(
            MachinePublic::zero().to_string(),
            format!("mkey:{}", "0".repeat(64))
        );
        assert_eq!(
            serde_json::to_string(&DiscoPublic::zero()).ok(),
            Some(format!("\"discokey:{}\"", "0".repeat(64)))
        );
    }

    #[test]
    fn rejects_bad_text_with_clear_errors() {
        assert!(matches!(
            "mkey:00".parse::<NodePublic>(),
            Err(KeyParseError::WrongPrefix { .. })
        ));
        assert_eq!(
            "nodekey:abc".parse::<NodePublic>(),
            Err(KeyParseError::BadHex { got: 3 })
        );
        let nonhex = format!("nodekey:{}", "zz".repeat(32));
        assert!(matches!(
            nonhex.parse::<NodePublic>(),
            Err(KeyParseError::BadHex { .. })
        ));
    }

    #[test]
    fn private_debug_hides_secret() {
        let k = MachinePrivate::generate(&mut CountingRng(7));
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode(k.as_bytes())));
        assert_eq!(MachinePrivate::from_text(&k.to_text()), Ok(k));
    }

    #[test]
    fn generated_keys_are_clamped() {
        let k = NodePrivate::generate(&mut CountingRng(200));
        assert_eq!(k.as_bytes()[0] & 7, 0);
        assert_eq!(k.as_bytes()[31] & 0xC0, 0x40);
    }
}
