//! Avro single-object encoding of [`IngressEvent`] and [`TimelineEvent`].
//!
//! Wire format of every record value on `ingress` and `timeline` (documented in docs/protocol.md):
//! `C3 01` | the writer schema's CRC-64-AVRO (Rabin) fingerprint, 8 bytes little-endian | Avro
//! binary datum. The fingerprint is taken over the self-contained schema obtained by inlining the
//! event records (`message_sent.avsc`, …) into the envelope, so a producer outside Chorus can
//! compute it with any Avro library from the same files.
//!
//! Decoding looks the fingerprint up among every known writer schema of that envelope (current and
//! historical), reads the datum with that writer schema, and resolves it to the current schema by
//! name: a field the writer lacked takes the current schema's default, and the `body` union branch
//! is matched by its record's full name (not its index). So compatible schema changes (added
//! fields with defaults, reordered or added event types) never strand old data. (apache-avro's own
//! union resolution matches branches structurally and can pick the wrong event record, so it is
//! not used.) An unknown fingerprint, a wrong marker or a datum that does not match its
//! schema is a [`CodecError`], which callers turn into a dead-letter record or a 400.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::event::{
    Attachment, EventBody, ForwardOrigin, IngressEvent, Message, Role, TimelineEvent,
};

/// The two-byte marker that opens an Avro single-object encoded value.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// Event record schemas, in the order of the envelope's `body` union.
const EVENT_SCHEMAS: [(&str, &str); 15] = [
    (
        "chorus.MessageSent",
        include_str!("../avro/message_sent.avsc"),
    ),
    (
        "chorus.MessageEdited",
        include_str!("../avro/message_edited.avsc"),
    ),
    (
        "chorus.MessageRecalled",
        include_str!("../avro/message_recalled.avsc"),
    ),
    (
        "chorus.ConversationCreated",
        include_str!("../avro/conversation_created.avsc"),
    ),
    (
        "chorus.MembersAdded",
        include_str!("../avro/members_added.avsc"),
    ),
    (
        "chorus.MembersRemoved",
        include_str!("../avro/members_removed.avsc"),
    ),
    (
        "chorus.ReadCursorMoved",
        include_str!("../avro/read_cursor_moved.avsc"),
    ),
    (
        "chorus.ConversationMuted",
        include_str!("../avro/conversation_muted.avsc"),
    ),
    (
        "chorus.UserBlocked",
        include_str!("../avro/user_blocked.avsc"),
    ),
    (
        "chorus.MessagePinned",
        include_str!("../avro/message_pinned.avsc"),
    ),
    (
        "chorus.ReactionChanged",
        include_str!("../avro/reaction_changed.avsc"),
    ),
    (
        "chorus.RoleChanged",
        include_str!("../avro/role_changed.avsc"),
    ),
    (
        "chorus.ConversationRenamed",
        include_str!("../avro/conversation_renamed.avsc"),
    ),
    (
        "chorus.ConversationDisbanded",
        include_str!("../avro/conversation_disbanded.avsc"),
    ),
    (
        "chorus.RetentionSet",
        include_str!("../avro/retention_set.avsc"),
    ),
];

const INGRESS_SCHEMA: &str = include_str!("../avro/ingress_event.avsc");
const TIMELINE_SCHEMA: &str = include_str!("../avro/timeline_event.avsc");
/// Earlier versions of the timeline envelope, still readable.
const TIMELINE_HISTORY: [&str; 9] = [
    include_str!("../avro/history/timeline_event.v1.avsc"),
    include_str!("../avro/history/timeline_event.v2.avsc"),
    include_str!("../avro/history/timeline_event.v3.avsc"),
    include_str!("../avro/history/timeline_event.v4.avsc"),
    include_str!("../avro/history/timeline_event.v5.avsc"),
    include_str!("../avro/history/timeline_event.v6.avsc"),
    include_str!("../avro/history/timeline_event.v7.avsc"),
    include_str!("../avro/history/timeline_event.v8.avsc"),
    include_str!("../avro/history/timeline_event.v9.avsc"),
];
/// Earlier versions of the ingress envelope, still readable.
const INGRESS_HISTORY: [&str; 8] = [
    include_str!("../avro/history/ingress_event.v1.avsc"),
    include_str!("../avro/history/ingress_event.v2.avsc"),
    include_str!("../avro/history/ingress_event.v3.avsc"),
    include_str!("../avro/history/ingress_event.v4.avsc"),
    include_str!("../avro/history/ingress_event.v5.avsc"),
    include_str!("../avro/history/ingress_event.v6.avsc"),
    include_str!("../avro/history/ingress_event.v7.avsc"),
    include_str!("../avro/history/ingress_event.v8.avsc"),
];

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not an avro single-object encoded value")]
    BadMarker,
    #[error("unknown writer schema fingerprint {0}")]
    UnknownSchema(String),
    #[error("avro: {0}")]
    Avro(String),
    #[error("field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

impl From<apache_avro::Error> for CodecError {
    fn from(error: apache_avro::Error) -> Self {
        CodecError::Avro(error.to_string())
    }
}

/// One envelope's schemas: the current (writer and reader) one, and every known writer schema by
/// fingerprint.
pub struct EnvelopeSchemas {
    /// The schema new records are written with, and old ones resolved to.
    pub current: &'static Schema,
    /// The current schema's fingerprint, as it appears in the single-object header.
    pub current_fingerprint: [u8; 8],
    /// Writes datums with the current schema; built once (resolving a schema's names costs
    /// more than encoding an event).
    writer: GenericDatumWriter<'static>,
    /// Readers for every known writer schema (current included), keyed by fingerprint.
    readers: HashMap<[u8; 8], WriterSchema>,
    /// Defaults of the current schema's fields, for fields an older writer lacked.
    defaults: HashMap<String, serde_json::Value>,
}

/// A known writer schema, ready to read data written with it.
struct WriterSchema {
    /// Reads datums written with this schema (no resolution; see the module docs).
    reader: GenericDatumReader<'static>,
    /// Full names of the `body` union's records, by branch index.
    body_branches: Vec<String>,
}

fn body_branch_names(schema: &Schema) -> Vec<String> {
    let Schema::Record(record) = schema else {
        return Vec::new();
    };
    record
        .fields
        .iter()
        .find(|field| field.name == "body")
        .and_then(|field| match &field.schema {
            Schema::Union(union) => Some(
                union
                    .variants()
                    .iter()
                    .map(|variant| {
                        variant
                            .name()
                            .map(|name| name.fullname(None))
                            .unwrap_or_default()
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn field_defaults(schema: &Schema) -> HashMap<String, serde_json::Value> {
    let Schema::Record(record) = schema else {
        return HashMap::new();
    };
    record
        .fields
        .iter()
        .filter_map(|field| {
            field
                .default
                .clone()
                .map(|default| (field.name.clone(), default))
        })
        .collect()
}

/// Inlines the event record schemas into an envelope schema so that it parses on its own.
pub fn self_contained_schema_json(envelope_json: &str) -> serde_json::Value {
    let mut envelope: serde_json::Value =
        serde_json::from_str(envelope_json).expect("envelope .avsc files are valid JSON");
    let events: HashMap<&str, serde_json::Value> = EVENT_SCHEMAS
        .iter()
        .map(|(name, json)| {
            (
                *name,
                serde_json::from_str(json).expect("event .avsc is JSON"),
            )
        })
        .collect();
    if let Some(fields) = envelope
        .get_mut("fields")
        .and_then(|fields| fields.as_array_mut())
    {
        for field in fields {
            let Some(branches) = field.get_mut("type").and_then(|ty| ty.as_array_mut()) else {
                continue;
            };
            for branch in branches {
                if let Some(definition) = branch.as_str().and_then(|name| events.get(name)) {
                    *branch = definition.clone();
                }
            }
        }
    }
    envelope
}

fn parse_static(envelope_json: &str) -> &'static Schema {
    let json = self_contained_schema_json(envelope_json).to_string();
    let schema = Schema::parse_str(&json).expect("bundled .avsc files parse");
    Box::leak(Box::new(schema))
}

fn fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[..8]);
    fingerprint
}

impl EnvelopeSchemas {
    fn load(current_json: &str, history_json: &[&str]) -> Self {
        let current = parse_static(current_json);
        let mut readers = HashMap::new();
        for writer in std::iter::once(current).chain(history_json.iter().map(|j| parse_static(j))) {
            let reader = GenericDatumReader::builder(writer)
                .build()
                .expect("bundled schemas build");
            readers.insert(
                fingerprint(writer),
                WriterSchema {
                    reader,
                    body_branches: body_branch_names(writer),
                },
            );
        }
        EnvelopeSchemas {
            current,
            current_fingerprint: fingerprint(current),
            writer: GenericDatumWriter::builder(current)
                .build()
                .expect("bundled schemas build"),
            readers,
            defaults: field_defaults(current),
        }
    }

    fn encode(&self, value: Value) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&SINGLE_OBJECT_MARKER);
        out.extend_from_slice(&self.current_fingerprint);
        self.writer.write_value(&mut out, value)?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Fields<'_>, CodecError> {
        if bytes.len() < 10 || bytes[..2] != SINGLE_OBJECT_MARKER {
            return Err(CodecError::BadMarker);
        }
        let mut writer_fingerprint = [0u8; 8];
        writer_fingerprint.copy_from_slice(&bytes[2..10]);
        let writer = self.readers.get(&writer_fingerprint).ok_or_else(|| {
            CodecError::UnknownSchema(
                writer_fingerprint
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect(),
            )
        })?;
        let mut datum = &bytes[10..];
        let value = writer.reader.read_value(&mut datum)?;
        if !datum.is_empty() {
            return Err(CodecError::Avro(format!(
                "{} trailing bytes after datum",
                datum.len()
            )));
        }
        match value {
            Value::Record(entries) => Ok(Fields {
                entries,
                writer,
                defaults: &self.defaults,
            }),
            other => Err(CodecError::Avro(format!(
                "expected a record, got {other:?}"
            ))),
        }
    }
}

/// The schemas of `ingress` records.
pub static INGRESS: LazyLock<EnvelopeSchemas> =
    LazyLock::new(|| EnvelopeSchemas::load(INGRESS_SCHEMA, &INGRESS_HISTORY));
/// The schemas of `timeline` records.
pub static TIMELINE: LazyLock<EnvelopeSchemas> =
    LazyLock::new(|| EnvelopeSchemas::load(TIMELINE_SCHEMA, &TIMELINE_HISTORY));

pub fn encode_ingress(event: &IngressEvent) -> Result<Vec<u8>, CodecError> {
    INGRESS.encode(Value::Record(vec![
        ("event_id".into(), Value::String(event.event_id.clone())),
        (
            "conversation".into(),
            Value::String(event.conversation.clone()),
        ),
        ("sender".into(), Value::String(event.sender.clone())),
        (
            "client_msg_id".into(),
            optional_string(&event.client_msg_id),
        ),
        ("ts_ms".into(), Value::Long(event.ts_ms)),
        (
            "origin_cluster".into(),
            Value::String(event.origin_cluster.clone()),
        ),
        ("origin_node".into(), optional_string(&event.origin_node)),
        (
            "origin_session".into(),
            optional_string(&event.origin_session),
        ),
        ("trusted".into(), Value::Boolean(event.trusted)),
        ("body".into(), body_value(&event.body)?),
    ]))
}

pub fn decode_ingress(bytes: &[u8]) -> Result<IngressEvent, CodecError> {
    let mut fields = INGRESS.decode(bytes)?;
    Ok(IngressEvent {
        event_id: fields.string("event_id")?,
        conversation: fields.string("conversation")?,
        sender: fields.string("sender")?,
        client_msg_id: fields.optional_string("client_msg_id")?,
        ts_ms: fields.long("ts_ms")?,
        origin_cluster: fields.string("origin_cluster")?,
        origin_node: fields.optional_string("origin_node")?,
        origin_session: fields.optional_string("origin_session")?,
        trusted: fields.boolean("trusted")?,
        body: fields.body()?,
    })
}

pub fn encode_timeline(event: &TimelineEvent) -> Result<Vec<u8>, CodecError> {
    let seq = match event.seq {
        Some(seq) => Value::Union(1, Box::new(Value::Long(to_long("seq", seq)?))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    TIMELINE.encode(Value::Record(vec![
        (
            "conversation".into(),
            Value::String(event.conversation.clone()),
        ),
        ("seq".into(), seq),
        ("event_id".into(), Value::String(event.event_id.clone())),
        ("sender".into(), Value::String(event.sender.clone())),
        ("ts_ms".into(), Value::Long(event.ts_ms)),
        (
            "origin_cluster".into(),
            Value::String(event.origin_cluster.clone()),
        ),
        (
            "client_msg_id".into(),
            optional_string(&event.client_msg_id),
        ),
        (
            "ingress_offset".into(),
            Value::Long(to_long("ingress_offset", event.ingress_offset)?),
        ),
        ("body".into(), body_value(&event.body)?),
    ]))
}

pub fn decode_timeline(bytes: &[u8]) -> Result<TimelineEvent, CodecError> {
    let mut fields = TIMELINE.decode(bytes)?;
    let seq = match fields.take("seq")? {
        Value::Union(_, inner) => match *inner {
            Value::Null => None,
            Value::Long(seq) => Some(from_long("seq", seq)?),
            other => return Err(field_error("seq", &other)),
        },
        other => return Err(field_error("seq", &other)),
    };
    Ok(TimelineEvent {
        conversation: fields.string("conversation")?,
        seq,
        event_id: fields.string("event_id")?,
        sender: fields.string("sender")?,
        ts_ms: fields.long("ts_ms")?,
        origin_cluster: fields.string("origin_cluster")?,
        client_msg_id: fields.optional_string("client_msg_id")?,
        ingress_offset: from_long("ingress_offset", fields.long("ingress_offset")?)?,
        body: fields.body()?,
    })
}

fn optional_string(value: &Option<String>) -> Value {
    match value {
        Some(text) => Value::Union(1, Box::new(Value::String(text.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn string_array(members: &[String]) -> Value {
    Value::Array(members.iter().cloned().map(Value::String).collect())
}

fn to_long(field: &'static str, value: u64) -> Result<i64, CodecError> {
    i64::try_from(value).map_err(|_| CodecError::Field {
        field,
        problem: format!("{value} exceeds i64"),
    })
}

fn from_long(field: &'static str, value: i64) -> Result<u64, CodecError> {
    u64::try_from(value).map_err(|_| CodecError::Field {
        field,
        problem: format!("{value} is negative"),
    })
}

/// The body as its union branch. A seq beyond Avro's `long` is refused (as for the envelope's
/// numbers): cast, it would encode as a negative number that no decoder accepts.
fn body_value(body: &EventBody) -> Result<Value, CodecError> {
    let (branch, fields): (u32, Vec<(String, Value)>) = match body {
        EventBody::MessageSent(message) => (0, message_fields(message)?),
        EventBody::MessageEdited { target_seq, text } => (
            1,
            vec![
                (
                    "target_seq".into(),
                    Value::Long(to_long("target_seq", *target_seq)?),
                ),
                ("text".into(), Value::String(text.clone())),
            ],
        ),
        EventBody::MessageRecalled { target_seq } => (
            2,
            vec![(
                "target_seq".into(),
                Value::Long(to_long("target_seq", *target_seq)?),
            )],
        ),
        EventBody::ConversationCreated { title, members } => (
            3,
            vec![
                ("title".into(), optional_string(title)),
                ("members".into(), string_array(members)),
            ],
        ),
        EventBody::MembersAdded { members } => (4, vec![("members".into(), string_array(members))]),
        EventBody::MembersRemoved { members } => {
            (5, vec![("members".into(), string_array(members))])
        }
        EventBody::ReadCursorMoved { seq } => {
            (6, vec![("seq".into(), Value::Long(to_long("seq", *seq)?))])
        }
        EventBody::ConversationMuted { muted } => {
            (7, vec![("muted".into(), Value::Boolean(*muted))])
        }
        EventBody::UserBlocked { blocked } => {
            (8, vec![("blocked".into(), Value::Boolean(*blocked))])
        }
        EventBody::MessagePinned { target_seq, pinned } => (
            9,
            vec![
                (
                    "target_seq".into(),
                    Value::Long(to_long("target_seq", *target_seq)?),
                ),
                ("pinned".into(), Value::Boolean(*pinned)),
            ],
        ),
        EventBody::ReactionChanged {
            target_seq,
            emoji,
            added,
        } => (
            10,
            vec![
                (
                    "target_seq".into(),
                    Value::Long(to_long("target_seq", *target_seq)?),
                ),
                ("emoji".into(), Value::String(emoji.clone())),
                ("added".into(), Value::Boolean(*added)),
            ],
        ),
        EventBody::RoleChanged { member, role } => (
            11,
            vec![
                ("member".into(), Value::String(member.clone())),
                ("role".into(), Value::String(role.as_str().to_owned())),
            ],
        ),
        EventBody::ConversationRenamed { title } => {
            (12, vec![("title".into(), Value::String(title.clone()))])
        }
        EventBody::ConversationDisbanded { members } => {
            (13, vec![("members".into(), string_array(members))])
        }
        EventBody::RetentionSet { ttl_seconds } => (
            14,
            vec![(
                "ttl_seconds".into(),
                Value::Long(to_long("ttl_seconds", *ttl_seconds)?),
            )],
        ),
    };
    Ok(Value::Union(branch, Box::new(Value::Record(fields))))
}

/// The fields of a `chorus.MessageSent` record.
fn message_fields(message: &Message) -> Result<Vec<(String, Value)>, CodecError> {
    let reply_to = match message.reply_to {
        Some(seq) => Value::Union(1, Box::new(Value::Long(to_long("reply_to", seq)?))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let forwarded_from = match &message.forwarded_from {
        Some(origin) => Value::Union(
            1,
            Box::new(Value::Record(vec![
                (
                    "conversation".into(),
                    Value::String(origin.conversation.clone()),
                ),
                ("seq".into(), Value::Long(to_long("seq", origin.seq)?)),
                ("sender".into(), Value::String(origin.sender.clone())),
            ])),
        ),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let attachment = match &message.attachment {
        Some(attachment) => Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("id".into(), Value::String(attachment.id.clone())),
                ("name".into(), Value::String(attachment.name.clone())),
                (
                    "size".into(),
                    Value::Long(to_long("size", attachment.size)?),
                ),
                (
                    "content_type".into(),
                    Value::String(attachment.content_type.clone()),
                ),
            ])),
        ),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    Ok(vec![
        ("text".into(), Value::String(message.text.clone())),
        ("reply_to".into(), reply_to),
        ("forwarded_from".into(), forwarded_from),
        ("attachment".into(), attachment),
        ("mentions".into(), string_array(&message.mentions)),
    ])
}

fn field_error(field: &'static str, value: &Value) -> CodecError {
    CodecError::Field {
        field,
        problem: format!("unexpected value {value:?}"),
    }
}

/// A decoded record's fields, taken out by name.
struct Fields<'schemas> {
    /// Remaining (name, value) pairs of the record.
    entries: Vec<(String, Value)>,
    /// The schema the record was written with (for the body's branch names).
    writer: &'schemas WriterSchema,
    /// Defaults of the current schema, for fields the writer lacked.
    defaults: &'schemas HashMap<String, serde_json::Value>,
}

fn default_value(default: &serde_json::Value) -> Value {
    match default {
        serde_json::Value::String(text) => Value::String(text.clone()),
        serde_json::Value::Number(number) => Value::Long(number.as_i64().unwrap_or_default()),
        serde_json::Value::Bool(flag) => Value::Boolean(*flag),
        _ => Value::Null,
    }
}

impl Fields<'_> {
    fn take(&mut self, field: &'static str) -> Result<Value, CodecError> {
        if let Some(index) = self.entries.iter().position(|(name, _)| name == field) {
            return Ok(self.entries.swap_remove(index).1);
        }
        self.defaults
            .get(field)
            .map(default_value)
            .ok_or(CodecError::Field {
                field,
                problem: "missing, with no default".into(),
            })
    }

    fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        match self.take(field)? {
            Value::String(text) => Ok(text),
            other => Err(field_error(field, &other)),
        }
    }

    fn long(&mut self, field: &'static str) -> Result<i64, CodecError> {
        match self.take(field)? {
            Value::Long(number) => Ok(number),
            Value::Int(number) => Ok(number.into()),
            other => Err(field_error(field, &other)),
        }
    }

    fn optional_string(&mut self, field: &'static str) -> Result<Option<String>, CodecError> {
        match self.take(field)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                Value::String(text) => Ok(Some(text)),
                other => Err(field_error(field, &other)),
            },
            Value::Null => Ok(None),
            Value::String(text) => Ok(Some(text)),
            other => Err(field_error(field, &other)),
        }
    }

    fn boolean(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.take(field)? {
            Value::Boolean(flag) => Ok(flag),
            other => Err(field_error(field, &other)),
        }
    }

    fn string_array(&mut self, field: &'static str) -> Result<Vec<String>, CodecError> {
        match self.take(field)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    other => Err(field_error(field, &other)),
                })
                .collect(),
            other => Err(field_error(field, &other)),
        }
    }

    fn unsigned(&mut self, field: &'static str) -> Result<u64, CodecError> {
        let value = self.long(field)?;
        from_long(field, value)
    }

    /// A field that older writers of its record lacked: `None` when absent.
    fn added(&mut self, field: &'static str) -> Option<Value> {
        let index = self.entries.iter().position(|(name, _)| name == field)?;
        Some(self.entries.swap_remove(index).1)
    }

    /// A `chorus.MessageSent` record; v1 writers had `text` only.
    fn message(&mut self) -> Result<Message, CodecError> {
        let text = self.string("text")?;
        let reply_to = match self.added("reply_to") {
            None => None,
            Some(Value::Union(_, inner)) => match *inner {
                Value::Null => None,
                Value::Long(seq) => Some(from_long("reply_to", seq)?),
                other => return Err(field_error("reply_to", &other)),
            },
            Some(other) => return Err(field_error("reply_to", &other)),
        };
        let mentions = match self.added("mentions") {
            None => Vec::new(),
            Some(value) => {
                self.entries.push(("mentions".into(), value));
                self.string_array("mentions")?
            }
        };
        let forwarded_from = match self.added("forwarded_from") {
            None => None,
            Some(Value::Union(_, inner)) => match *inner {
                Value::Null => None,
                Value::Record(entries) => {
                    let mut origin = Fields {
                        entries,
                        writer: self.writer,
                        defaults: self.defaults,
                    };
                    Some(Box::new(ForwardOrigin {
                        conversation: origin.string("conversation")?,
                        seq: origin.unsigned("seq")?,
                        sender: origin.string("sender")?,
                    }))
                }
                other => return Err(field_error("forwarded_from", &other)),
            },
            Some(other) => return Err(field_error("forwarded_from", &other)),
        };
        let attachment = match self.added("attachment") {
            None => None,
            Some(Value::Union(_, inner)) => match *inner {
                Value::Null => None,
                Value::Record(entries) => {
                    let mut file = Fields {
                        entries,
                        writer: self.writer,
                        defaults: self.defaults,
                    };
                    Some(Box::new(Attachment {
                        id: file.string("id")?,
                        name: file.string("name")?,
                        size: file.unsigned("size")?,
                        content_type: file.string("content_type")?,
                    }))
                }
                other => return Err(field_error("attachment", &other)),
            },
            Some(other) => return Err(field_error("attachment", &other)),
        };
        Ok(Message {
            text,
            reply_to,
            mentions,
            forwarded_from,
            attachment,
        })
    }

    fn body(&mut self) -> Result<EventBody, CodecError> {
        let (branch, record) = match self.take("body")? {
            Value::Union(branch, inner) => match *inner {
                Value::Record(fields) => (branch, fields),
                other => return Err(field_error("body", &other)),
            },
            other => return Err(field_error("body", &other)),
        };
        let branch_name = self
            .writer
            .body_branches
            .get(branch as usize)
            .cloned()
            .unwrap_or_default();
        let no_defaults = HashMap::new();
        let mut body = Fields {
            entries: record,
            writer: self.writer,
            defaults: &no_defaults,
        };
        Ok(match branch_name.as_str() {
            "chorus.MessageSent" => EventBody::MessageSent(body.message()?),
            "chorus.MessageEdited" => EventBody::MessageEdited {
                target_seq: body.unsigned("target_seq")?,
                text: body.string("text")?,
            },
            "chorus.MessageRecalled" => EventBody::MessageRecalled {
                target_seq: body.unsigned("target_seq")?,
            },
            "chorus.ConversationCreated" => EventBody::ConversationCreated {
                title: body.optional_string("title")?,
                members: body.string_array("members")?,
            },
            "chorus.MembersAdded" => EventBody::MembersAdded {
                members: body.string_array("members")?,
            },
            "chorus.MembersRemoved" => EventBody::MembersRemoved {
                members: body.string_array("members")?,
            },
            "chorus.ReadCursorMoved" => EventBody::ReadCursorMoved {
                seq: body.unsigned("seq")?,
            },
            "chorus.ConversationMuted" => EventBody::ConversationMuted {
                muted: body.boolean("muted")?,
            },
            "chorus.UserBlocked" => EventBody::UserBlocked {
                blocked: body.boolean("blocked")?,
            },
            "chorus.MessagePinned" => EventBody::MessagePinned {
                target_seq: body.unsigned("target_seq")?,
                pinned: body.boolean("pinned")?,
            },
            "chorus.ReactionChanged" => EventBody::ReactionChanged {
                target_seq: body.unsigned("target_seq")?,
                emoji: body.string("emoji")?,
                added: body.boolean("added")?,
            },
            "chorus.RoleChanged" => {
                let member = body.string("member")?;
                let role = body.string("role")?;
                EventBody::RoleChanged {
                    member,
                    role: Role::parse(&role).ok_or_else(|| CodecError::Field {
                        field: "role",
                        problem: format!("unknown role {role:?}"),
                    })?,
                }
            }
            "chorus.ConversationRenamed" => EventBody::ConversationRenamed {
                title: body.string("title")?,
            },
            "chorus.ConversationDisbanded" => EventBody::ConversationDisbanded {
                members: body.string_array("members")?,
            },
            "chorus.RetentionSet" => EventBody::RetentionSet {
                ttl_seconds: body.unsigned("ttl_seconds")?,
            },
            _ => {
                return Err(CodecError::Field {
                    field: "body",
                    problem: format!("unknown union branch {branch} ({branch_name})"),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_bodies() -> Vec<EventBody> {
        vec![
            EventBody::message("今天我们去北京开会"),
            EventBody::MessageSent(Message {
                text: "@bob see above".into(),
                reply_to: Some(3),
                mentions: vec!["bob".into()],
                forwarded_from: Some(Box::new(ForwardOrigin {
                    conversation: "dm:alice:bob".into(),
                    seq: 9,
                    sender: "bob".into(),
                })),
                attachment: Some(Box::new(Attachment {
                    id: "0f8fad5bd9cb469fa16570867728950e".into(),
                    name: "北京.png".into(),
                    size: 12_345,
                    content_type: "image/png".into(),
                })),
            }),
            EventBody::MessageEdited {
                target_seq: 7,
                text: "new".into(),
            },
            EventBody::MessageRecalled { target_seq: 7 },
            EventBody::ConversationCreated {
                title: Some("Team".into()),
                members: vec!["alice".into(), "bob".into()],
            },
            EventBody::ConversationCreated {
                title: None,
                members: vec![],
            },
            EventBody::MembersAdded {
                members: vec!["carol".into()],
            },
            EventBody::MembersRemoved {
                members: vec!["bob".into()],
            },
            EventBody::ReadCursorMoved { seq: 9 },
            EventBody::ConversationMuted { muted: true },
            EventBody::UserBlocked { blocked: true },
            EventBody::MessagePinned {
                target_seq: 3,
                pinned: true,
            },
            EventBody::ReactionChanged {
                target_seq: 3,
                emoji: "👍🏽".into(),
                added: true,
            },
            EventBody::RoleChanged {
                member: "bob".into(),
                role: Role::Admin,
            },
            EventBody::RoleChanged {
                member: "carol".into(),
                role: Role::Owner,
            },
            EventBody::ConversationRenamed {
                title: "新名字".into(),
            },
            EventBody::ConversationDisbanded {
                members: vec!["alice".into(), "bob".into()],
            },
            EventBody::RetentionSet {
                ttl_seconds: 86_400,
            },
        ]
    }

    #[test]
    fn ingress_round_trips_every_body() {
        for body in sample_bodies() {
            let event = IngressEvent {
                event_id: "e1".into(),
                conversation: "dm:alice:bob".into(),
                sender: "alice".into(),
                client_msg_id: Some("c1".into()),
                ts_ms: 1_764_230_400_000,
                origin_cluster: "local".into(),
                origin_node: Some("node-1".into()),
                origin_session: None,
                trusted: false,
                body,
            };
            let bytes = encode_ingress(&event).unwrap();
            assert_eq!(&bytes[..2], &SINGLE_OBJECT_MARKER);
            assert_eq!(decode_ingress(&bytes).unwrap(), event);
        }
    }

    #[test]
    fn timeline_round_trips_every_body() {
        for (index, body) in sample_bodies().into_iter().enumerate() {
            let event = TimelineEvent {
                conversation: "g:team".into(),
                seq: if body.is_sequenced() {
                    Some(index as u64 + 1)
                } else {
                    None
                },
                event_id: format!("e{index}"),
                sender: "alice".into(),
                ts_ms: 42,
                origin_cluster: "east".into(),
                client_msg_id: None,
                ingress_offset: 1234,
                body,
            };
            assert_eq!(
                decode_timeline(&encode_timeline(&event).unwrap()).unwrap(),
                event
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            decode_timeline(b"{\"json\":1}"),
            Err(CodecError::BadMarker)
        ));
        let mut unknown = SINGLE_OBJECT_MARKER.to_vec();
        unknown.extend_from_slice(&[0; 8]);
        unknown.push(0);
        assert!(matches!(
            decode_timeline(&unknown),
            Err(CodecError::UnknownSchema(_))
        ));
        let good = encode_timeline(&TimelineEvent {
            conversation: "g:x".into(),
            seq: Some(1),
            event_id: "e".into(),
            sender: "a".into(),
            ts_ms: 1,
            origin_cluster: "local".into(),
            client_msg_id: None,
            ingress_offset: 0,
            body: EventBody::message("hello"),
        })
        .unwrap();
        for cut in 10..good.len() {
            assert!(
                decode_timeline(&good[..cut]).is_err(),
                "truncated at {cut} must fail"
            );
        }
    }
}
