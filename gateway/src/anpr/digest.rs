//! HTTP Digest authentication (RFC 7616) for cameras that push with it rather than Basic: MD5,
//! what cameras speak, with `qop="auth"`. The platform keeps `MD5(device:realm:password)` (sealed),
//! computed when the password is issued; nonces are stateless (a time and a MAC under a key of
//! this process) and fresh for five minutes. Each answer must count its nonce's uses (`nc`) up:
//! an answer seen once is refused again ([`Counts`]), so a captured one cannot be replayed with
//! another body. (RFC 2069 answers without `qop`, which carry no count, are refused.)

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// The realm cameras are asked to authenticate in.
pub(crate) const REALM: &str = "parkflow";
/// How long a nonce is accepted.
const FRESH_SECS: i64 = 300;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(text: &str) -> String {
    hex(&Md5::digest(text.as_bytes()))
}

fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// `MD5(device:realm:password)`: what is kept to check a camera's Digest answers.
pub(crate) fn ha1(device: &str, password: &str) -> String {
    md5_hex(&format!("{device}:{REALM}:{password}"))
}

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn mac(issued: i64, salt: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key()).expect("any key length");
    mac.update(&issued.to_be_bytes());
    mac.update(salt.as_bytes());
    mac.finalize().into_bytes()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `WWW-Authenticate` value asking for Digest. Each nonce is new (a time, a random salt and
/// their MAC), so a camera that asks before every event counts each nonce from 1 unhindered.
pub(crate) fn challenge(now: DateTime<Utc>) -> String {
    let issued = now.timestamp();
    let salt = format!("{:016x}", rand::random::<u64>());
    format!(
        "Digest realm=\"{REALM}\", qop=\"auth\", algorithm=MD5, nonce=\"{issued:x}-{salt}-{}\"",
        mac(issued, &salt)
    )
}

/// When a fresh nonce of ours was issued (`None`: not ours, or stale).
fn fresh(nonce: &str, now: DateTime<Utc>) -> Option<i64> {
    let mut fields = nonce.splitn(3, '-');
    let (issued, salt, tag) = (fields.next()?, fields.next()?, fields.next()?);
    let issued = i64::from_str_radix(issued, 16).ok()?;
    let age = now.timestamp() - issued;
    ((0..=FRESH_SECS).contains(&age)
        && crate::http::auth::constant_time_eq(tag.as_bytes(), mac(issued, salt).as_bytes()))
    .then_some(issued)
}

/// The highest `nc` each camera used with each fresh nonce. Only answers that passed are
/// counted, so its size is bounded by the cameras' own requests over five minutes; nonces past
/// their freshness are dropped as it grows.
#[derive(Default)]
struct Counts(Mutex<CountsInner>);

#[derive(Default)]
struct CountsInner {
    highest: HashMap<(String, String), (i64, u32)>,
    /// Stale nonces are dropped when the map reaches this size (twice what stayed after the
    /// last pruning), so each pruning is paid for by as many insertions.
    prune_at: usize,
}

impl Counts {
    /// Records `nc` for `device`'s `nonce` (issued at `issued`); `false` when it is not above
    /// the highest one seen (a replay).
    fn advance(&self, device: &str, nonce: &str, issued: i64, nc: u32, now: DateTime<Utc>) -> bool {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.highest.len() >= counts.prune_at.max(4_096) {
            let oldest = now.timestamp() - FRESH_SECS;
            counts.highest.retain(|_, (issued, _)| *issued >= oldest);
            counts.prune_at = counts.highest.len() * 2;
        }
        let highest = counts
            .highest
            .entry((device.to_owned(), nonce.to_owned()))
            .or_insert((issued, 0));
        if nc <= highest.1 {
            return false;
        }
        highest.1 = nc;
        true
    }
}

fn counts() -> &'static Counts {
    static COUNTS: OnceLock<Counts> = OnceLock::new();
    COUNTS.get_or_init(Counts::default)
}

/// The parameters of a `Digest …` header, unquoted.
fn params(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.strip_prefix("Digest ")?;
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            return Some(out);
        }
        let value = if chars.peek() == Some(&'"') {
            chars.next();
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            value
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect::<String>()
        };
        out.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// A request, as a Digest answer is checked against it.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub uri: &'a str,
}

/// Whether `header` (an `Authorization: Digest …` value) answers a fresh nonce of ours for
/// `device`, whose kept `ha1` it must match, on `request`.
pub(crate) fn verify(
    header: &str,
    request: &Request<'_>,
    device: &str,
    ha1: &str,
    now: DateTime<Utc>,
) -> bool {
    let Some(params) = params(header) else {
        return false;
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(username), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
    ) else {
        return false;
    };
    if username != device || realm != REALM || uri != request.uri {
        return false;
    }
    let Some(issued) = fresh(nonce, now) else {
        return false;
    };
    if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
        return false;
    }
    let (Some("auth"), Some(nc), Some(cnonce)) = (get("qop"), get("nc"), get("cnonce")) else {
        return false;
    };
    let Ok(count) = u32::from_str_radix(nc, 16) else {
        return false;
    };
    let ha2 = md5_hex(&format!("{}:{uri}", request.method));
    let expected = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    crate::http::auth::constant_time_eq(expected.as_bytes(), response.as_bytes())
        && counts().advance(device, nonce, issued, count, now)
}

/// The `Authorization` value answering a camera's Digest `challenge` (its `WWW-Authenticate`
/// value) for `method` on `uri`, as the `nc`th use of its nonce; `None` when the challenge is
/// not one we can answer (not Digest, or an algorithm other than MD5 and SHA-256). The platform
/// is then the client: barrier calls to cameras that want Digest, as Hikvision's ISAPI does.
pub(crate) fn respond(
    challenge: &str,
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
    nc: u32,
) -> Option<String> {
    let params = params(challenge.trim())?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (realm, nonce) = (get("realm")?, get("nonce")?);
    let algorithm = get("algorithm").unwrap_or("MD5");
    let hash: fn(&str) -> String = if algorithm.eq_ignore_ascii_case("MD5") {
        md5_hex
    } else if algorithm.eq_ignore_ascii_case("SHA-256") {
        sha256_hex
    } else {
        return None;
    };
    let ha1 = hash(&format!("{user}:{realm}:{password}"));
    let ha2 = hash(&format!("{method}:{uri}"));
    let quote = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let mut header = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm={algorithm}",
        quote(user),
        quote(realm),
        quote(nonce),
        quote(uri)
    );
    let offers_auth = get("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
    let response = if offers_auth {
        let cnonce = format!("{:016x}", rand::random::<u64>());
        header.push_str(&format!(", qop=auth, nc={nc:08x}, cnonce=\"{cnonce}\""));
        hash(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}"))
    } else {
        hash(&format!("{ha1}:{nonce}:{ha2}"))
    };
    header.push_str(&format!(", response=\"{response}\""));
    if let Some(opaque) = get("opaque") {
        header.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
    }
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a camera computes, from the challenge, for its first use of the nonce.
    fn answer(challenge: &str, device: &str, password: &str, uri: &str) -> String {
        answer_nc(challenge, device, password, uri, 1)
    }

    /// What a camera computes for the `nc`th use of the challenge's nonce.
    fn answer_nc(challenge: &str, device: &str, password: &str, uri: &str, nc: u32) -> String {
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches('"');
        let ha1 = md5_hex(&format!("{device}:{REALM}:{password}"));
        let ha2 = md5_hex(&format!("POST:{uri}"));
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc:08x}:0a4f113b:auth:{ha2}"));
        format!(
            "Digest username=\"{device}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             algorithm=MD5, qop=auth, nc={nc:08x}, cnonce=\"0a4f113b\", response=\"{response}\""
        )
    }

    #[test]
    fn our_answer_as_a_client_is_what_our_server_accepts() {
        let now = Utc::now();
        let asked = challenge(now);
        let post = Request {
            method: "POST",
            uri: "/v1/anpr/cam-client",
        };
        let kept = ha1("cam-client", "pw");
        let answer = respond(&asked, "POST", post.uri, "cam-client", "pw", 1).unwrap();
        assert!(verify(&answer, &post, "cam-client", &kept, now));
        let next = respond(&asked, "POST", post.uri, "cam-client", "pw", 2).unwrap();
        assert!(verify(&next, &post, "cam-client", &kept, now));
        let wrong = respond(&asked, "POST", post.uri, "cam-client", "guess", 3).unwrap();
        assert!(!verify(&wrong, &post, "cam-client", &kept, now));
        assert!(respond("Basic realm=\"x\"", "POST", "/", "u", "p", 1).is_none());
        assert!(
            respond(
                "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512-256",
                "POST",
                "/",
                "u",
                "p",
                1
            )
            .is_none()
        );
    }

    /// RFC 7616 §3.9.1's example (SHA-256, qop auth), with its cnonce: the response it gives.
    #[test]
    fn the_rfcs_example_answer() {
        let challenge = "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let answer = respond(
            challenge,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            1,
        )
        .unwrap();
        let cnonce = answer
            .split("cnonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let hash = |t: String| -> String {
            Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let ha1 = hash("Mufasa:http-auth@example.org:Circle of Life".into());
        let ha2 = hash("GET:/dir/index.html".into());
        let expected = hash(format!(
            "{ha1}:7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v:00000001:{cnonce}:auth:{ha2}"
        ));
        assert!(
            answer.contains(&format!("response=\"{expected}\"")),
            "{answer}"
        );
        assert!(answer.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""));
        // With the RFC's own cnonce the RFC's response comes out.
        let rfc = hash(format!(
            "{ha1}:7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v:00000001:f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ:auth:{ha2}"
        ));
        assert_eq!(
            rfc,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn a_captured_answer_cannot_be_replayed() {
        let now = Utc::now();
        let challenge = challenge(now);
        let kept = ha1("cam-replay", "pw");
        let post = Request {
            method: "POST",
            uri: "/v1/anpr/cam-replay",
        };
        let first = answer_nc(&challenge, "cam-replay", "pw", post.uri, 1);
        assert!(verify(&first, &post, "cam-replay", &kept, now));
        assert!(
            !verify(&first, &post, "cam-replay", &kept, now),
            "the same answer again (an attacker who captured it, with another body)"
        );
        let second = answer_nc(&challenge, "cam-replay", "pw", post.uri, 2);
        assert!(
            verify(&second, &post, "cam-replay", &kept, now),
            "the next count"
        );
        assert!(
            !verify(&first, &post, "cam-replay", &kept, now),
            "an older count"
        );
        // Without qop (RFC 2069) there is no count to check: refused.
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches('"');
        let ha2 = md5_hex(&format!("POST:{}", post.uri));
        let old_style = format!(
            "Digest username=\"cam-replay\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{}\", response=\"{}\"",
            post.uri,
            md5_hex(&format!("{kept}:{nonce}:{ha2}"))
        );
        assert!(!verify(&old_style, &post, "cam-replay", &kept, now));
    }

    #[test]
    fn a_cameras_answer_to_a_fresh_challenge_is_accepted_and_nothing_else() {
        let now = Utc::now();
        let challenge = challenge(now);
        let kept = ha1("cam-1", "pw");
        let post = Request {
            method: "POST",
            uri: "/v1/anpr/cam-1",
        };
        let good = answer(&challenge, "cam-1", "pw", "/v1/anpr/cam-1");
        assert!(verify(&good, &post, "cam-1", &kept, now));
        assert!(!verify(&good, &post, "cam-2", &kept, now), "another camera");
        let put = Request {
            method: "PUT",
            ..post
        };
        assert!(!verify(&good, &put, "cam-1", &kept, now), "another method");
        let elsewhere = Request {
            uri: "/v1/anpr/cam-2",
            ..post
        };
        assert!(
            !verify(&good, &elsewhere, "cam-1", &kept, now),
            "another address"
        );
        let wrong = answer(&challenge, "cam-1", "guess", "/v1/anpr/cam-1");
        assert!(!verify(&wrong, &post, "cam-1", &kept, now));
        let later = now + chrono::Duration::seconds(FRESH_SECS + 1);
        assert!(
            !verify(&good, &post, "cam-1", &kept, later),
            "a stale nonce"
        );
        let nonce = &challenge[challenge.find("nonce=\"").unwrap() + 7..challenge.len() - 1];
        let forged = good.replace(nonce, "1-00-00");
        assert!(!verify(&forged, &post, "cam-1", &kept, now));
        assert!(!verify("Basic abc", &post, "cam-1", &kept, now));
    }
}
