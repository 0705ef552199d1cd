//! User tokens (JWT, HS256) and business API keys.
//!
//! A user token carries the user id in `sub`, a required `exp`, and optionally `device`. Tokens
//! with a bad signature, another algorithm, a missing or past `exp`, or an invalid user id are
//! rejected. API keys are compared in constant time.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::validate_user;

/// The sender name business systems act under; no user token may carry it.
pub const SYSTEM_SENDER: &str = "system";

fn validate_token_user(user: &str) -> Result<(), AuthError> {
    validate_user(user).map_err(|error| AuthError::Invalid(error.to_string()))?;
    if user == SYSTEM_SENDER {
        return Err(AuthError::Invalid(format!(
            "{SYSTEM_SENDER:?} is reserved for business systems"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Optional device name, shown in logs and used to count a user's devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid api key")]
    BadApiKey,
}

/// Signs and checks user tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenAuthority {
    /// Key for issuing tokens (dev route, `chorus token`).
    encoding_key: EncodingKey,
    /// Key for checking tokens.
    decoding_key: DecodingKey,
    /// HS256 only, `exp` required.
    validation: Validation,
}

impl TokenAuthority {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        TokenAuthority {
            encoding_key: EncodingKey::from_secret(secret),
            decoding_key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues a token for `user` valid for `ttl_secs`.
    pub fn issue(
        &self,
        user: &str,
        device: Option<&str>,
        ttl_secs: u64,
    ) -> Result<String, AuthError> {
        validate_token_user(user)?;
        let claims = Claims {
            sub: user.to_owned(),
            exp: unix_seconds() + ttl_secs,
            device: device.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key)
            .map_err(|error| AuthError::Invalid(error.to_string()))
    }

    /// Checks a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding_key, &self.validation)
            .map_err(|error| AuthError::Invalid(error.to_string()))?;
        validate_token_user(&data.claims.sub)?;
        Ok(data.claims)
    }
}

/// Compares a presented API key with the configured one in constant time.
pub fn check_api_key(configured: &str, presented: &str) -> Result<(), AuthError> {
    let same_length = configured.len() == presented.len();
    let difference = configured
        .bytes()
        .zip(presented.bytes())
        .fold(0u8, |accumulator, (left, right)| {
            accumulator | (left ^ right)
        });
    if same_length && difference == 0 && !configured.is_empty() {
        Ok(())
    } else {
        Err(AuthError::BadApiKey)
    }
}

pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_verifies() {
        let authority = TokenAuthority::new(b"secret");
        let token = authority.issue("alice", Some("phone"), 60).unwrap();
        let claims = authority.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.device.as_deref(), Some("phone"));
    }

    #[test]
    fn rejects_forged_and_expired() {
        let authority = TokenAuthority::new(b"secret");
        let forged = TokenAuthority::new(b"other")
            .issue("alice", None, 60)
            .unwrap();
        assert!(authority.verify(&forged).is_err());
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                exp: unix_seconds() - 10,
                device: None,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(authority.verify(&expired).is_err());
        assert!(authority.verify("not.a.jwt").is_err());
        assert!(
            authority.issue(SYSTEM_SENDER, None, 60).is_err(),
            "reserved for business systems"
        );
    }

    #[test]
    fn api_key_comparison() {
        assert!(check_api_key("k1", "k1").is_ok());
        assert!(check_api_key("k1", "k2").is_err());
        assert!(check_api_key("k1", "k1x").is_err());
        assert!(check_api_key("", "").is_err());
    }
}
