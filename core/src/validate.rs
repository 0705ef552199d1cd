//! Checks every ingress event must pass, wherever it enters (WebSocket, HTTP, or a record a
//! business system produced to the log directly): well-formed ids, sizes within limits, a body
//! that fits the conversation kind. Ids (event, client message, conversation, sender, members)
//! never hold control or bidi formatting characters (`bad_request`); message text may.
//! Membership and ownership are checked later by the sequencer, which alone knows the
//! conversation's state.

use chorus_schemas::{EventBody, IngressEvent};

use crate::config::LimitsSection;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{Conversation, has_control_or_bidi, validate_user};

/// Longest client message id.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 128;
/// Longest group title.
pub const MAX_TITLE_BYTES: usize = 256;
/// Most members one message mentions (the sequencer keeps the first ones named).
pub const MAX_MENTIONS: usize = 50;
/// Shortest message time-to-live a conversation may set (a minute).
pub const MIN_TTL_SECONDS: u64 = 60;
/// Longest message time-to-live a conversation may set (ten years; 0 is the node's default).
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Longest reaction (an emoji, possibly a sequence of several code points with modifiers).
pub const MAX_EMOJI_BYTES: usize = 32;

/// Longest attachment name, in bytes.
pub const MAX_ATTACHMENT_NAME_BYTES: usize = 255;
/// Longest media type, in bytes.
const MAX_MEDIA_TYPE_BYTES: usize = 127;

/// An attachment id: 32 lowercase hex digits (a UUID's simple form), so it is safe as an
/// object-store key.
pub fn validate_attachment_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(bad("an attachment id is 32 lowercase hex digits"))
    }
}

/// A file name as shown to members: 1–255 bytes, no control or bidi characters, no path.
pub fn validate_attachment_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > MAX_ATTACHMENT_NAME_BYTES {
        return Err(bad(format!(
            "an attachment name is 1 to {MAX_ATTACHMENT_NAME_BYTES} bytes"
        )));
    }
    if has_control_or_bidi(name) || name.contains(['/', '\\']) {
        return Err(bad(
            "an attachment name must not contain control or bidi characters or slashes",
        ));
    }
    Ok(())
}

/// A media type `type/subtype` (RFC 6838 characters, lowercase, no parameters).
pub fn validate_media_type(media_type: &str) -> Result<(), ApiError> {
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&-^_.+".contains(&b))
    };
    match media_type.split_once('/') {
        Some((kind, subtype))
            if media_type.len() <= MAX_MEDIA_TYPE_BYTES && token(kind) && token(subtype) =>
        {
            Ok(())
        }
        _ => Err(bad(
            "a media type is `type/subtype` in lowercase (e.g. image/png)",
        )),
    }
}

fn check_attachment(attachment: &chorus_schemas::Attachment) -> Result<(), ApiError> {
    validate_attachment_id(&attachment.id)?;
    validate_attachment_name(&attachment.name)?;
    validate_media_type(&attachment.content_type)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// Validates an ingress event against the limits; returns the parsed conversation.
pub fn validate_ingress(
    event: &IngressEvent,
    limits: &LimitsSection,
) -> Result<Conversation, ApiError> {
    let conversation =
        Conversation::parse(&event.conversation).map_err(|error| bad(error.to_string()))?;
    validate_user(&event.sender).map_err(|error| bad(error.to_string()))?;
    if let Some(id) = &event.client_msg_id
        && (id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES)
    {
        return Err(bad(format!("id must be 1-{MAX_CLIENT_MSG_ID_BYTES} bytes")));
    }
    if let Some(id) = &event.client_msg_id
        && has_control_or_bidi(id)
    {
        return Err(bad("id must not contain control or bidi characters"));
    }
    if has_control_or_bidi(&event.event_id) {
        return Err(bad("event_id must not contain control or bidi characters"));
    }
    let check_text = |text: &str| -> Result<(), ApiError> {
        if text.trim().is_empty() {
            return Err(bad("text must not be empty"));
        }
        if text.len() > limits.max_text_bytes {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "text is {} bytes, the limit is {}",
                    text.len(),
                    limits.max_text_bytes
                ),
            ));
        }
        Ok(())
    };
    let check_members = |members: &[String], allow_empty: bool| -> Result<(), ApiError> {
        if members.is_empty() && !allow_empty {
            return Err(bad("members must not be empty"));
        }
        if members.len() > limits.max_group_members {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "at most {} members per event (limits.max_group_members)",
                    limits.max_group_members
                ),
            ));
        }
        for member in members {
            validate_user(member).map_err(|error| bad(error.to_string()))?;
        }
        Ok(())
    };
    let group_only = || -> Result<(), ApiError> {
        match conversation {
            Conversation::Group { .. } => Ok(()),
            Conversation::Direct { .. } => {
                Err(bad("members of a direct conversation are fixed by its id"))
            }
        }
    };
    match &event.body {
        EventBody::MessageSent(message) => {
            if let Some(attachment) = &message.attachment {
                check_attachment(attachment)?;
            }
            // a file may go without words (an empty text), never with blank ones
            if message.attachment.is_none() || !message.text.is_empty() {
                check_text(&message.text)?;
            }
            if message.reply_to == Some(0) {
                return Err(bad("reply_to must be at least 1"));
            }
            if message.mentions.len() > MAX_MENTIONS {
                return Err(bad("too many mentions"));
            }
            if let Some(origin) = &message.forwarded_from {
                Conversation::parse(&origin.conversation)
                    .map_err(|error| bad(error.to_string()))?;
                if origin.seq == 0 {
                    return Err(bad("seq must be at least 1"));
                }
            }
        }
        EventBody::MessageEdited { target_seq, text } => {
            check_text(text)?;
            if *target_seq == 0 {
                return Err(bad("seq must be at least 1"));
            }
        }
        EventBody::MessageRecalled { target_seq } | EventBody::MessagePinned { target_seq, .. } => {
            if *target_seq == 0 {
                return Err(bad("seq must be at least 1"));
            }
        }
        EventBody::ReactionChanged {
            target_seq, emoji, ..
        } => {
            if *target_seq == 0 {
                return Err(bad("seq must be at least 1"));
            }
            if emoji.is_empty()
                || emoji.len() > MAX_EMOJI_BYTES
                || emoji.chars().any(char::is_whitespace)
                || has_control_or_bidi(emoji)
            {
                return Err(bad(format!(
                    "emoji must be 1-{MAX_EMOJI_BYTES} bytes without spaces, control or bidi characters"
                )));
            }
        }
        EventBody::ConversationCreated { title, members } => {
            group_only()?;
            check_members(members, true)?;
            if title
                .as_ref()
                .is_some_and(|title| title.len() > MAX_TITLE_BYTES)
            {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!("title longer than {MAX_TITLE_BYTES} bytes"),
                ));
            }
        }
        EventBody::MembersAdded { members } | EventBody::MembersRemoved { members } => {
            group_only()?;
            check_members(members, false)?;
        }
        EventBody::ReadCursorMoved { .. } | EventBody::ConversationMuted { .. } => {}
        EventBody::UserBlocked { .. } => {
            if !matches!(conversation, Conversation::Direct { .. }) {
                return Err(bad("a user is blocked in their direct conversation"));
            }
        }
        EventBody::RoleChanged { member, .. } => {
            group_only()?;
            validate_user(member).map_err(|error| bad(error.to_string()))?;
        }
        EventBody::ConversationRenamed { title } => {
            group_only()?;
            if title.trim().is_empty() {
                return Err(bad("title must not be empty"));
            }
            if title.len() > MAX_TITLE_BYTES {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!("title longer than {MAX_TITLE_BYTES} bytes"),
                ));
            }
        }
        EventBody::RetentionSet { ttl_seconds } => {
            if *ttl_seconds != 0 && !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(ttl_seconds) {
                return Err(bad(format!(
                    "ttl_seconds must be 0 (the node's default) or {MIN_TTL_SECONDS}-{MAX_TTL_SECONDS}"
                )));
            }
        }
        // the sequencer lists the members; what an ingress event lists is replaced
        EventBody::ConversationDisbanded { members } => {
            group_only()?;
            check_members(members, true)?;
        }
    }
    Ok(conversation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(conversation: &str, body: EventBody) -> IngressEvent {
        IngressEvent {
            event_id: "e".into(),
            conversation: conversation.into(),
            sender: "alice".into(),
            client_msg_id: Some("c".into()),
            ts_ms: 0,
            origin_cluster: "local".into(),
            origin_node: None,
            origin_session: None,
            trusted: false,
            body,
        }
    }

    #[test]
    fn sizes_and_shapes() {
        let limits = LimitsSection::default();
        let ok = event("dm:alice:bob", EventBody::message("hi"));
        assert!(validate_ingress(&ok, &limits).is_ok());
        let big = event(
            "dm:alice:bob",
            EventBody::message("x".repeat(16 * 1024 + 1)),
        );
        assert_eq!(
            validate_ingress(&big, &limits).unwrap_err().code,
            ErrorCode::TooLarge
        );
        let empty = event("dm:alice:bob", EventBody::message("  "));
        assert_eq!(
            validate_ingress(&empty, &limits).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let dm_members = event(
            "dm:alice:bob",
            EventBody::MembersAdded {
                members: vec!["c".into()],
            },
        );
        assert_eq!(
            validate_ingress(&dm_members, &limits).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let bad_id = event("dm:bob:alice", EventBody::message("hi"));
        assert_eq!(
            validate_ingress(&bad_id, &limits).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn control_and_bidi_characters_are_refused_in_ids_but_kept_in_text() {
        let limits = LimitsSection::default();
        let text_with_them = event(
            "dm:alice:bob",
            EventBody::message("abc \u{202E}cba\n\ttabbed"),
        );
        assert!(validate_ingress(&text_with_them, &limits).is_ok());
        for character in ["\u{202E}", "\u{2067}", "\u{200F}", "\n", "\u{0}", "\u{9B}"] {
            let mut client_id = event("dm:alice:bob", EventBody::message("hi"));
            client_id.client_msg_id = Some(format!("m{character}1"));
            assert_eq!(
                validate_ingress(&client_id, &limits).unwrap_err().code,
                ErrorCode::BadRequest,
                "client message id with {character:?}"
            );
            let mut event_id = event("dm:alice:bob", EventBody::message("hi"));
            event_id.event_id = format!("e{character}");
            assert_eq!(
                validate_ingress(&event_id, &limits).unwrap_err().code,
                ErrorCode::BadRequest,
                "event id with {character:?}"
            );
            let mut sender = event("g:team", EventBody::message("hi"));
            sender.sender = format!("ali{character}ce");
            assert_eq!(
                validate_ingress(&sender, &limits).unwrap_err().code,
                ErrorCode::BadRequest,
                "sender with {character:?}"
            );
            let conversation = event(&format!("g:te{character}am"), EventBody::message("hi"));
            assert_eq!(
                validate_ingress(&conversation, &limits).unwrap_err().code,
                ErrorCode::BadRequest,
                "conversation with {character:?}"
            );
            let members = event(
                "g:team",
                EventBody::MembersAdded {
                    members: vec!["bob".into(), format!("mal{character}lory")],
                },
            );
            assert_eq!(
                validate_ingress(&members, &limits).unwrap_err().code,
                ErrorCode::BadRequest,
                "member with {character:?}"
            );
        }
    }
}

#[cfg(test)]
mod attachment_tests {
    use super::*;

    #[test]
    fn attachment_ids_are_32_lowercase_hex_digits() {
        assert!(validate_attachment_id(&"0a".repeat(16)).is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            &"A".repeat(32),
            &"0".repeat(31),
            &"g".repeat(32),
        ] {
            assert!(validate_attachment_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attachment_names_are_shown_names_not_paths() {
        assert!(validate_attachment_name("猫 photo.png").is_ok());
        assert!(validate_attachment_name(&"é".repeat(127)).is_ok());
        for bad in [
            "",
            "  ",
            "a/b.png",
            "a\\b.png",
            "line\nbreak",
            "\u{202e}gnp.exe",
            &"a".repeat(256),
        ] {
            assert!(validate_attachment_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_types_are_type_slash_subtype() {
        for good in ["image/png", "application/vnd.ms-excel", "image/svg+xml"] {
            assert!(validate_media_type(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "png",
            "image/",
            "/png",
            "Image/PNG",
            "text/html; charset=utf-8",
        ] {
            assert!(validate_media_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_message_with_a_file_may_have_no_text_but_not_blank_text() {
        let limits = LimitsSection::default();
        let event = |text: &str| IngressEvent {
            event_id: "e1".into(),
            conversation: "dm:a:b".into(),
            sender: "a".into(),
            client_msg_id: None,
            ts_ms: 1,
            origin_cluster: "local".into(),
            origin_node: None,
            origin_session: None,
            trusted: false,
            body: EventBody::MessageSent(chorus_schemas::Message {
                text: text.into(),
                attachment: Some(Box::new(chorus_schemas::Attachment {
                    id: "0".repeat(32),
                    name: "a.png".into(),
                    size: 3,
                    content_type: "image/png".into(),
                })),
                ..chorus_schemas::Message::default()
            }),
        };
        assert!(validate_ingress(&event(""), &limits).is_ok());
        assert!(validate_ingress(&event("look"), &limits).is_ok());
        assert!(validate_ingress(&event("   "), &limits).is_err());
    }
}
