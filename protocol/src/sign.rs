//! Message signing (SPEC §2 "Authenticity"): JWS compact serialization (RFC 7515), `alg` HS256,
//! `kid` = the device id, the device's secret (its UTF-8 bytes) as the HMAC key.
//!
//! Devices sign what they publish and the platform signs the commands it sends to gates. The JSON
//! inside carries the `topic` it is meant for, which must equal the topic it arrived on, and its
//! `observed_at` must fall inside [`MAX_AHEAD`] and [`MAX_AGE`] of the receiver's clock.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::id::DeviceId;
use crate::message::Message;
use crate::topic::Topic;

type HmacSha256 = Hmac<Sha256>;

/// A message observed further ahead of the receiver's clock than this is rejected.
pub const MAX_AHEAD: Duration = Duration::minutes(10);
/// A message observed longer ago than this is rejected: event ids are remembered this long.
pub const MAX_AGE: Duration = Duration::hours(72);

/// Why a payload is not an acceptable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("payload is not valid JSON for this topic: {0}")]
    Malformed(String),
    #[error("payload is not a signed message")]
    Unsigned,
    #[error("signed message is not a well-formed HS256 JWS")]
    BadJws,
    #[error("message is signed by a device the registry does not know")]
    UnknownSigner,
    #[error("signature does not verify")]
    BadSignature,
    #[error("message names another topic than the one it arrived on")]
    WrongTopic,
    #[error("message is observed too far in the future")]
    FromTheFuture,
    #[error("message is older than the event id retention")]
    TooOld,
}

impl MessageError {
    /// A short, stable label for metrics (`parkflow_events_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unsigned => "unsigned",
            Self::BadJws => "bad_jws",
            Self::UnknownSigner => "unknown_signer",
            Self::BadSignature => "bad_signature",
            Self::WrongTopic => "wrong_topic",
            Self::FromTheFuture => "clock_skew",
            Self::TooOld => "too_old",
        }
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
}

#[derive(Deserialize)]
struct OwnedHeader {
    alg: String,
    kid: String,
}

/// Signs `payload` as a JWS compact serialization.
pub fn sign(payload: &[u8], kid: &str, secret: &[u8]) -> String {
    let header = serde_json::to_vec(&Header { alg: "HS256", kid }).unwrap_or_default();
    let mut jws = String::with_capacity(payload.len() * 4 / 3 + 120);
    URL_SAFE_NO_PAD.encode_string(header, &mut jws);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
    let signature = mac(secret, jws.as_bytes()).finalize().into_bytes();
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
    jws
}

fn mac(secret: &[u8], signing_input: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(signing_input);
    mac
}

/// A parsed, not yet verified JWS.
#[derive(Debug)]
pub struct Jws<'a> {
    kid: String,
    signing_input: &'a [u8],
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    pub fn parse(jws: &'a [u8]) -> Result<Self, MessageError> {
        let mut parts = jws.splitn(3, |b| *b == b'.');
        let (Some(header), Some(payload), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(MessageError::BadJws);
        };
        let decode = |part: &[u8]| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| MessageError::BadJws)
        };
        let decoded: OwnedHeader =
            serde_json::from_slice(&decode(header)?).map_err(|_| MessageError::BadJws)?;
        if decoded.alg != "HS256" {
            return Err(MessageError::BadJws);
        }
        Ok(Self {
            kid: decoded.kid,
            signing_input: &jws[..header.len() + 1 + payload.len()],
            payload: decode(payload)?,
            signature: decode(signature)?,
        })
    }

    /// The key id: the device that claims to have signed.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the signature (in constant time) and returns the payload.
    pub fn verify(self, secret: &[u8]) -> Result<Vec<u8>, MessageError> {
        mac(secret, self.signing_input)
            .verify_slice(&self.signature)
            .map_err(|_| MessageError::BadSignature)?;
        Ok(self.payload)
    }
}

/// How a lot's devices prove who they are (SPEC §2, per lot `device_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeviceAuth {
    /// Only messages signed by the registered device are accepted (the default).
    Signed,
    /// The broker enforces topic ACLs; plain JSON is accepted too.
    Broker,
}

impl DeviceAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signed => "signed",
            Self::Broker => "broker",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "signed" => Some(Self::Signed),
            "broker" => Some(Self::Broker),
            _ => None,
        }
    }
}

/// A message that passed its checks, and the device that signed it (if it was signed).
#[derive(Debug, Clone, PartialEq)]
pub struct Opened<T> {
    pub signer: Option<DeviceId>,
    pub body: T,
}

/// Opens a payload received on `topic`: verifies the signature with the secret `secret_of` returns
/// for the signer (when signed, or required by `auth`), checks the topic binding, decodes the body.
pub fn open<T, S>(
    payload: &[u8],
    topic: &str,
    auth: DeviceAuth,
    secret_of: impl FnOnce(&DeviceId) -> Option<S>,
) -> Result<Opened<T>, MessageError>
where
    T: DeserializeOwned,
    S: AsRef<[u8]>,
{
    let plain_json = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let (signer, json) = if plain_json {
        if auth == DeviceAuth::Signed {
            return Err(MessageError::Unsigned);
        }
        (None, std::borrow::Cow::Borrowed(payload))
    } else {
        let jws = Jws::parse(payload)?;
        let signer = DeviceId::parse(jws.kid()).map_err(|_| MessageError::UnknownSigner)?;
        let secret = secret_of(&signer).ok_or(MessageError::UnknownSigner)?;
        let json = jws.verify(secret.as_ref())?;
        (Some(signer), std::borrow::Cow::Owned(json))
    };
    let message: Message<T> =
        serde_json::from_slice(&json).map_err(|e| MessageError::Malformed(e.to_string()))?;
    match message.topic.as_deref() {
        Some(claimed) if claimed == topic => {}
        None if signer.is_none() => {}
        _ => return Err(MessageError::WrongTopic),
    }
    Ok(Opened {
        signer,
        body: message.body,
    })
}

/// Signs `body` for `topic` as device `kid`: what a device (or the platform, for commands) publishes.
pub fn seal<T: Serialize>(topic: &Topic, body: &T, kid: &DeviceId, secret: &[u8]) -> Vec<u8> {
    sign(&plain(topic, body), kid.as_str(), secret).into_bytes()
}

/// `body` with its `topic` as plain JSON, for lots whose `device_auth` is `broker`.
pub fn plain<T: Serialize>(topic: &Topic, body: &T) -> Vec<u8> {
    let message = Message {
        topic: Some(topic.to_string()),
        body,
    };
    // Serializing a struct of plain fields into a Vec cannot fail.
    serde_json::to_vec(&message).unwrap_or_default()
}

/// Checks that `observed_at` lies within the window a receiver accepts at `now`.
pub fn check_observed_at(
    observed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), MessageError> {
    if observed_at > now + MAX_AHEAD {
        Err(MessageError::FromTheFuture)
    } else if observed_at < now - MAX_AGE {
        Err(MessageError::TooOld)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{GateId, LotId};
    use crate::message::{BarrierState, GateState};
    use proptest::prelude::*;

    fn topic() -> Topic {
        Topic::GateState {
            lot: LotId::parse("l1").unwrap(),
            gate: GateId::parse("g1").unwrap(),
        }
    }

    fn state() -> GateState {
        GateState {
            command_id: None,
            state: BarrierState::Closed,
            observed_at: Utc::now(),
        }
    }

    fn cam() -> DeviceId {
        DeviceId::parse("cam-1").unwrap()
    }

    #[test]
    fn a_sealed_message_opens_with_the_same_secret() {
        let sealed = seal(&topic(), &state(), &cam(), b"s3cret");
        let opened: Opened<GateState> = open(
            &sealed,
            &topic().to_string(),
            DeviceAuth::Signed,
            |d: &DeviceId| (d == &cam()).then_some(b"s3cret"),
        )
        .unwrap();
        assert_eq!(opened.signer, Some(cam()));
        assert_eq!(opened.body.state, BarrierState::Closed);
    }

    #[test]
    fn a_known_rfc7515_hs256_token_verifies() {
        // Built independently: header {"alg":"HS256","kid":"k"}, payload {"a":1}, key "key".
        let token = sign(br#"{"a":1}"#, "k", b"key");
        let (header, rest) = token.split_once('.').unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            br#"{"alg":"HS256","kid":"k"}"#
        );
        assert!(rest.starts_with("eyJhIjoxfQ."));
        assert_eq!(
            Jws::parse(token.as_bytes())
                .unwrap()
                .verify(b"key")
                .unwrap(),
            br#"{"a":1}"#
        );
    }

    #[test]
    fn another_secret_fails_verification() {
        let sealed = seal(&topic(), &state(), &cam(), b"s3cret");
        let result: Result<Opened<GateState>, _> = open(
            &sealed,
            &topic().to_string(),
            DeviceAuth::Signed,
            |_: &DeviceId| Some(b"other"),
        );
        assert_eq!(result.unwrap_err(), MessageError::BadSignature);
    }

    #[test]
    fn a_tampered_payload_fails_verification() {
        let sealed = String::from_utf8(seal(&topic(), &state(), &cam(), b"s3cret")).unwrap();
        let parts: Vec<&str> = sealed.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
                .unwrap()
                .replace("closed", "opened"),
        );
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        let result: Result<Opened<GateState>, _> = open(
            tampered.as_bytes(),
            &topic().to_string(),
            DeviceAuth::Signed,
            |_: &DeviceId| Some(b"s3cret"),
        );
        assert_eq!(result.unwrap_err(), MessageError::BadSignature);
    }

    #[test]
    fn a_message_replayed_on_another_topic_is_rejected() {
        let sealed = seal(&topic(), &state(), &cam(), b"s3cret");
        let other = Topic::GateState {
            lot: LotId::parse("l1").unwrap(),
            gate: GateId::parse("g2").unwrap(),
        };
        let result: Result<Opened<GateState>, _> = open(
            &sealed,
            &other.to_string(),
            DeviceAuth::Signed,
            |_: &DeviceId| Some(b"s3cret"),
        );
        assert_eq!(result.unwrap_err(), MessageError::WrongTopic);
    }

    #[test]
    fn plain_json_is_rejected_where_signing_is_required_and_accepted_in_broker_mode() {
        let plain = plain(&topic(), &state());
        let signed: Result<Opened<GateState>, _> = open(
            &plain,
            &topic().to_string(),
            DeviceAuth::Signed,
            |_: &DeviceId| None::<&[u8]>,
        );
        assert_eq!(signed.unwrap_err(), MessageError::Unsigned);
        let broker: Opened<GateState> = open(
            &plain,
            &topic().to_string(),
            DeviceAuth::Broker,
            |_: &DeviceId| None::<&[u8]>,
        )
        .unwrap();
        assert_eq!(broker.signer, None);
    }

    #[test]
    fn unknown_signers_and_alg_none_are_rejected() {
        let sealed = seal(&topic(), &state(), &cam(), b"s3cret");
        let result: Result<Opened<GateState>, _> = open(
            &sealed,
            &topic().to_string(),
            DeviceAuth::Signed,
            |_: &DeviceId| None::<&[u8]>,
        );
        assert_eq!(result.unwrap_err(), MessageError::UnknownSigner);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"cam-1"}"#);
        let body = URL_SAFE_NO_PAD.encode(plain(&topic(), &state()));
        let none = format!("{header}.{body}.");
        assert_eq!(
            Jws::parse(none.as_bytes()).unwrap_err(),
            MessageError::BadJws
        );
    }

    #[test]
    fn observed_at_must_be_within_the_window() {
        let now = Utc::now();
        assert!(check_observed_at(now, now).is_ok());
        assert!(check_observed_at(now + Duration::minutes(9), now).is_ok());
        assert_eq!(
            check_observed_at(now + Duration::minutes(11), now),
            Err(MessageError::FromTheFuture)
        );
        assert!(check_observed_at(now - Duration::hours(71), now).is_ok());
        assert_eq!(
            check_observed_at(now - Duration::hours(73), now),
            Err(MessageError::TooOld)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_never_verifies(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let result: Result<Opened<GateState>, _> = open(&bytes, "t", DeviceAuth::Signed, |_: &DeviceId| Some(b"k"));
            prop_assert!(result.is_err());
        }

        #[test]
        fn signatures_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..200), secret in "[ -~]{1,40}") {
            let token = sign(&payload, "dev", secret.as_bytes());
            prop_assert_eq!(Jws::parse(token.as_bytes()).unwrap().verify(secret.as_bytes()).unwrap(), payload);
        }
    }
}
