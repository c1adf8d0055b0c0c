//! Authenticated encryption of every byte that leaves the host.
//!
//! A sealed blob is `nonce (24) || ciphertext || tag (16)` under
//! XChaCha20-Poly1305. Nonces are random: 192 bits make collisions a
//! non-issue even across many hosts sealing under one key. The associated
//! data binds a blob to what it claims to be (a chunk id, "pack index", ...),
//! so a backend cannot swap one sealed object for another.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed blob carries beyond its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError;

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("authentication failed (wrong key, or the object was altered)")
    }
}
impl std::error::Error for OpenError {}

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer { cipher: XChaCha20Poly1305::new(&(*key).into()) }
    }

    /// Seal `plaintext`, appending the sealed blob to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        // getrandom only fails when the OS has no entropy source at all; there
        // is no safe way to continue sealing then.
        getrandom::fill(&mut nonce).expect("the OS random source failed");
        let start = out.len();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let nonce = XNonce::from(nonce);
        let body = &mut out[start + NONCE_LEN..];
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, aad, body.into())
            .expect("XChaCha20-Poly1305 accepts any message length we produce");
        out.extend_from_slice(tag.as_slice());
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        self.seal_into(aad, plaintext, &mut out);
        out
    }

    /// Open a sealed blob, checking it was sealed with this key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError)?;
        let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| OpenError)?;
        let mut buf = body.to_vec();
        self.cipher.decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), &tag).map_err(|_| OpenError)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_and_tamper() {
        let s = Sealer::new(&[7u8; 32]);
        let sealed = s.seal(b"aad", b"hello world");
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert_eq!(s.open(b"aad", &sealed).unwrap(), b"hello world");
        assert!(s.open(b"other", &sealed).is_err());
        let other = Sealer::new(&[8u8; 32]);
        assert!(other.open(b"aad", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(s.open(b"aad", &t).is_err(), "flip at {i} undetected");
        }
        assert!(s.open(b"aad", &sealed[..10]).is_err());
    }

    proptest! {
        #[test]
        fn open_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = Sealer::new(&[1u8; 32]);
            let _ = s.open(b"x", &data);
        }
    }
}
