//! `[attachments]`: files that messages carry (docs/protocol.md, "Attachments").

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, redacted};

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsSection {
    /// Where the files are kept:
    /// - empty (the default): `<data_dir>/attachments` for `chorus serve`; distributed ingest
    ///   nodes then have no store (each node's disk is its own) and answer `unavailable`;
    /// - `file:///path`: a directory every ingest node mounts;
    /// - `s3://bucket`: an S3-compatible object store (the `s3_*` keys).
    pub store: String,
    /// The S3 endpoint (`http://host:port`); empty: AWS's, for `s3_region`.
    pub s3_endpoint: String,
    pub s3_region: String,
    /// Credentials; better passed as `CHORUS_ATTACHMENTS_S3_ACCESS_KEY_ID` and
    /// `CHORUS_ATTACHMENTS_S3_SECRET_ACCESS_KEY`.
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Media types accepted, exactly (`application/pdf`) or by kind (`image/*`).
    pub types: Vec<String>,
    /// How long an upload URL stays valid after it was handed out.
    pub upload_expiry_secs: u64,
    /// Uploads one node receives at once; past it `unavailable` (retry).
    pub max_concurrent_uploads: usize,
}

impl std::fmt::Debug for AttachmentsSection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AttachmentsSection")
            .field("store", &self.store)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &redacted(&self.s3_secret_access_key),
            )
            .field("max_bytes", &self.max_bytes)
            .field("types", &self.types)
            .field("upload_expiry_secs", &self.upload_expiry_secs)
            .field("max_concurrent_uploads", &self.max_concurrent_uploads)
            .finish()
    }
}

impl Default for AttachmentsSection {
    fn default() -> Self {
        AttachmentsSection {
            store: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            max_bytes: 25 * 1024 * 1024,
            types: [
                "image/*",
                "video/*",
                "audio/*",
                "text/plain",
                "application/pdf",
                "application/zip",
                "application/octet-stream",
            ]
            .map(String::from)
            .to_vec(),
            upload_expiry_secs: 3_600,
            max_concurrent_uploads: 16,
        }
    }
}

/// Largest file a node may be configured to take: an upload must arrive within one request's
/// body deadline (`http.body_read_timeout_ms`).
const MAX_ATTACHMENT_BYTES: u64 = 1 << 30;

impl AttachmentsSection {
    /// Whether `media_type` is one of `types`.
    pub fn accepts(&self, media_type: &str) -> bool {
        self.types
            .iter()
            .any(|allowed| match allowed.strip_suffix("/*") {
                Some(kind) => media_type
                    .split_once('/')
                    .is_some_and(|(candidate, _)| candidate == kind),
                None => allowed == media_type,
            })
    }

    pub fn upload_expiry(&self) -> Duration {
        Duration::from_secs(self.upload_expiry_secs)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.store.is_empty()
            || self.store.starts_with("file:///")
            || self.store.starts_with("s3://"))
        {
            return Err(invalid(
                "attachments.store",
                "empty, file:///path or s3://bucket",
            ));
        }
        if self.store.starts_with("s3://")
            && self.store["s3://".len()..].trim_matches('/').is_empty()
        {
            return Err(invalid("attachments.store", "s3:// needs a bucket name"));
        }
        let endpoint = &self.s3_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            return Err(invalid("attachments.s3_endpoint", "an http(s):// URL"));
        }
        if self.max_bytes == 0 || self.max_bytes > MAX_ATTACHMENT_BYTES {
            return Err(invalid("attachments.max_bytes", "1 byte to 1 GiB"));
        }
        if self.types.is_empty() {
            return Err(invalid("attachments.types", "name at least one media type"));
        }
        if self.upload_expiry_secs == 0 {
            return Err(invalid(
                "attachments.upload_expiry_secs",
                "must be positive",
            ));
        }
        if self.max_concurrent_uploads == 0 {
            return Err(invalid(
                "attachments.max_concurrent_uploads",
                "must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_exactly_or_by_kind() {
        let section = AttachmentsSection {
            types: vec!["image/*".into(), "application/pdf".into()],
            ..AttachmentsSection::default()
        };
        assert!(section.accepts("image/png"));
        assert!(section.accepts("application/pdf"));
        assert!(!section.accepts("application/pdfx"));
        assert!(!section.accepts("imagex/png"));
        assert!(!section.accepts("text/html"));
    }

    #[test]
    fn stores_are_empty_file_or_s3() {
        for (store, ok) in [
            ("", true),
            ("file:///srv/chorus", true),
            ("s3://chorus-files", true),
            ("s3://", false),
            ("/srv/chorus", false),
            ("gs://bucket", false),
        ] {
            let section = AttachmentsSection {
                store: store.into(),
                ..AttachmentsSection::default()
            };
            assert_eq!(section.validate().is_ok(), ok, "{store}");
        }
    }
}
