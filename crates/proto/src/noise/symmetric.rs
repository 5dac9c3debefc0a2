//! Noise's SymmetricState for `Noise_IK_25519_ChaChaPoly_BLAKE2s`: the running handshake hash
//! `h`, the chaining key `ck`, HKDF over HMAC-BLAKE2s and the one-shot handshake AEAD.
//!
//! Driven by [`super::handshake`], which calls the steps in the order the IK pattern dictates.
//! Each `mix_dh` yields a single-use key; the handshake AEAD always uses the all-zero nonce and
//! `h` as associated data, exactly like Tailscale's `controlbase` package.

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag};
use hmac::{Mac, SimpleHmac};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::handshake::HandshakeError;

/// The Noise protocol name; longer than 32 bytes, so it is hashed to form the initial `h`.
pub const PROTOCOL_NAME: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// The Poly1305 tag size.
pub const TAG_LEN: usize = 16;

/// HMAC over BLAKE2s with BLAKE2s's 64-byte block, as Noise and Go's `hkdf.New(blake2s)` use.
type HmacBlake2s = SimpleHmac<Blake2s256>;

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length (short keys are zero-padded), so this cannot fail.
    let mut mac = <HmacBlake2s as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Noise's HKDF with two outputs: `t = HMAC(ck, ikm)`, `o1 = HMAC(t, 1)`, `o2 = HMAC(t, o1‖2)`.
fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut t = hmac(ck, &[ikm]);
    let o1 = hmac(&t, &[&[1u8]]);
    let o2 = hmac(&t, &[&o1, &[2u8]]);
    t.zeroize();
    (o1, o2)
}

/// A handshake cipher key that may encrypt or decrypt exactly once (nonce 0).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SingleUseKey([u8; 32]);

/// The handshake's symmetric state. Secrets are wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SymmetricState {
    h: [u8; 32],
    ck: [u8; 32],
}

impl SymmetricState {
    /// `InitializeSymmetric(protocol_name)`.
    pub fn new() -> Self {
        let h: [u8; 32] = Blake2s256::digest(PROTOCOL_NAME.as_bytes()).into();
        Self { h, ck: h }
    }

    /// `h = BLAKE2s(h ‖ data)`.
    pub fn mix_hash(&mut self, data: &[u8]) {
        let mut d = Blake2s256::new();
        d.update(self.h);
        d.update(data);
        self.h = d.finalize().into();
    }

    /// `MixKey(X25519(private, public))`, returning the single-use cipher key. An all-zero
    /// shared secret (a low-order public key) is refused, as Go's `curve25519.X25519` does.
    pub fn mix_dh(
        &mut self,
        private: &StaticSecret,
        public: &[u8; 32],
        stage: &'static str,
    ) -> Result<SingleUseKey, HandshakeError> {
        let shared = private.diffie_hellman(&PublicKey::from(*public));
        if !shared.was_contributory() {
            return Err(HandshakeError::WeakKey { stage });
        }
        let (ck, k) = hkdf2(&self.ck, shared.as_bytes());
        self.ck = ck;
        Ok(SingleUseKey(k))
    }

    /// Seals `buf` in place with `key` (nonce 0, AD = h), returns the tag and mixes the full
    /// ciphertext (`buf ‖ tag`) into `h`.
    pub fn encrypt_and_hash(
        &mut self,
        key: SingleUseKey,
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], HandshakeError> {
        let aead = ChaCha20Poly1305::new(&key.0.into());
        let tag = aead
            .encrypt_in_place_detached(&[0u8; 12].into(), &self.h, buf)
            .map_err(|_| HandshakeError::Crypto)?;
        let tag: [u8; TAG_LEN] = tag.into();
        let mut d = Blake2s256::new();
        d.update(self.h);
        d.update(&*buf);
        d.update(tag);
        self.h = d.finalize().into();
        Ok(tag)
    }

    /// Opens `buf ‖ tag` in place with `key` (nonce 0, AD = h) and mixes the ciphertext into
    /// `h`. On failure `buf` may hold garbage and the caller must abandon the handshake.
    pub fn decrypt_and_hash(
        &mut self,
        key: SingleUseKey,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
        stage: &'static str,
    ) -> Result<(), HandshakeError> {
        // h must absorb the ciphertext, so hash it before decrypting in place.
        let mut d = Blake2s256::new();
        d.update(self.h);
        d.update(&*buf);
        d.update(tag);
        let next_h: [u8; 32] = d.finalize().into();
        let aead = ChaCha20Poly1305::new(&key.0.into());
        aead.decrypt_in_place_detached(&[0u8; 12].into(), &self.h, buf, Tag::from_slice(tag))
            .map_err(|_| HandshakeError::Decrypt { stage })?;
        self.h = next_h;
        Ok(())
    }

    /// The current handshake hash (channel binding once the handshake is complete).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.h
    }

    /// `Split()`: `(k1, k2) = HKDF(ck, "")`. k1 protects client→server, k2 server→client.
    pub fn split(self) -> ([u8; 32], [u8; 32]) {
        hkdf2(&self.ck, &[])
    }
}
