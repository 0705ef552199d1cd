//! Data written with an older envelope schema stays readable after a compatible change.
//!
//! `history/timeline_event.v1.avsc` is the timeline envelope before `origin_cluster` was added;
//! a record written with it must decode with the current schema, the new field taking its default.

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use chorus_schemas::codec::{INGRESS, SINGLE_OBJECT_MARKER, TIMELINE, self_contained_schema_json};
use chorus_schemas::{EventBody, decode_ingress, decode_timeline};

#[test]
fn v1_timeline_records_decode_with_the_current_schema() {
    let v1_json =
        self_contained_schema_json(include_str!("../avro/history/timeline_event.v1.avsc"));
    let v1 = Schema::parse_str(&v1_json.to_string()).unwrap();
    assert!(SchemaCompatibility::can_read(&v1, TIMELINE.current).is_ok());

    let datum = GenericDatumWriter::builder(&v1)
        .build()
        .unwrap()
        .write_value_to_vec(Value::Record(vec![
            ("conversation".into(), Value::String("dm:alice:bob".into())),
            ("seq".into(), Value::Union(1, Box::new(Value::Long(3)))),
            ("event_id".into(), Value::String("e3".into())),
            ("sender".into(), Value::String("alice".into())),
            ("ts_ms".into(), Value::Long(1000)),
            (
                "client_msg_id".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
            ("ingress_offset".into(), Value::Long(17)),
            (
                "body".into(),
                Value::Union(
                    0,
                    Box::new(Value::Record(vec![(
                        "text".into(),
                        Value::String("old".into()),
                    )])),
                ),
            ),
        ]))
        .unwrap();
    let mut record = SINGLE_OBJECT_MARKER.to_vec();
    record.extend_from_slice(&v1.fingerprint::<Rabin>().bytes);
    record.extend_from_slice(&datum);

    let event = decode_timeline(&record).unwrap();
    assert_eq!(event.seq, Some(3));
    assert_eq!(
        event.origin_cluster, "local",
        "the field added in v2 takes its default"
    );
    assert_eq!(event.body, EventBody::message("old"));
}

/// Writes `value` as a single-object record of the (self-contained) `schema_json`.
fn record_of(schema_json: &str, value: Value) -> (Schema, Vec<u8>) {
    let json = self_contained_schema_json(schema_json);
    let schema = Schema::parse_str(&json.to_string()).unwrap();
    let datum = GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let mut record = SINGLE_OBJECT_MARKER.to_vec();
    record.extend_from_slice(&schema.fingerprint::<Rabin>().bytes);
    record.extend_from_slice(&datum);
    (schema, record)
}

/// A read mark (union branch 6), the same in every version's body union.
fn read_mark_body() -> Value {
    Value::Union(
        6,
        Box::new(Value::Record(vec![("seq".into(), Value::Long(4))])),
    )
}

#[test]
fn envelopes_written_before_the_mute_event_decode_with_the_current_schemas() {
    check_older_envelopes(
        include_str!("../avro/history/timeline_event.v2.avsc"),
        include_str!("../avro/history/ingress_event.v1.avsc"),
    );
}

#[test]
fn envelopes_written_before_the_block_event_decode_with_the_current_schemas() {
    check_older_envelopes(
        include_str!("../avro/history/timeline_event.v3.avsc"),
        include_str!("../avro/history/ingress_event.v2.avsc"),
    );
    let mut blocked = chorus_schemas::IngressEvent {
        event_id: "e11".into(),
        conversation: "dm:alice:bob".into(),
        sender: "alice".into(),
        client_msg_id: None,
        ts_ms: 3,
        origin_cluster: "east".into(),
        origin_node: None,
        origin_session: None,
        trusted: false,
        body: EventBody::UserBlocked { blocked: true },
    };
    assert_eq!(
        decode_ingress(&chorus_schemas::encode_ingress(&blocked).unwrap()).unwrap(),
        blocked
    );
    blocked.body = EventBody::UserBlocked { blocked: false };
    assert_eq!(
        decode_ingress(&chorus_schemas::encode_ingress(&blocked).unwrap()).unwrap(),
        blocked
    );
}

#[test]
fn envelopes_written_before_the_pin_event_decode_with_the_current_schemas() {
    check_older_envelopes(
        include_str!("../avro/history/timeline_event.v4.avsc"),
        include_str!("../avro/history/ingress_event.v3.avsc"),
    );
}

/// A timeline record written with `timeline_json` and an ingress record written with
/// `ingress_json` (older envelopes) decode with the current schemas.
fn check_older_envelopes(timeline_json: &str, ingress_json: &str) {
    let (v2, record) = record_of(
        timeline_json,
        Value::Record(vec![
            ("conversation".into(), Value::String("g:team".into())),
            ("seq".into(), Value::Union(0, Box::new(Value::Null))),
            ("event_id".into(), Value::String("e9".into())),
            ("sender".into(), Value::String("bob".into())),
            ("ts_ms".into(), Value::Long(2000)),
            ("origin_cluster".into(), Value::String("east".into())),
            (
                "client_msg_id".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
            ("ingress_offset".into(), Value::Long(40)),
            ("body".into(), read_mark_body()),
        ]),
    );
    assert!(SchemaCompatibility::can_read(&v2, TIMELINE.current).is_ok());
    let event = decode_timeline(&record).unwrap();
    assert_eq!(event.origin_cluster, "east");
    assert_eq!(event.body, EventBody::ReadCursorMoved { seq: 4 });

    let (v1, record) = record_of(
        ingress_json,
        Value::Record(vec![
            ("event_id".into(), Value::String("e10".into())),
            ("conversation".into(), Value::String("g:team".into())),
            ("sender".into(), Value::String("bob".into())),
            (
                "client_msg_id".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
            ("ts_ms".into(), Value::Long(2001)),
            ("origin_cluster".into(), Value::String("west".into())),
            ("origin_node".into(), Value::Union(0, Box::new(Value::Null))),
            (
                "origin_session".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
            ("trusted".into(), Value::Boolean(true)),
            ("body".into(), read_mark_body()),
        ]),
    );
    assert!(SchemaCompatibility::can_read(&v1, INGRESS.current).is_ok());
    let event = decode_ingress(&record).unwrap();
    assert_eq!(event.origin_cluster, "west");
    assert!(event.trusted);
    assert_eq!(event.body, EventBody::ReadCursorMoved { seq: 4 });

    // and the mute event itself round-trips with the current schemas
    let mut muted = event.clone();
    muted.body = EventBody::ConversationMuted { muted: true };
    assert_eq!(
        decode_ingress(&chorus_schemas::encode_ingress(&muted).unwrap()).unwrap(),
        muted
    );
}

/// A message written before `chorus.MessageSent` gained `reply_to`, `mentions` and
/// `forwarded_from` (envelopes v5 / v4, which inline that record's v1) decodes as a plain
/// message; so does one in every older envelope.
#[test]
fn messages_written_before_replies_decode_as_plain_messages() {
    let message_v1 = || {
        Value::Union(
            0,
            Box::new(Value::Record(vec![(
                "text".into(),
                Value::String("你好 old".into()),
            )])),
        )
    };
    for timeline_json in [
        include_str!("../avro/history/timeline_event.v2.avsc"),
        include_str!("../avro/history/timeline_event.v4.avsc"),
        include_str!("../avro/history/timeline_event.v5.avsc"),
    ] {
        let (schema, record) = record_of(timeline_json, sequenced_message(7, message_v1()));
        assert!(SchemaCompatibility::can_read(&schema, TIMELINE.current).is_ok());
        assert_eq!(
            decode_timeline(&record).unwrap().body,
            EventBody::message("你好 old")
        );
    }
    let (schema, record) = record_of(
        include_str!("../avro/history/ingress_event.v4.avsc"),
        Value::Record(vec![
            ("event_id".into(), Value::String("e12".into())),
            ("conversation".into(), Value::String("g:team".into())),
            ("sender".into(), Value::String("bob".into())),
            (
                "client_msg_id".into(),
                Value::Union(1, Box::new(Value::String("c12".into()))),
            ),
            ("ts_ms".into(), Value::Long(3001)),
            ("origin_cluster".into(), Value::String("west".into())),
            ("origin_node".into(), Value::Union(0, Box::new(Value::Null))),
            (
                "origin_session".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
            ("trusted".into(), Value::Boolean(false)),
            ("body".into(), message_v1()),
        ]),
    );
    assert!(SchemaCompatibility::can_read(&schema, INGRESS.current).is_ok());
    assert_eq!(
        decode_ingress(&record).unwrap().body,
        EventBody::message("你好 old")
    );
}

#[test]
fn envelopes_written_before_the_reaction_event_decode_with_the_current_schemas() {
    check_older_envelopes(
        include_str!("../avro/history/timeline_event.v6.avsc"),
        include_str!("../avro/history/ingress_event.v5.avsc"),
    );
}

#[test]
fn envelopes_written_before_the_group_role_events_decode_with_the_current_schemas() {
    check_older_envelopes(
        include_str!("../avro/history/timeline_event.v7.avsc"),
        include_str!("../avro/history/ingress_event.v6.avsc"),
    );
}

#[test]
fn envelopes_written_before_the_retention_event_decode_with_the_current_schemas() {
    check_older_envelopes(
        include_str!("../avro/history/timeline_event.v8.avsc"),
        include_str!("../avro/history/ingress_event.v7.avsc"),
    );
}

#[test]
fn envelopes_written_before_attachments_decode_with_the_current_schemas() {
    check_older_envelopes(
        include_str!("../avro/history/timeline_event.v9.avsc"),
        include_str!("../avro/history/ingress_event.v8.avsc"),
    );
}

/// A message written before `chorus.MessageSent` gained `attachment` (envelope v9, which
/// inlines that record's v2) keeps its reply, mentions and origin, and carries no attachment.
#[test]
fn messages_written_before_attachments_keep_their_fields() {
    let (_, record) = record_of(
        include_str!("../avro/history/timeline_event.v9.avsc"),
        sequenced_message(
            5,
            Value::Union(
                0,
                Box::new(Value::Record(vec![
                    ("text".into(), Value::String("@carol see 3".into())),
                    ("reply_to".into(), Value::Union(1, Box::new(Value::Long(3)))),
                    (
                        "forwarded_from".into(),
                        Value::Union(0, Box::new(Value::Null)),
                    ),
                    (
                        "mentions".into(),
                        Value::Array(vec![Value::String("carol".into())]),
                    ),
                ])),
            ),
        ),
    );
    let event = decode_timeline(&record).unwrap();
    assert_eq!(
        event.body,
        EventBody::MessageSent(chorus_schemas::Message {
            text: "@carol see 3".into(),
            reply_to: Some(3),
            mentions: vec!["carol".into()],
            forwarded_from: None,
            attachment: None,
        })
    );
}

/// A timeline envelope of seq `seq` in `g:team` from bob, with `body` (a message body union).
fn sequenced_message(seq: i64, body: Value) -> Value {
    Value::Record(vec![
        ("conversation".into(), Value::String("g:team".into())),
        ("seq".into(), Value::Union(1, Box::new(Value::Long(seq)))),
        ("event_id".into(), Value::String(format!("e{seq}"))),
        ("sender".into(), Value::String("bob".into())),
        ("ts_ms".into(), Value::Long(3000)),
        ("origin_cluster".into(), Value::String("east".into())),
        (
            "client_msg_id".into(),
            Value::Union(0, Box::new(Value::Null)),
        ),
        ("ingress_offset".into(), Value::Long(41)),
        ("body".into(), body),
    ])
}
