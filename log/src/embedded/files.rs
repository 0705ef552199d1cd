//! Small filesystem helpers: atomic file replacement, directory syncs and safe file names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::LogError;

/// Longest topic name, as in Kafka, so topics created here also fit a broker.
const MAX_TOPIC_NAME_CHARS: usize = 249;
/// Longest encoded group file stem; keeps `<stem>.json.tmp` under the usual 255-byte name limit.
const MAX_GROUP_FILE_STEM_BYTES: usize = 200;

/// Replaces `path` with `contents` so a reader (or a restart) sees either the old or the new
/// file, never a mix: write a temporary sibling, fsync it, rename it over `path`, fsync the
/// folder so the rename itself is durable.
pub(super) fn write_file_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temporary_name = path.as_os_str().to_owned();
    temporary_name.push(".tmp");
    let temporary_path = Path::new(&temporary_name);
    let mut temporary_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temporary_path)?;
    temporary_file.write_all(contents)?;
    temporary_file.sync_all()?;
    drop(temporary_file);
    fs::rename(temporary_path, path)?;
    sync_parent_dir(path)
}

/// Makes the creation, removal or renaming of entries in `path`'s folder durable.
pub(super) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    sync_dir(parent)
}

/// Makes the entries of a folder durable (fsync on the folder itself).
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether `topic` is a legal topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, neither `.`
/// nor `..` (Kafka's rule, which also makes it a safe folder name).
/// The name of a numbered file (a partition segment by its base offset, a WAL segment by its
/// sequence): the number zero-padded to 20 digits, so names sort as numbers.
pub(super) fn numbered_file_name(number: u64, extension: &str) -> String {
    format!("{number:020}.{extension}")
}

/// Creates the empty numbered file and makes its folder entry durable.
pub(super) fn create_numbered_file(dir: &Path, number: u64, extension: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join(numbered_file_name(number, extension)))?;
    sync_dir(dir)?;
    Ok(file)
}

/// The numbers of the files in `dir` with this extension, ascending. Other files are ignored;
/// a file with the extension but no number is ignored with a warning.
pub(super) fn list_numbered_files(dir: &Path, extension: &str) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|found| found.to_str()) != Some(extension) {
            continue;
        }
        let parsed = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| stem.parse().ok());
        match parsed {
            Some(number) => numbers.push(number),
            None => {
                tracing::warn!(file = %path.display(), "ignoring unexpected file in a log folder")
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

pub(super) fn is_legal_topic_name(topic: &str) -> bool {
    if topic.is_empty() || topic.len() > MAX_TOPIC_NAME_CHARS || topic == "." || topic == ".." {
        return false;
    }
    topic
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

/// Checks a topic name before creating it.
pub(super) fn validate_topic_name(topic: &str) -> Result<(), LogError> {
    if is_legal_topic_name(topic) {
        return Ok(());
    }
    Err(LogError::Backend(format!(
        "invalid topic name {topic:?}: use 1 to {MAX_TOPIC_NAME_CHARS} characters of \
         [a-zA-Z0-9._-], not \".\" or \"..\""
    )))
}

/// The file stem holding a group's committed offsets: the group name with every byte outside
/// `[A-Za-z0-9_-]` percent-encoded, so any group name maps to one safe, distinct file name.
pub(super) fn group_file_stem(group: &str) -> Result<String, LogError> {
    if group.is_empty() {
        return Err(LogError::Backend(
            "consumer group name must not be empty".to_owned(),
        ));
    }
    let mut stem = String::with_capacity(group.len());
    for byte in group.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            stem.push(char::from(byte));
        } else {
            stem.push_str(&format!("%{byte:02X}"));
        }
    }
    if stem.len() > MAX_GROUP_FILE_STEM_BYTES {
        return Err(LogError::Backend(format!(
            "consumer group name {group:?} is too long for the embedded log \
             ({} bytes once encoded, at most {MAX_GROUP_FILE_STEM_BYTES})",
            stem.len()
        )));
    }
    Ok(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(is_legal_topic_name("chorus.ingress"));
        assert!(is_legal_topic_name("a_b-C.9"));
        assert!(!is_legal_topic_name(""));
        assert!(!is_legal_topic_name("."));
        assert!(!is_legal_topic_name(".."));
        assert!(!is_legal_topic_name("a/b"));
        assert!(!is_legal_topic_name("a b"));
        assert!(!is_legal_topic_name(&"x".repeat(250)));
        assert!(is_legal_topic_name(&"x".repeat(249)));
    }

    #[test]
    fn group_file_stems_are_safe_and_distinct() {
        assert_eq!(group_file_stem("router").unwrap(), "router");
        assert_eq!(group_file_stem("a.b/c").unwrap(), "a%2Eb%2Fc");
        assert_eq!(group_file_stem("..").unwrap(), "%2E%2E");
        assert_ne!(
            group_file_stem("a%2E").unwrap(),
            group_file_stem("a.").unwrap()
        );
        assert!(group_file_stem("").is_err());
        assert!(group_file_stem(&"g".repeat(201)).is_err());
    }

    #[test]
    fn atomic_write_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        write_file_atomically(&path, b"first version, rather long").unwrap();
        write_file_atomically(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(!dir.path().join("offsets.json.tmp").exists());
    }
}
