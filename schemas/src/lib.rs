//! Chorus event schemas: the Avro `.avsc` files under `schemas/avro/`, the Rust types they describe,
//! and the codec between them.
//!
//! Invariants:
//! - the `.avsc` files are the source of truth; [`codec`] parses them at start-up and every record
//!   on a topic is written with Avro *single-object encoding* (`C3 01`, the writer schema's 8-byte
//!   CRC-64-AVRO fingerprint little-endian, then the Avro datum);
//! - a reader resolves every writer schema it knows (the current ones and those under
//!   `schemas/avro/history/`) to the current reader schema, so data written before a compatible
//!   schema change stays readable;
//! - the Rust types in [`event`] convert to and from Avro values by hand, field by field, so a
//!   mismatch between the types and the `.avsc` files is a decoding error caught by the tests, never
//!   a silent default.

pub mod codec;
pub mod event;
pub mod roles;

pub use codec::{CodecError, decode_ingress, decode_timeline, encode_ingress, encode_timeline};
pub use event::{
    Attachment, EventBody, EventKind, ForwardOrigin, IngressEvent, Message, Role, TimelineEvent,
};
pub use roles::Roles;
