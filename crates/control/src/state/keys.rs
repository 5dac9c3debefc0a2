//! Auth-key and API-key secrets: generation, parsing and verification.
//!
//! A key's text is `tskey-<kind>-<key_id>-<secret>`. Only the SHA-256 of the whole text is
//! stored; the key id (public, shown in listings) finds the row. SHA-256 rather than a password
//! hash is enough here because the secret is 128 random bits, not something a person chose.

use rand::Rng;
use rand::distributions::Alphanumeric;
use sha2::{Digest, Sha256};

/// What kind of key a text claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Auth,
    Api,
}

impl KeyKind {
    fn tag(self) -> &'static str {
        match self {
            KeyKind::Auth => "auth",
            KeyKind::Api => "api",
        }
    }
}

/// A freshly minted key: the text to show once, and what to store.
pub struct MintedKey {
    pub text: String,
    pub key_id: String,
    pub secret_hash: String,
}

/// Mints a key of `kind` with randomness from `rng`.
pub fn mint(kind: KeyKind, rng: &mut impl Rng) -> MintedKey {
    let id: String = (0..12)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect();
    let key_id = format!("k{id}");
    let secret: String = (0..32)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect();
    let text = format!("tskey-{}-{key_id}-{secret}", kind.tag());
    let secret_hash = hash(&text);
    MintedKey {
        text,
        key_id,
        secret_hash,
    }
}

/// The key id inside a key text, if the text has the right shape.
pub fn key_id_of(kind: KeyKind, text: &str) -> Option<&str> {
    let rest = text
        .strip_prefix("tskey-")?
        .strip_prefix(kind.tag())?
        .strip_prefix('-')?;
    let (id, secret) = rest.split_once('-')?;
    (id.starts_with('k') && !secret.is_empty()).then_some(id)
}

/// The stored hash of a key text.
pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Compares a presented key text with a stored hash in constant time.
pub fn verify(text: &str, stored_hash: &str) -> bool {
    let got = hash(text);
    got.len() == stored_hash.len()
        && got
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_parse_verify() {
        let mut rng = rand::thread_rng();
        let k = mint(KeyKind::Auth, &mut rng);
        assert!(k.text.starts_with("tskey-auth-k"));
        assert_eq!(key_id_of(KeyKind::Auth, &k.text), Some(k.key_id.as_str()));
        assert_eq!(key_id_of(KeyKind::Api, &k.text), None);
        assert!(verify(&k.text, &k.secret_hash));
        assert!(!verify(&format!("{}x", k.text), &k.secret_hash));
        assert_eq!(key_id_of(KeyKind::Auth, "tskey-auth-"), None);
        assert_eq!(key_id_of(KeyKind::Auth, "garbage"), None);
    }
}
