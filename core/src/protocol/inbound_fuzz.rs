//! Fuzz target of the client frame parser ([`parse_client_frame`], the first step of every
//! WebSocket text frame a client sends; it lives in `inbound.rs`).
//!
//! Guarantee checked on every input: any text (arbitrary strings, JSON objects built from the
//! protocol's frame types and field names with values of every JSON type, deep nesting) gets
//! either a frame or a `bad_request` with a message, never a panic or a stack overflow; the
//! `id` echoed back is exactly the frame's string `id`, when it has one; and every accepted
//! frame carried a `type` the protocol names.
//!
//! Under `cargo test` the target runs a bounded number of random inputs (seconds); the long run
//! is described in docs/FUZZING.md.

use bolero::{TypeGenerator, check};
use serde_json::{Map, Number, Value};

use super::inbound::{ClientFrame, parse_client_frame};
use crate::error::ErrorCode;

/// Inputs of one short run under `cargo test`.
const SHORT_RUN_ITERATIONS: usize = 10_000;

const FRAME_TYPES: [&str; 21] = [
    "send",
    "edit",
    "recall",
    "read",
    "typing",
    "mute",
    "block",
    "pin",
    "leave",
    "forward",
    "react",
    "add_members",
    "remove_members",
    "role",
    "rename",
    "disband",
    "retention",
    "ping",
    "auth",
    "Send",
    "pong",
];
const FIELD_NAMES: [&str; 20] = [
    "type",
    "id",
    "conversation",
    "text",
    "seq",
    "token",
    "muted",
    "user",
    "blocked",
    "pinned",
    "reply_to",
    "source",
    "emoji",
    "added",
    "members",
    "role",
    "title",
    "ttl_seconds",
    "",
    "extra",
];

/// A scalar JSON value chosen by the fuzzer.
#[derive(Debug, Clone, TypeGenerator)]
enum Scalar {
    Null,
    Boolean(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
    FrameType(u8),
}

impl Scalar {
    fn value(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Boolean(flag) => Value::Bool(*flag),
            Scalar::Unsigned(number) => Value::Number((*number).into()),
            Scalar::Signed(number) => Value::Number((*number).into()),
            Scalar::Float(number) => Number::from_f64(*number).map_or(Value::Null, Value::Number),
            Scalar::Text(text) => Value::String(text.clone()),
            Scalar::FrameType(selector) => {
                Value::String(FRAME_TYPES[usize::from(*selector) % FRAME_TYPES.len()].to_owned())
            }
        }
    }
}

/// A JSON value: a scalar, or one level of array or object around scalars (deeper nesting is
/// written out as text by `FrameInput::Deep`; a recursive generator would grow exponentially).
#[derive(Debug, Clone, TypeGenerator)]
enum JsonSeed {
    Scalar(Scalar),
    Array(Vec<Scalar>),
    Object(Vec<(u8, Scalar)>),
}

impl JsonSeed {
    fn value(&self) -> Value {
        match self {
            JsonSeed::Scalar(scalar) => scalar.value(),
            JsonSeed::Array(items) => Value::Array(items.iter().map(Scalar::value).collect()),
            JsonSeed::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(selector, value)| {
                        let name = FIELD_NAMES[usize::from(*selector) % FIELD_NAMES.len()];
                        (name.to_owned(), value.value())
                    })
                    .collect(),
            ),
        }
    }
}

fn object(fields: &[(u8, JsonSeed)]) -> Map<String, Value> {
    fields
        .iter()
        .map(|(selector, value)| {
            let name = FIELD_NAMES[usize::from(*selector) % FIELD_NAMES.len()];
            (name.to_owned(), value.value())
        })
        .collect()
}

#[derive(Debug, Clone, TypeGenerator)]
enum FrameInput {
    /// Anything a client could send as a text frame.
    Raw(String),
    /// A frame of a protocol type with fuzzed fields.
    Frame {
        frame_type: u8,
        fields: Vec<(u8, JsonSeed)>,
    },
    /// A JSON document of any shape.
    Json(JsonSeed),
    /// Deep nesting written out as text (serde_json's recursion limit must answer).
    Deep {
        depth: u16,
        open_only: bool,
        inner: JsonSeed,
    },
    /// A valid frame's text cut short.
    Cut {
        fields: Vec<(u8, JsonSeed)>,
        keep: u16,
    },
}

fn render(input: &FrameInput) -> String {
    match input {
        FrameInput::Raw(text) => text.clone(),
        FrameInput::Frame { frame_type, fields } => {
            let mut frame = object(fields);
            frame.insert(
                "type".into(),
                Value::String(FRAME_TYPES[usize::from(*frame_type) % FRAME_TYPES.len()].into()),
            );
            Value::Object(frame).to_string()
        }
        FrameInput::Json(seed) => seed.value().to_string(),
        FrameInput::Deep {
            depth,
            open_only,
            inner,
        } => {
            let depth = usize::from(*depth) % 5_000;
            if *open_only {
                "{\"a\":".repeat(depth)
            } else {
                format!(
                    "{}{}{}",
                    "[".repeat(depth),
                    inner.value(),
                    "]".repeat(depth)
                )
            }
        }
        FrameInput::Cut { fields, keep } => {
            let text = Value::Object(object(fields)).to_string();
            let mut end = usize::from(*keep).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        }
    }
}

fn check_frame(text: &str) {
    let parsed_json = serde_json::from_str::<Value>(text).ok();
    let expected_id = parsed_json
        .as_ref()
        .and_then(|value| value.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    match parse_client_frame(text) {
        Ok((client_msg_id, frame)) => {
            assert_eq!(client_msg_id, expected_id);
            let frame_type = parsed_json
                .as_ref()
                .and_then(|value| value.get("type"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let expected_type = match frame {
                ClientFrame::Send { .. } => "send",
                ClientFrame::Edit { .. } => "edit",
                ClientFrame::Recall { .. } => "recall",
                ClientFrame::Read { .. } => "read",
                ClientFrame::Typing { .. } => "typing",
                ClientFrame::Mute { .. } => "mute",
                ClientFrame::Block { .. } => "block",
                ClientFrame::Pin { .. } => "pin",
                ClientFrame::Leave { .. } => "leave",
                ClientFrame::Forward { .. } => "forward",
                ClientFrame::React { .. } => "react",
                ClientFrame::AddMembers { .. } => "add_members",
                ClientFrame::RemoveMembers { .. } => "remove_members",
                ClientFrame::Role { .. } => "role",
                ClientFrame::Rename { .. } => "rename",
                ClientFrame::Disband { .. } => "disband",
                ClientFrame::Retention { .. } => "retention",
                ClientFrame::Ping => "ping",
                ClientFrame::Auth { .. } => "auth",
            };
            assert_eq!(frame_type, expected_type);
        }
        Err(unparsed) => {
            assert_eq!(unparsed.error.code, ErrorCode::BadRequest);
            assert!(!unparsed.error.message.is_empty());
            // the id is echoed whenever the text was JSON with a string id
            assert_eq!(unparsed.client_msg_id, expected_id);
        }
    }
}

#[test]
fn fuzz_client_frame_parser() {
    check!()
        .with_type::<FrameInput>()
        .with_iterations(SHORT_RUN_ITERATIONS)
        .for_each(|input| check_frame(&render(input)));
}

/// Fixed shapes a hostile client might try: every one answers.
#[test]
fn hostile_frames_are_answered() {
    let shapes = [
        String::new(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        r#"{"type":"send"}"#.into(),
        r#"{"type":"edit","id":"x","conversation":"dm:a:b","seq":-1,"text":"t"}"#.into(),
        r#"{"type":"edit","id":"x","conversation":"dm:a:b","seq":18446744073709551616,"text":"t"}"#
            .into(),
        r#"{"type":"read","conversation":"dm:a:b","seq":1e400}"#.into(),
        r#"{"type":"ping","type":"send"}"#.into(),
        format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
        "{\"a\":".repeat(100_000),
        format!("{{\"type\":\"send\",\"id\":\"{}\"", "\\u0000".repeat(1_000)),
        "\u{feff}{\"type\":\"ping\"}".into(),
    ];
    for shape in &shapes {
        check_frame(shape);
    }
}

/// Found by `fuzz_client_frame_parser`: serde takes a JSON array as an internally tagged enum
/// (`["ping"]`, `["send", "id", "dm:a:b", "hi"]` were frames). The protocol's frames are objects
/// with a `type`; anything else is a `bad_request`.
#[test]
fn frames_that_are_not_objects_are_refused() {
    for text in [
        r#"["ping"]"#,
        r#"["send", "c1", "dm:alice:bob", "hi"]"#,
        r#"["read", "dm:alice:bob", 1]"#,
    ] {
        let Err(unparsed) = parse_client_frame(text) else {
            panic!("{text} was taken as a frame");
        };
        assert_eq!(unparsed.error.code, ErrorCode::BadRequest);
        assert!(
            unparsed.error.message.contains("not a json object"),
            "{}",
            unparsed.error.message
        );
    }
    assert!(parse_client_frame(r#"{"type":"ping"}"#).is_ok());
}
