//! Bearer authentication (`--api-key`): with a key, every HTTP route but `GET /health`
//! needs `Authorization: Bearer KEY`, or is answered 401 with `WWW-Authenticate: Bearer` (in
//! the error shape of its path). Only the key's SHA-256 is kept, and a token is compared by
//! its SHA-256 in constant time, so neither the key's bytes nor its length leak through timing;
//! the key is never logged, and its Debug output hides it.

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::errors::{refused, Plain, Shape, UNAUTHORIZED};
use crate::error::ApiKeyError;

/// The key HTTP clients must present.
#[derive(Clone)]
pub struct ApiKey {
    sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(hidden)")
    }
}

impl ApiKey {
    /// A key of visible ASCII characters (what an `Authorization` header can carry), not empty.
    pub fn new(key: &str) -> Result<Self, ApiKeyError> {
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if let Some(at) = key.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(ApiKeyError::NotVisibleAscii { at });
        }
        Ok(Self { sha256: Sha256::digest(key.as_bytes()).into() })
    }

    /// Whether `token` is the key.
    fn matches(&self, token: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(token).into();
        bool::from(digest.ct_eq(&self.sha256))
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization: Bearer` header (or another scheme).
    Missing,
    /// A bearer token that is not the key.
    Wrong,
}

/// The 401 answer of a request for `path` with `headers`; None: it may go on.
pub(super) fn refusal(key: Option<&ApiKey>, path: &str, headers: &HeaderMap) -> Option<Plain> {
    let key = key?;
    if path == "/health" {
        return None;
    }
    let refusal = match bearer(headers) {
        Some(token) if key.matches(token) => return None,
        Some(_) => Refusal::Wrong,
        None => Refusal::Missing,
    };
    let (message, challenge) = match refusal {
        Refusal::Missing => ("this server needs an API key: send `Authorization: Bearer KEY`", "Bearer"),
        Refusal::Wrong => ("the API key is not this server's", "Bearer error=\"invalid_token\""),
    };
    let mut answer = refused(Shape::of(path), StatusCode::UNAUTHORIZED, UNAUTHORIZED, message, None);
    answer.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    Some(answer)
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case, RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(space);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        h
    }

    #[test]
    fn keys_are_checked_at_start_and_hidden() {
        assert_eq!(ApiKey::new("").unwrap_err(), ApiKeyError::Empty);
        assert_eq!(ApiKey::new("ab cd").unwrap_err(), ApiKeyError::NotVisibleAscii { at: 2 });
        assert_eq!(ApiKey::new("clé").unwrap_err(), ApiKeyError::NotVisibleAscii { at: 2 });
        let key = ApiKey::new("s3cret-KEY").unwrap();
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!(!ApiKeyError::NotVisibleAscii { at: 2 }.to_string().contains("ab"));
    }

    #[test]
    fn only_the_key_as_a_bearer_token_passes_and_health_is_open() {
        let key = ApiKey::new("s3cret").unwrap();
        let key = Some(&key);
        assert!(refusal(None, "/v1/generate", &HeaderMap::new()).is_none(), "no key: open");
        assert!(refusal(key, "/health", &HeaderMap::new()).is_none());
        for good in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "] {
            assert!(refusal(key, "/v1/generate", &headers(good)).is_none(), "{good}");
        }
        for (bad, challenge) in [
            ("Bearer s3cre", "Bearer error=\"invalid_token\""),
            ("Bearer s3cret2", "Bearer error=\"invalid_token\""),
            ("Basic s3cret", "Bearer"),
            ("Bearer ", "Bearer"),
            ("s3cret", "Bearer"),
        ] {
            let answer = refusal(key, "/metrics", &headers(bad)).unwrap();
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(answer.headers()[WWW_AUTHENTICATE], challenge, "{bad}");
            assert!(answer.body().contains("\"unauthorized\"") && !answer.body().contains("s3cre"), "{bad}");
        }
        let missing = refusal(key, "/v1/completions", &HeaderMap::new()).unwrap();
        let body: serde_json::Value = serde_json::from_str(missing.body()).unwrap();
        assert_eq!(
            (body["error"]["code"].as_str(), body["error"]["type"].as_str()),
            (Some("unauthorized"), Some("authentication_error")),
            "OpenAI's shape on its routes"
        );
    }
}
