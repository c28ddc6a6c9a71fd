//! The waiting room's signed pass: what an admitted holder shows to reserve while the room is
//! active. A pass names the holder and the wave and carries an expiry, signed with
//! HMAC-SHA256 under the server's secret; it is checked in constant time, so a forged, altered,
//! expired or borrowed pass is refused without a lookup.
//!
//! Text form: `v1.{national_id}.{wave}.{expires_ms}.{signature}`, the signature 64 hex digits.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a pass was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassRefusal {
    /// Not a pass at all, or its signature does not match (forged or altered).
    Forged,
    /// Genuine, but for another holder or another wave.
    NotYours,
    /// Genuine and yours, but past its expiry.
    Expired,
}

/// The secret passes are signed with (at least 32 bytes).
pub struct PassKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for PassKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassKey(..)")
    }
}

/// The shortest secret accepted, in bytes.
pub const PASS_KEY_BYTES_MIN: usize = 32;

impl PassKey {
    /// A key from `secret`; `None` if it is shorter than [`PASS_KEY_BYTES_MIN`].
    pub fn new(secret: &[u8]) -> Option<PassKey> {
        (secret.len() >= PASS_KEY_BYTES_MIN).then(|| PassKey {
            key: secret.to_vec(),
        })
    }

    fn mac(&self, national_id: u64, wave: u32, expires_ms: i64) -> Hmac<Sha256> {
        // A key of any length is accepted by HMAC; `new` bounded it from below.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of every length"),
        };
        mac.update(format!("miqat-pass-v1|{national_id}|{wave}|{expires_ms}").as_bytes());
        mac
    }

    /// The pass admitting holder `national_id` to reserve in wave `wave` until `expires_ms`.
    pub fn sign(&self, national_id: u64, wave: u32, expires_ms: i64) -> String {
        let signature: String = self
            .mac(national_id, wave, expires_ms)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("v1.{national_id}.{wave}.{expires_ms}.{signature}")
    }

    /// Accepts `pass` for holder `national_id` in wave `wave` at `now_ms`, or says why not.
    /// The signature is checked first (in constant time), so nothing is learnt from a forgery.
    pub fn verify(
        &self,
        pass: &str,
        national_id: u64,
        wave: u32,
        now_ms: i64,
    ) -> Result<(), PassRefusal> {
        let mut parts = pass.trim().split('.');
        let (Some("v1"), Some(nid), Some(w), Some(expires), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(PassRefusal::Forged);
        };
        let (Ok(nid), Ok(w), Ok(expires_ms)) =
            (nid.parse::<u64>(), w.parse::<u32>(), expires.parse::<i64>())
        else {
            return Err(PassRefusal::Forged);
        };
        let signature = crate::principals::parse_hex_32(signature).ok_or(PassRefusal::Forged)?;
        self.mac(nid, w, expires_ms)
            .verify_slice(&signature)
            .map_err(|_| PassRefusal::Forged)?;
        if nid != national_id || w != wave {
            return Err(PassRefusal::NotYours);
        }
        if now_ms >= expires_ms {
            return Err(PassRefusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PassKey {
        PassKey::new(&[7u8; 32]).expect("32 bytes")
    }

    #[test]
    fn a_pass_admits_its_holder_in_its_wave_until_it_expires() {
        let pass = key().sign(1234567890, 0, 5_000);
        assert_eq!(key().verify(&pass, 1234567890, 0, 4_999), Ok(()));
        assert_eq!(
            key().verify(&pass, 1234567890, 0, 5_000),
            Err(PassRefusal::Expired)
        );
        assert_eq!(
            key().verify(&pass, 1234567891, 0, 0),
            Err(PassRefusal::NotYours)
        );
        assert_eq!(
            key().verify(&pass, 1234567890, 1, 0),
            Err(PassRefusal::NotYours)
        );
    }

    #[test]
    fn a_forged_or_altered_pass_is_refused() {
        let pass = key().sign(1234567890, 0, 5_000);
        let other = PassKey::new(&[8u8; 32]).expect("32 bytes");
        assert_eq!(
            other.verify(&pass, 1234567890, 0, 0),
            Err(PassRefusal::Forged)
        );
        // A later expiry with the old signature.
        let stretched = pass.replace(".5000.", ".9000.");
        assert_eq!(
            key().verify(&stretched, 1234567890, 0, 6_000),
            Err(PassRefusal::Forged)
        );
        for bad in [
            "",
            "v1",
            "v2.1.0.5000.00",
            &format!("{pass}.x"),
            &pass[..pass.len() - 1],
        ] {
            assert_eq!(
                key().verify(bad, 1234567890, 0, 0),
                Err(PassRefusal::Forged),
                "{bad:?}"
            );
        }
        assert!(PassKey::new(&[1u8; 31]).is_none());
    }
}
