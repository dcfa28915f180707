//! Acknowledgements: from the console, the API, or a signed, expiring link.
//!
//! A link token is `BASE64URL(payload) "." BASE64URL(HMAC-SHA256(key, payload))` with
//! payload `v1|{alert id}|{recipient key}|{expiry, unix ms}`. The MAC covers the alert, the
//! recipient and the expiry, so none can be changed; verification compares in constant time
//! (`Mac::verify_slice`) and checks expiry against the time it is given.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::notice::AlertId;

type HmacSha256 = Hmac<Sha256>;

/// Why a link was refused. Deliberately coarse: the caller shows one "link not valid"
/// page; the variant is for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Not a token of this format.
    #[error("malformed acknowledgement token")]
    Malformed,
    /// The signature does not match (tampered, or signed with another key).
    #[error("acknowledgement token signature does not match")]
    BadSignature,
    /// Signed, but past its expiry.
    #[error("acknowledgement token expired")]
    Expired,
    /// The signing key is shorter than 32 bytes.
    #[error("acknowledgement key must be at least 32 bytes")]
    WeakKey,
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckClaim {
    /// The alert.
    pub alert: AlertId,
    /// Who the link was sent to ([`crate::Recipient::key`]).
    pub recipient: String,
    /// Until when it was valid.
    pub expires: Timestamp,
}

/// Signs and verifies acknowledgement links.
#[derive(Clone)]
pub struct AckSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for AckSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckSigner(..)")
    }
}

impl AckSigner {
    /// A signer with a secret key of at least 32 bytes.
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, AckError> {
        let key = key.into();
        if key.len() < 32 {
            return Err(AckError::WeakKey);
        }
        Ok(AckSigner { key })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; new_from_slice cannot fail for it.
        <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// A token for `recipient` to acknowledge `alert` until `expires`.
    pub fn sign(&self, alert: &AlertId, recipient: &str, expires: Timestamp) -> String {
        let payload = format!("v1|{alert}|{recipient}|{}", expires.as_millisecond());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks a token's signature (constant time) and expiry at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<AckClaim, AckError> {
        if token.len() > 1024 {
            return Err(AckError::Malformed);
        }
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(AckError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| AckError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| AckError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&tag).map_err(|_| AckError::BadSignature)?;
        // Only a payload we signed gets parsed.
        let text = std::str::from_utf8(&payload).map_err(|_| AckError::Malformed)?;
        let mut parts = text.split('|');
        let (Some("v1"), Some(alert), Some(recipient), Some(expiry), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AckError::Malformed);
        };
        let alert = AlertId::new(alert).map_err(|_| AckError::Malformed)?;
        let expires = expiry
            .parse::<i64>()
            .ok()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .ok_or(AckError::Malformed)?;
        if now >= expires {
            return Err(AckError::Expired);
        }
        Ok(AckClaim {
            alert,
            recipient: recipient.to_owned(),
            expires,
        })
    }
}

/// Where an acknowledgement came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum AckSource {
    /// A logged-in console user.
    Console {
        /// Their user id.
        user: String,
    },
    /// An API client.
    Api {
        /// The client or user id.
        user: String,
    },
    /// The signed link in a notification.
    Link {
        /// The recipient the link was sent to.
        recipient: String,
    },
}

/// An acknowledgement: who, how and when. Ingest writes it to the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// The alert.
    pub alert: AlertId,
    /// Who and how.
    pub by: AckSource,
    /// When.
    pub at: Timestamp,
}

impl Acknowledgement {
    /// The acknowledgement a verified link makes, at `now`.
    pub fn from_link(claim: AckClaim, now: Timestamp) -> Self {
        Acknowledgement {
            alert: claim.alert,
            by: AckSource::Link {
                recipient: claim.recipient,
            },
            at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> AckSigner {
        AckSigner::new(*b"0123456789abcdef0123456789abcdef").expect("32-byte key")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let s = signer();
        let alert = AlertId::new("al-1").expect("id");
        let token = s.sign(&alert, "staff:ann", at("2026-01-01T12:00:00Z"));
        let claim = s
            .verify(&token, at("2026-01-01T11:59:59Z"))
            .expect("valid before expiry");
        assert_eq!(claim.alert, alert);
        assert_eq!(claim.recipient, "staff:ann");
        assert_eq!(
            s.verify(&token, at("2026-01-01T12:00:00Z")),
            Err(AckError::Expired)
        );
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let s = signer();
        let alert = AlertId::new("al-1").expect("id");
        let now = at("2026-01-01T00:00:00Z");
        let token = s.sign(&alert, "staff:ann", at("2026-01-02T00:00:00Z"));
        let (payload, tag) = token.split_once('.').expect("two parts");
        // Another alert id under the old signature.
        let forged = URL_SAFE_NO_PAD.encode(b"v1|al-2|staff:ann|1767312000000");
        assert_eq!(
            s.verify(&format!("{forged}.{tag}"), now),
            Err(AckError::BadSignature)
        );
        // A longer expiry under the old signature.
        let later = URL_SAFE_NO_PAD.encode(b"v1|al-1|staff:ann|99999999999999");
        assert_eq!(
            s.verify(&format!("{later}.{tag}"), now),
            Err(AckError::BadSignature)
        );
        let other = AckSigner::new(*b"ffffffffffffffffffffffffffffffff").expect("key");
        assert_eq!(other.verify(&token, now), Err(AckError::BadSignature));
        assert_eq!(s.verify(payload, now), Err(AckError::Malformed));
        assert_eq!(s.verify("", now), Err(AckError::Malformed));
        assert_eq!(s.verify("!!.??", now), Err(AckError::Malformed));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(AckSigner::new(*b"short"), Err(AckError::WeakKey)));
    }
}
