//! User and conversation identifiers, and their validation.
//!
//! - A user id is 1–64 bytes of ASCII letters, digits, `_`, `-`, `.` or `@` (no `:`, which
//!   separates the parts of a direct conversation id).
//! - A direct conversation is `dm:<a>:<b>` with `a < b` in byte order; its members are exactly
//!   `a` and `b`, and it exists from its first message.
//! - A group is `g:<name>`, the name 1–64 bytes of ASCII letters, digits, `_`, `-` or `.`; it
//!   exists once created and its members come from the log.
//! - Free-form ids (client message ids, event ids, device names) may be any text without control
//!   characters or bidi formatting characters (see [`has_control_or_bidi`]), so an id can never
//!   reorder or hide the text around it where it is shown. User, conversation and group ids
//!   above are ASCII without control characters by construction. Message text keeps such
//!   characters (clients escape what they show).

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

/// Whether `text` holds a control character (Unicode category Cc: C0, DEL, C1) or a bidi
/// formatting character: the marks U+061C, U+200E, U+200F, the embeddings and overrides
/// U+202A–U+202E, and the isolates U+2066–U+2069.
pub fn has_control_or_bidi(text: &str) -> bool {
    text.chars().any(|character| {
        character.is_control()
            || matches!(
                character,
                '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            )
    })
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

    #[test]
    fn control_and_bidi_characters_are_refused_in_ids() {
        let hostile = [
            "\u{202E}", "\u{202A}", "\u{202D}", "\u{2066}", "\u{2069}", "\u{200E}", "\u{200F}",
            "\u{061C}", "\n", "\r", "\t", "\u{0}", "\u{1B}", "\u{7F}", "\u{85}", "\u{9B}",
        ];
        for character in hostile {
            let user = format!("ali{character}ce");
            assert!(validate_user(&user).is_err(), "user {user:?}");
            assert!(has_control_or_bidi(&user), "{user:?}");
            for conversation in [
                format!("dm:{user}:bob"),
                format!("dm:alice:{user}z"),
                format!("g:te{character}am"),
            ] {
                assert!(
                    Conversation::parse(&conversation).is_err(),
                    "conversation {conversation:?}"
                );
            }
        }
        for fine in ["msg-1", "客户端-消息", "émoji 🎉", "a b"] {
            assert!(!has_control_or_bidi(fine), "{fine:?}");
        }
    }
}
