//! Fuzz target of the `ingress`/`timeline` Avro decoder (`schemas/src/codec.rs`).
//!
//! Guarantees checked on every input: decoding arbitrary bytes (raw, or a valid encoding
//! with flipped, replaced, inserted, removed or truncated bytes) returns a value or a
//! `CodecError`, never panics; every generated event encodes and decodes to itself (or is refused
//! by the encoder for a `u64` beyond Avro's `long`); and whatever the decoder accepts encodes
//! again to bytes that decode to the same event.
//!
//! Under `cargo test` each target runs a bounded number of random inputs (seconds); the long
//! run is described in docs/FUZZING.md (`BOLERO_RANDOM_ITERATIONS=…` on stable, or
//! `cargo bolero test` with libFuzzer on nightly).

use bolero::{TypeGenerator, check};
use chorus_schemas::codec::SINGLE_OBJECT_MARKER;
use chorus_schemas::{
    EventBody, IngressEvent, TimelineEvent, decode_ingress, decode_timeline, encode_ingress,
    encode_timeline,
};

/// Inputs of one short run under `cargo test`.
const SHORT_RUN_ITERATIONS: usize = 20_000;

/// The event body to encode, chosen by the fuzzer.
#[derive(Debug, Clone, TypeGenerator)]
enum BodySeed {
    Sent(String),
    /// A message with a reply, mentions and a forward origin (conversation, seq, sender).
    Rich(
        String,
        Option<u64>,
        Vec<String>,
        Option<(String, u64, String)>,
    ),
    /// A message carrying a file (text, id, name, size, type).
    Attached(String, String, String, u32, String),
    Edited(u64, String),
    Recalled(u64),
    Created(Option<String>, Vec<String>),
    Added(Vec<String>),
    Removed(Vec<String>),
    Read(u64),
}

impl BodySeed {
    /// Whether every number of the body fits Avro's `long` (the encoder refuses the others).
    fn fits_avro_long(&self) -> bool {
        match self {
            BodySeed::Edited(seq, _) | BodySeed::Recalled(seq) | BodySeed::Read(seq) => {
                i64::try_from(*seq).is_ok()
            }
            BodySeed::Rich(_, reply_to, _, origin) => {
                reply_to.is_none_or(|seq| i64::try_from(seq).is_ok())
                    && origin
                        .as_ref()
                        .is_none_or(|(_, seq, _)| i64::try_from(*seq).is_ok())
            }
            _ => true,
        }
    }

    fn body(&self) -> EventBody {
        match self.clone() {
            BodySeed::Sent(text) => EventBody::message(text),
            BodySeed::Rich(text, reply_to, mentions, origin) => {
                EventBody::MessageSent(chorus_schemas::Message {
                    text,
                    reply_to,
                    mentions,
                    forwarded_from: origin.map(|(conversation, seq, sender)| {
                        Box::new(chorus_schemas::ForwardOrigin {
                            conversation,
                            seq,
                            sender,
                        })
                    }),
                    attachment: None,
                })
            }
            BodySeed::Attached(text, id, name, size, content_type) => {
                EventBody::MessageSent(chorus_schemas::Message {
                    text,
                    attachment: Some(Box::new(chorus_schemas::Attachment {
                        id,
                        name,
                        size: u64::from(size),
                        content_type,
                    })),
                    ..chorus_schemas::Message::default()
                })
            }
            BodySeed::Edited(target_seq, text) => EventBody::MessageEdited { target_seq, text },
            BodySeed::Recalled(target_seq) => EventBody::MessageRecalled { target_seq },
            BodySeed::Created(title, members) => EventBody::ConversationCreated { title, members },
            BodySeed::Added(members) => EventBody::MembersAdded { members },
            BodySeed::Removed(members) => EventBody::MembersRemoved { members },
            BodySeed::Read(seq) => EventBody::ReadCursorMoved { seq },
        }
    }
}

/// One change to an encoded value.
#[derive(Debug, Clone, TypeGenerator)]
enum Mutation {
    FlipBit { at: u16, bit: u8 },
    SetByte { at: u16, byte: u8 },
    Truncate { at: u16 },
    Insert { at: u16, bytes: Vec<u8> },
    Remove { at: u16, count: u8 },
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let position = |at: u16| usize::from(at) % bytes.len();
        match self {
            Mutation::FlipBit { at, bit } => {
                let index = position(*at);
                bytes[index] ^= 1 << (bit % 8);
            }
            Mutation::SetByte { at, byte } => {
                let index = position(*at);
                bytes[index] = *byte;
            }
            Mutation::Truncate { at } => bytes.truncate(position(*at)),
            Mutation::Insert {
                at,
                bytes: inserted,
            } => {
                let index = position(*at);
                bytes.splice(index..index, inserted.iter().copied());
            }
            Mutation::Remove { at, count } => {
                let start = position(*at);
                let end = (start + usize::from(*count)).min(bytes.len());
                bytes.drain(start..end);
            }
        }
    }
}

/// What one fuzz iteration does.
#[derive(Debug, Clone, TypeGenerator)]
enum CodecInput {
    /// Bytes as they might arrive on a topic from anyone.
    Raw(Vec<u8>),
    /// The marker and a known fingerprint, then arbitrary datum bytes.
    KnownSchemaThenGarbage { timeline: bool, datum: Vec<u8> },
    /// A valid encoding of a generated event, then changed.
    Mutated(Box<MutatedEvent>),
}

/// A generated event, its encoding then changed by `mutations`.
#[derive(Debug, Clone, TypeGenerator)]
struct MutatedEvent {
    timeline: bool,
    strings: [String; 4],
    optional: Option<String>,
    numbers: (i64, u64, Option<u64>),
    trusted: bool,
    body: BodySeed,
    mutations: Vec<Mutation>,
}

fn ingress_event(
    strings: &[String; 4],
    optional: &Option<String>,
    ts_ms: i64,
    trusted: bool,
    body: EventBody,
) -> IngressEvent {
    IngressEvent {
        event_id: strings[0].clone(),
        conversation: strings[1].clone(),
        sender: strings[2].clone(),
        client_msg_id: optional.clone(),
        ts_ms,
        origin_cluster: strings[3].clone(),
        origin_node: optional.clone(),
        origin_session: None,
        trusted,
        body,
    }
}

fn timeline_event(
    strings: &[String; 4],
    optional: &Option<String>,
    numbers: (i64, u64, Option<u64>),
    body: EventBody,
) -> TimelineEvent {
    TimelineEvent {
        conversation: strings[1].clone(),
        seq: numbers.2,
        event_id: strings[0].clone(),
        sender: strings[2].clone(),
        ts_ms: numbers.0,
        origin_cluster: strings[3].clone(),
        client_msg_id: optional.clone(),
        ingress_offset: numbers.1,
        body,
    }
}

/// The strings of a small valid event: event id, conversation, sender, origin cluster.
fn small_event_strings() -> [String; 4] {
    ["e".into(), "g:x".into(), "a".into(), "local".into()]
}

/// A small valid ingress event carrying `body`.
fn small_ingress_event(body: EventBody) -> IngressEvent {
    ingress_event(&small_event_strings(), &None, 1, false, body)
}

/// A small valid timeline event carrying `body`, at seq 1.
fn small_timeline_event(body: EventBody) -> TimelineEvent {
    timeline_event(&small_event_strings(), &None, (1, 0, Some(1)), body)
}

/// Decodes as both kinds; anything accepted must survive a second encode/decode unchanged.
fn decode_checked(bytes: &[u8]) {
    if let Ok(event) = decode_ingress(bytes) {
        let again = encode_ingress(&event).expect("a decoded ingress event encodes again");
        assert_eq!(decode_ingress(&again).expect("re-encoded decodes"), event);
    }
    if let Ok(event) = decode_timeline(bytes) {
        let again = encode_timeline(&event).expect("a decoded timeline event encodes again");
        assert_eq!(decode_timeline(&again).expect("re-encoded decodes"), event);
    }
}

fn run_one(input: &CodecInput) {
    match input {
        CodecInput::Raw(bytes) => decode_checked(bytes),
        CodecInput::KnownSchemaThenGarbage { timeline, datum } => {
            let body = EventBody::ReadCursorMoved { seq: 1 };
            let valid = if *timeline {
                encode_timeline(&small_timeline_event(body)).expect("encodes")
            } else {
                encode_ingress(&small_ingress_event(body)).expect("encodes")
            };
            let mut bytes = valid[..SINGLE_OBJECT_MARKER.len() + 8].to_vec();
            bytes.extend_from_slice(datum);
            decode_checked(&bytes);
        }
        CodecInput::Mutated(mutated) => {
            let MutatedEvent {
                timeline,
                strings,
                optional,
                numbers,
                trusted,
                body,
                mutations,
            } = mutated.as_ref();
            // a u64 beyond i64::MAX has no Avro `long`: the encoder refuses it, never wraps it
            let mut bytes = if *timeline {
                let event = timeline_event(strings, optional, *numbers, body.body());
                let fits = body.fits_avro_long()
                    && i64::try_from(numbers.1).is_ok()
                    && numbers.2.is_none_or(|seq| i64::try_from(seq).is_ok());
                match encode_timeline(&event) {
                    Ok(bytes) => {
                        assert!(fits, "encoded a number beyond i64: {event:?}");
                        assert_eq!(decode_timeline(&bytes).expect("round trip"), event);
                        bytes
                    }
                    Err(error) => {
                        assert!(!fits, "refused a valid event ({error}): {event:?}");
                        return;
                    }
                }
            } else {
                let event = ingress_event(strings, optional, numbers.0, *trusted, body.body());
                match encode_ingress(&event) {
                    Ok(bytes) => {
                        assert!(body.fits_avro_long(), "encoded a seq beyond i64: {event:?}");
                        assert_eq!(decode_ingress(&bytes).expect("round trip"), event);
                        bytes
                    }
                    Err(error) => {
                        assert!(
                            !body.fits_avro_long(),
                            "refused a valid event ({error}): {event:?}"
                        );
                        return;
                    }
                }
            };
            for mutation in mutations {
                mutation.apply(&mut bytes);
            }
            decode_checked(&bytes);
        }
    }
}

#[test]
fn fuzz_avro_decoder() {
    check!()
        .with_type::<CodecInput>()
        .with_iterations(SHORT_RUN_ITERATIONS)
        .for_each(run_one);
}

/// Avro strings and arrays carry their length as a zig-zag varint: a huge or negative one right
/// after a valid fingerprint must be an error, not an allocation of that size or a panic.
#[test]
fn huge_and_negative_lengths_are_errors() {
    let valid = encode_timeline(&small_timeline_event(EventBody::message("x"))).unwrap();
    let header = &valid[..10];
    for varint in [
        vec![0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], // i64::MAX
        vec![0x01],                                                       // -1
        vec![
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
        ], // overlong
    ] {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&varint);
        assert!(decode_timeline(&bytes).is_err());
        assert!(decode_ingress(&bytes).is_err());
    }
}

/// Found by `fuzz_avro_decoder`: a body seq beyond `i64::MAX` (an `edit`, `recall` or `read`
/// frame may carry any u64) was cast to a negative Avro `long`, so the ingest node appended a
/// record the router could not decode (dead-lettered instead of answered). The encoder now
/// refuses it, as it does for the envelope's numbers.
#[test]
fn body_seqs_beyond_i64_are_refused_by_the_encoder() {
    let too_big = u64::MAX - 7;
    for body in [
        EventBody::MessageEdited {
            target_seq: too_big,
            text: "x".into(),
        },
        EventBody::MessageRecalled {
            target_seq: too_big,
        },
        EventBody::ReadCursorMoved { seq: too_big },
    ] {
        assert!(
            encode_ingress(&small_ingress_event(body.clone())).is_err(),
            "{body:?}"
        );
        assert!(encode_timeline(&small_timeline_event(body)).is_err());
    }
}
