//! JSON Web Tokens for the three kinds of caller: customers (GraphQL), workers (WebSocket)
//! and ops (dashboard, metrics). HS256 with the configured `JWT_SECRET`.

use std::time::Duration;

use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Worker,
    Ops,
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The customer's or worker's id (for ops, the operator's id).
    pub sub: Uuid,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub iat: u64,
    /// Not valid before, seconds since the Unix epoch (RFC 7519 §4.1.5); checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Longest token accepted; ours are about 200 bytes. Refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("this operation needs the {0:?} role")]
    WrongRole(Role),
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// The signature is fine but its subject does not exist (any more).
    #[error("unknown {0}")]
    UnknownSubject(&'static str),
    #[error("this {0} account is deactivated")]
    Deactivated(&'static str),
    /// The identity could not be checked (database unavailable): retry.
    #[error("identity check unavailable; retry shortly")]
    Unverifiable,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    pub fn new(secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    pub fn issue(&self, role: Role, sub: Uuid, ttl: Duration) -> String {
        let now = unix_now();
        let claims = Claims {
            sub,
            role,
            iat: now,
            exp: now + ttl.as_secs(),
            nbf: None,
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid);
        }
        let mut validation = Validation::default();
        validation.leeway = 0;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid,
            })
    }

    /// Verifies a token and requires one role.
    pub fn verify_role(&self, token: &str, role: Role) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.role != role {
            return Err(AuthError::WrongRole(role));
        }
        Ok(claims)
    }
}

/// The token in an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a TTL such as `90s`, `30m`, `1h`, `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 1h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_with_its_role() {
        let keys = TokenKeys::new("s3cret");
        let id = Uuid::new_v4();
        let token = keys.issue(Role::Worker, id, Duration::from_secs(60));
        let claims = keys.verify_role(&token, Role::Worker).unwrap();
        assert_eq!(claims.sub, id);
        assert_eq!(
            keys.verify_role(&token, Role::Customer),
            Err(AuthError::WrongRole(Role::Customer))
        );
    }

    #[test]
    fn a_token_signed_with_another_secret_is_invalid() {
        let token = TokenKeys::new("a").issue(Role::Ops, Uuid::new_v4(), Duration::from_secs(60));
        assert_eq!(TokenKeys::new("b").verify(&token), Err(AuthError::Invalid));
        assert_eq!(
            TokenKeys::new("b").verify("not.a.jwt"),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn an_expired_token_says_so() {
        let keys = TokenKeys::new("k");
        let past = unix_now() - 10;
        let claims = Claims {
            sub: Uuid::new_v4(),
            role: Role::Customer,
            iat: past - 60,
            exp: past,
            nbf: None,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &keys.encoding).unwrap();
        assert_eq!(keys.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_and_an_oversized_one_is_invalid() {
        let keys = TokenKeys::new("k");
        let now = unix_now();
        let claims = Claims {
            sub: Uuid::new_v4(),
            role: Role::Worker,
            iat: now,
            exp: now + 3600,
            nbf: Some(now + 600),
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &keys.encoding).unwrap();
        assert_eq!(keys.verify(&token), Err(AuthError::NotYetValid));
        let ready = Claims {
            nbf: Some(now - 1),
            ..claims
        };
        let token = jsonwebtoken::encode(&Header::default(), &ready, &keys.encoding).unwrap();
        assert!(keys.verify(&token).is_ok());
        assert_eq!(
            keys.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(AuthError::Invalid)
        );
    }

    /// Claims nested past serde_json's recursion limit are an invalid token, not a crash.
    #[test]
    fn deeply_nested_claims_are_an_invalid_token() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let deep = format!("{{\"sub\":{}1{}}}", "[".repeat(600), "]".repeat(600));
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(&deep)
        );
        assert_eq!(TokenKeys::new("k").verify(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn ttl_and_bearer_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("1y").is_err());
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }
}
