//! User tokens (JWT, HS256) and business API keys.
//!
//! A user token carries the user id in `sub`, a required `exp`, and optionally `iat`, `nbf` and
//! `device`. Tokens with a bad signature, another algorithm, a missing or past `exp`, an `nbf` or
//! `iat` still in the future, a lifetime (`exp - iat`, or `exp - now` without `iat`) beyond the
//! configured maximum (`auth.max_token_lifetime_secs`), an invalid user id, or a device name with
//! control or bidi characters are rejected. No clock skew is allowed for. Tokens this authority
//! issues carry `iat` and never outlive the maximum. API keys are compared in constant time.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthSection;
use crate::ids::{has_control_or_bidi, validate_user};

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

/// What a session needs from a checked token.
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

/// A token's claims as signed: [`Claims`] plus the times that only the check needs.
#[derive(Debug, Serialize, Deserialize)]
struct SignedClaims {
    sub: String,
    exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// Not before, seconds since the Unix epoch (checked by `jsonwebtoken`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
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
    /// HS256 only, `exp` and `sub` required, `nbf` checked when present.
    validation: Validation,
    /// Longest accepted lifetime, in seconds (`auth.max_token_lifetime_secs`).
    max_lifetime_secs: u64,
}

impl TokenAuthority {
    /// An authority with the default maximum lifetime; see [`TokenAuthority::from_config`].
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        TokenAuthority {
            encoding_key: EncodingKey::from_secret(secret),
            decoding_key: DecodingKey::from_secret(secret),
            validation,
            max_lifetime_secs: AuthSection::default().max_token_lifetime_secs,
        }
    }

    /// The authority of a node: `auth.jwt_secret` and `auth.max_token_lifetime_secs`.
    pub fn from_config(auth: &AuthSection) -> Self {
        TokenAuthority {
            max_lifetime_secs: auth.max_token_lifetime_secs,
            ..TokenAuthority::new(auth.jwt_secret.as_bytes())
        }
    }

    /// Issues a token for `user` valid for `ttl_secs` (at most the maximum lifetime).
    pub fn issue(
        &self,
        user: &str,
        device: Option<&str>,
        ttl_secs: u64,
    ) -> Result<String, AuthError> {
        validate_token_user(user)?;
        validate_device(device)?;
        if ttl_secs > self.max_lifetime_secs {
            return Err(AuthError::Invalid(format!(
                "a lifetime of {ttl_secs}s exceeds the maximum of {}s",
                self.max_lifetime_secs
            )));
        }
        let now = unix_seconds();
        let claims = SignedClaims {
            sub: user.to_owned(),
            exp: now + ttl_secs,
            iat: Some(now),
            nbf: None,
            device: device.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key)
            .map_err(|error| AuthError::Invalid(error.to_string()))
    }

    /// Checks a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data =
            jsonwebtoken::decode::<SignedClaims>(token, &self.decoding_key, &self.validation)
                .map_err(|error| AuthError::Invalid(error.to_string()))?;
        let claims = data.claims;
        validate_token_user(&claims.sub)?;
        validate_device(claims.device.as_deref())?;
        let now = unix_seconds();
        let lifetime_start = match claims.iat {
            Some(issued_at) if issued_at > now => {
                return Err(AuthError::Invalid(
                    "token issued in the future (iat)".into(),
                ));
            }
            Some(issued_at) => issued_at,
            None => now,
        };
        let lifetime = claims.exp.saturating_sub(lifetime_start);
        if lifetime > self.max_lifetime_secs {
            return Err(AuthError::Invalid(format!(
                "token lifetime of {lifetime}s exceeds the maximum of {}s",
                self.max_lifetime_secs
            )));
        }
        Ok(Claims {
            sub: claims.sub,
            exp: claims.exp,
            device: claims.device,
        })
    }
}

/// A device name is shown in logs and counted as an id: no control or bidi characters.
fn validate_device(device: Option<&str>) -> Result<(), AuthError> {
    match device {
        Some(device) if has_control_or_bidi(device) => Err(AuthError::Invalid(
            "device must not contain control or bidi characters".into(),
        )),
        _ => Ok(()),
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

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap()
    }

    #[test]
    fn nbf_and_iat_are_honoured() {
        let authority = TokenAuthority::new(b"secret");
        let now = unix_seconds();
        let not_yet =
            signed(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + 60}));
        assert!(authority.verify(&not_yet).is_err(), "nbf in the future");
        let valid_from_now =
            signed(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now}));
        assert!(authority.verify(&valid_from_now).is_ok());
        let from_the_future =
            signed(serde_json::json!({"sub": "alice", "exp": now + 600, "iat": now + 60}));
        let error = authority.verify(&from_the_future).unwrap_err();
        assert!(error.to_string().contains("iat"), "{error}");
        let issued = signed(serde_json::json!({"sub": "alice", "exp": now + 600, "iat": now - 60}));
        assert!(authority.verify(&issued).is_ok());
    }

    #[test]
    fn lifetimes_beyond_the_maximum_are_refused() {
        let auth = AuthSection {
            jwt_secret: "secret".into(),
            token_ttl_secs: 60,
            max_token_lifetime_secs: 3600,
            ..AuthSection::default()
        };
        let authority = TokenAuthority::from_config(&auth);
        let now = unix_seconds();
        // exp - iat counts even when most of it has passed
        let long_lived =
            signed(serde_json::json!({"sub": "alice", "exp": now + 600, "iat": now - 3601}));
        let error = authority.verify(&long_lived).unwrap_err();
        assert!(error.to_string().contains("lifetime"), "{error}");
        // without iat: exp - now
        let far = signed(serde_json::json!({"sub": "alice", "exp": now + 3700}));
        assert!(authority.verify(&far).is_err());
        let near = signed(serde_json::json!({"sub": "alice", "exp": now + 3500}));
        assert!(authority.verify(&near).is_ok());
        // what the authority issues stays within the maximum and carries iat
        assert!(authority.issue("alice", None, 3601).is_err());
        let token = authority.issue("alice", None, 3600).unwrap();
        assert!(authority.verify(&token).is_ok());
        let signed_claims = jsonwebtoken::decode::<SignedClaims>(
            &token,
            &DecodingKey::from_secret(b"secret"),
            &authority.validation,
        )
        .unwrap()
        .claims;
        let issued_at = signed_claims.iat.expect("issued tokens carry iat");
        assert_eq!(signed_claims.exp - issued_at, 3600);
        let default_authority = TokenAuthority::new(b"secret");
        let week = AuthSection::default().max_token_lifetime_secs;
        assert!(default_authority.issue("alice", None, week).is_ok());
        assert!(default_authority.issue("alice", None, week + 1).is_err());
    }

    #[test]
    fn devices_with_control_or_bidi_characters_are_refused() {
        let authority = TokenAuthority::new(b"secret");
        let now = unix_seconds();
        for device in ["phone\n", "tab\u{202E}elbat", "a\u{2066}b", "nul\u{0}"] {
            let token =
                signed(serde_json::json!({"sub": "alice", "exp": now + 60, "device": device}));
            assert!(authority.verify(&token).is_err(), "{device:?}");
            assert!(
                authority.issue("alice", Some(device), 60).is_err(),
                "{device:?}"
            );
        }
        assert!(authority.issue("alice", Some("Bob's phone ☎"), 60).is_ok());
    }

    #[test]
    fn api_key_comparison() {
        assert!(check_api_key("k1", "k1").is_ok());
        assert!(check_api_key("k1", "k2").is_err());
        assert!(check_api_key("k1", "k1x").is_err());
        assert!(check_api_key("", "").is_err());
    }
}
