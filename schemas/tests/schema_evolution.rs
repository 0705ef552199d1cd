//! Data written with an older envelope schema stays readable after a compatible change.
//!
//! `history/timeline_event.v1.avsc` is the timeline envelope before `origin_cluster` was added;
//! a record written with it must decode with the current schema, the new field taking its default.

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use chorus_schemas::codec::{SINGLE_OBJECT_MARKER, TIMELINE, self_contained_schema_json};
use chorus_schemas::{EventBody, decode_timeline};

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
    assert_eq!(event.body, EventBody::MessageSent { text: "old".into() });
}
