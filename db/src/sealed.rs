//! Secrets at rest (device signing secrets): sealed with XChaCha20-Poly1305 under a key from
//! configuration (`--secrets-key`), each bound to the row it belongs to (its id is the associated
//! data, so a sealed secret copied onto another row does not open). Stored as
//! `enc:v1:` + base64 of nonce and ciphertext; a value without the prefix is in clear (written
//! before a key was configured) and is sealed at the next start that has one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";
const NONCE_BYTES: usize = 24;

/// The key secrets are sealed under. Not `Debug`-printable beyond its name.
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(…)")
    }
}

/// Why a configured secrets key is refused.
#[derive(Debug, thiserror::Error)]
#[error("the secrets key must have at least 32 characters (128 bits as hex)")]
pub struct WeakKey;

impl SecretsKey {
    /// The key derived from configured text (at least 32 characters: 128 bits written as hex).
    pub fn new(configured: &str) -> Result<Self, WeakKey> {
        if configured.chars().count() < 32 {
            return Err(WeakKey);
        }
        let key = Sha256::new()
            .chain_update(b"parkflow secrets at rest v1:")
            .chain_update(configured.as_bytes())
            .finalize();
        Ok(Self {
            cipher: XChaCha20Poly1305::new(&key),
        })
    }

    pub(crate) fn seal(&self, owner: &str, secret: &str) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: owner.as_bytes(),
                },
            )
            .expect("sealing a short secret cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD_NO_PAD.encode(bytes))
    }

    pub(crate) fn unseal(&self, owner: &str, stored: &str) -> Option<String> {
        let bytes = STANDARD_NO_PAD.decode(stored.strip_prefix(PREFIX)?).ok()?;
        if bytes.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let opened = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: owner.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(opened).ok()
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_under_its_key_and_for_its_row() {
        let key = SecretsKey::new("0123456789abcdef0123456789abcdef").unwrap();
        let sealed = key.seal("cam-1", "hmac-secret");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("hmac-secret"));
        assert_ne!(
            sealed,
            key.seal("cam-1", "hmac-secret"),
            "a fresh nonce each time"
        );
        assert_eq!(key.unseal("cam-1", &sealed).as_deref(), Some("hmac-secret"));
        assert_eq!(
            key.unseal("cam-2", &sealed),
            None,
            "copied onto another row"
        );
        let other = SecretsKey::new("fedcba9876543210fedcba9876543210").unwrap();
        assert_eq!(other.unseal("cam-1", &sealed), None);
        assert_eq!(key.unseal("cam-1", "enc:v1:AAAA"), None);
        assert!(SecretsKey::new("short").is_err());
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// What sealing costs a city's registry load: `cargo test --release -p parkflow-db --lib
    /// sealed::cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn unsealing_a_citys_device_secrets() {
        let key = SecretsKey::new("0123456789abcdef0123456789abcdef").unwrap();
        let sealed: Vec<(String, String)> = (0..848_000)
            .map(|i| {
                let id = format!("bay-sensor-{i}");
                let secret = key.seal(&id, "00112233445566778899aabbccddeeff");
                (id, secret)
            })
            .collect();
        let started = std::time::Instant::now();
        for (id, secret) in &sealed {
            assert!(key.unseal(id, secret).is_some());
        }
        println!("unsealed 848,000 device secrets in {:?}", started.elapsed());
    }
}
