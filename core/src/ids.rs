//! User and conversation identifiers, and their validation.
//!
//! - A user id is 1–64 bytes of ASCII letters, digits, `_`, `-`, `.` or `@` (no `:`, which
//!   separates the parts of a direct conversation id).
//! - A direct conversation is `dm:<a>:<b>` with `a < b` in byte order; its members are exactly
//!   `a` and `b`, and it exists from its first message.
//! - A group is `g:<name>`, the name 1–64 bytes of ASCII letters, digits, `_`, `-` or `.`; it
//!   exists once created and its members come from the log.

use std::fmt;

/// A parsed conversation id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    /// `dm:<first>:<second>`, `first < second`.
    Direct { first: String, second: String },
    /// `g:<name>`.
    Group { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid user id {0:?}: use 1-64 ascii letters, digits, '_', '-', '.' or '@'")]
    User(String),
    #[error("invalid conversation id {0:?}: expected dm:<a>:<b> (a < b) or g:<name>")]
    Conversation(String),
}

pub const MAX_ID_BYTES: usize = 64;

fn is_valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_ID_BYTES
        && user
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_-.@".contains(&byte))
}

/// Checks a user id.
pub fn validate_user(user: &str) -> Result<(), IdError> {
    if is_valid_user(user) {
        Ok(())
    } else {
        Err(IdError::User(user.to_owned()))
    }
}

impl Conversation {
    pub fn parse(id: &str) -> Result<Conversation, IdError> {
        let invalid = || IdError::Conversation(id.to_owned());
        if let Some(rest) = id.strip_prefix("dm:") {
            let (first, second) = rest.split_once(':').ok_or_else(invalid)?;
            if !is_valid_user(first) || !is_valid_user(second) || first >= second {
                return Err(invalid());
            }
            return Ok(Conversation::Direct {
                first: first.to_owned(),
                second: second.to_owned(),
            });
        }
        if let Some(name) = id.strip_prefix("g:") {
            let valid = !name.is_empty()
                && name.len() <= MAX_ID_BYTES
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"_-.".contains(&byte));
            if !valid {
                return Err(invalid());
            }
            return Ok(Conversation::Group {
                name: name.to_owned(),
            });
        }
        Err(invalid())
    }

    /// The direct conversation between two users (in either order).
    pub fn direct(user_a: &str, user_b: &str) -> String {
        if user_a <= user_b {
            format!("dm:{user_a}:{user_b}")
        } else {
            format!("dm:{user_b}:{user_a}")
        }
    }

    /// For a direct conversation, whether `user` is one of its two members.
    pub fn is_direct_member(&self, user: &str) -> bool {
        matches!(self, Conversation::Direct { first, second } if first == user || second == user)
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conversation::Direct { first, second } => write!(formatter, "dm:{first}:{second}"),
            Conversation::Group { name } => write!(formatter, "g:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            Conversation::parse("dm:alice:bob").unwrap(),
            Conversation::Direct {
                first: "alice".into(),
                second: "bob".into()
            }
        );
        assert_eq!(Conversation::parse("g:team").unwrap().to_string(), "g:team");
        for bad in [
            "dm:bob:alice",
            "dm:alice:alice",
            "dm:alice",
            "g:",
            "x:y",
            "g:a b",
            "dm:a:b:c",
        ] {
            assert!(Conversation::parse(bad).is_err(), "{bad} must be rejected");
        }
        assert_eq!(Conversation::direct("bob", "alice"), "dm:alice:bob");
        assert!(validate_user("alice@example.com").is_ok());
        assert!(validate_user("a:b").is_err());
        assert!(validate_user("").is_err());
    }
}
