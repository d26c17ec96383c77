//! Credentials at rest: sealed with XChaCha20-Poly1305 under a key from the environment, so
//! that whoever reads the store (a dump, a replica, a `MONITOR`) does not read the upstream's
//! credential. The upstream's name is the associated data: a sealed credential copied under
//! another upstream's key does not open. Without a key, the credential is stored as it is.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fmt;

const NONCE_LEN: usize = 24;

/// A 32-byte key (`encryption_key`). Neither `Debug` nor errors show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// 64 hex digits, or standard base64 (padded or not) of 32 bytes.
    pub fn parse(text: &str) -> Result<SealKey, String> {
        let t = text.trim();
        const ACCEPTED: &str = "accepted: 32 bytes written as 64 hex digits or as base64 (e.g. the output of `openssl rand -base64 32`), usually ${FLEETGATE_LOGIN_KEY}";
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| format!("the key is not hex; {ACCEPTED}"))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                .map_err(|_| {
                    format!(
                        "the key ({} characters) is neither 64 hex digits nor base64; {ACCEPTED}",
                        t.len()
                    )
                })?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("the key is {} bytes long; {ACCEPTED}", b.len()))?;
        Ok(SealKey(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> SealKey {
        SealKey(key)
    }
}

/// Seals and opens one upstream's credentials.
#[derive(Clone)]
pub struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
    context: Vec<u8>,
}

/// A sealed value did not open: another key, another upstream, or damaged bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stored credential does not open with this key (another key, another upstream, or damaged)")]
pub struct Unsealable;

impl Sealer {
    /// For the upstream `upstream`, with `key` or none.
    pub fn new(key: Option<&SealKey>, upstream: &str) -> Sealer {
        Sealer {
            cipher: key.map(|k| XChaCha20Poly1305::new((&k.0).into())),
            context: format!("fleetgate upstream login {upstream}").into_bytes(),
        }
    }

    /// `[0] ++ plain` without a key; `[1] ++ nonce ++ ciphertext` with one.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let Some(cipher) = &self.cipher else {
            let mut out = Vec::with_capacity(plain.len() + 1);
            out.push(0);
            out.extend_from_slice(plain);
            return out;
        };
        let mut nonce = [0u8; NONCE_LEN];
        if getrandom::fill(&mut nonce).is_err() {
            // No randomness: a counter-free fallback would risk nonce reuse. The time and a
            // process-wide counter make a unique nonce for this process.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            nonce[..16].copy_from_slice(&now.to_le_bytes());
            nonce[16..].copy_from_slice(&SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
        }
        let payload = Payload {
            msg: plain,
            aad: &self.context,
        };
        // Encryption into a Vec fails only for messages beyond 256 GiB.
        let sealed = cipher.encrypt(XNonce::from_slice(&nonce), payload).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain value of what [`seal`](Self::seal) made. A value sealed with a key does not
    /// open without it, and a plain one is refused when a key is set (a key was added: the
    /// old plain value is ignored and replaced).
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        match (sealed.split_first(), &self.cipher) {
            (Some((0, plain)), None) => Ok(plain.to_vec()),
            (Some((1, rest)), Some(cipher)) if rest.len() > NONCE_LEN => {
                let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
                let payload = Payload {
                    msg: ciphertext,
                    aad: &self.context,
                };
                cipher
                    .decrypt(XNonce::from_slice(nonce), payload)
                    .map_err(|_| Unsealable)
            }
            _ => Err(Unsealable),
        }
    }

    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_credential_opens_only_with_its_key_and_upstream() {
        let key = SealKey::parse(&"ab".repeat(32)).unwrap();
        let sealer = Sealer::new(Some(&key), "billing");
        let sealed = sealer.seal(b"sid=secret");
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "the secret is not in the sealed bytes"
        );
        assert_eq!(sealer.open(&sealed).unwrap(), b"sid=secret");
        assert_ne!(sealer.seal(b"sid=secret"), sealed, "a fresh nonce each time");
        let other_key = Sealer::new(Some(&SealKey::from_bytes([7; 32])), "billing");
        assert_eq!(other_key.open(&sealed), Err(Unsealable));
        let other_upstream = Sealer::new(Some(&key), "crm");
        assert_eq!(other_upstream.open(&sealed), Err(Unsealable));
        assert_eq!(Sealer::new(None, "billing").open(&sealed), Err(Unsealable));
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open(&damaged), Err(Unsealable));
    }

    #[test]
    fn without_a_key_the_value_is_kept_as_it_is() {
        let plain = Sealer::new(None, "u");
        assert_eq!(plain.open(&plain.seal(b"tok")).unwrap(), b"tok");
        let keyed = Sealer::new(Some(&SealKey::from_bytes([1; 32])), "u");
        assert_eq!(
            keyed.open(&plain.seal(b"tok")),
            Err(Unsealable),
            "a plain value is not trusted once a key is set"
        );
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(SealKey::parse(&b64).unwrap(), SealKey::from_bytes([9; 32]));
        assert_eq!(SealKey::parse(&"09".repeat(32)).unwrap(), SealKey::from_bytes([9; 32]));
        let short = SealKey::parse(&base64::engine::general_purpose::STANDARD.encode([1u8; 16])).unwrap_err();
        assert!(short.contains("16 bytes"), "{short}");
        assert!(SealKey::parse("not a key!").unwrap_err().contains("neither"));
        assert!(!format!("{:?}", SealKey::from_bytes([9; 32])).contains('9'));
    }
}
