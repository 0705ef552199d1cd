//! Copies of one partition's index between nodes (a new search replica starts from a peer's
//! copy instead of indexing the whole partition from the log):
//!
//! - [`SearchIndex::snapshot_partition`] hard-links the files of the partition's last commit
//!   (the `meta.json` read once, and the files of the segments it names; segment files never
//!   change once written) into `<dir>/.snapshots/<id>/`, so the copy is consistent with the
//!   position in that commit's payload while the partition goes on indexing. A file collected by
//!   a merge between reading `meta.json` and linking it makes the attempt start over.
//! - [`SearchIndex::read_snapshot`] serves it a bounded chunk at a time;
//!   [`SearchIndex::drop_snapshot`] removes it (and snapshots older than [`SNAPSHOT_LIFETIME`]
//!   are removed when the next is taken, and all of them when the index is opened).
//! - [`SearchIndex::install_partition`] puts a received copy (in
//!   [`SearchIndex::incoming_dir`]) in place of the partition's index: it must open with this
//!   schema; it replaces the slot while holding the old index's writer lock, so no apply is lost
//!   (see `partition_writer`), and the projection continues from the copy's position.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use chorus_log::{Offset, PartitionId};
use serde::{Deserialize, Serialize};

use super::{SearchError, SearchIndex, partition_dir};

/// Where snapshots being served live, under the index's directory.
const SNAPSHOTS: &str = ".snapshots";
/// Where copies being received (and indexes just replaced) live.
const INCOMING: &str = ".incoming";
/// How long a snapshot may be read before the next one removes it.
pub const SNAPSHOT_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Largest chunk [`SearchIndex::read_snapshot`] returns.
pub const MAX_CHUNK_BYTES: u64 = 8 * 1024 * 1024;
/// Attempts at a consistent snapshot while merges collect files.
const SNAPSHOT_ATTEMPTS: u32 = 5;

/// A partition's index as of one commit, ready to be copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub id: String,
    pub partition: PartitionId,
    /// The position stored in that commit: the copy continues from there.
    pub position: Offset,
    pub files: Vec<SnapshotFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub name: String,
    pub bytes: u64,
}

fn io_error(what: impl std::fmt::Display, error: std::io::Error) -> SearchError {
    SearchError::Index(format!("{what}: {error}").into())
}

fn remove_dir(path: &Path) -> Result<(), SearchError> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error(format!("removing {}", path.display()), error))
        }
        _ => Ok(()),
    }
}

/// Removes the snapshots and copies in transit under `dir` (none survives a restart).
pub(super) fn clear_transit(dir: &Path) -> Result<(), SearchError> {
    remove_dir(&dir.join(SNAPSHOTS))?;
    remove_dir(&dir.join(INCOMING))
}

/// A name made of what snapshot ids and index file names are made of: never a path.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

/// The position in a `meta.json`'s payload, and the ids of the segments it names (as their
/// files are named: the uuid without dashes).
fn read_meta(meta: &[u8]) -> Result<(Offset, Vec<String>), String> {
    let parsed: serde_json::Value = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
    let position = match parsed["payload"].as_str() {
        Some(payload) => payload.parse::<Offset>().map_err(|e| e.to_string())?,
        None => 0,
    };
    let segments = parsed["segments"]
        .as_array()
        .ok_or("no segments in meta.json")?
        .iter()
        .map(|segment| {
            segment["segment_id"]
                .as_str()
                .map(|id| id.replace('-', ""))
                .ok_or("a segment without id")
        })
        .collect::<Result<_, _>>()?;
    Ok((position, segments))
}

/// Links the files of `source`'s last commit into `target`; `NotFound` when a merge collected
/// one meanwhile.
fn link_commit(source: &Path, target: &Path) -> std::io::Result<(Offset, Vec<SnapshotFile>)> {
    let meta = std::fs::read(source.join("meta.json"))?;
    let (position, segments) = read_meta(&meta).map_err(std::io::Error::other)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let of_a_segment = segments.iter().any(|segment| {
            name.strip_prefix(segment.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
        });
        if !of_a_segment {
            continue;
        }
        std::fs::hard_link(entry.path(), target.join(&name))?;
        let bytes = std::fs::metadata(target.join(&name))?.len();
        files.push(SnapshotFile { name, bytes });
    }
    std::fs::write(target.join("meta.json"), &meta)?;
    files.push(SnapshotFile {
        name: "meta.json".into(),
        bytes: meta.len() as u64,
    });
    Ok((position, files))
}

impl SearchIndex {
    fn snapshots_dir(&self) -> PathBuf {
        self.dir.join(SNAPSHOTS)
    }

    /// Takes a snapshot of `partition`'s last commit (see the module docs). Blocking.
    pub fn snapshot_partition(
        &self,
        partition: PartitionId,
    ) -> Result<PartitionSnapshot, SearchError> {
        self.slot(partition)?;
        self.drop_old_snapshots();
        let source = partition_dir(&self.dir, partition);
        for attempt in 0..SNAPSHOT_ATTEMPTS {
            let id = format!("p{partition}-{}-{attempt}", unique_suffix());
            let target = self.snapshots_dir().join(&id);
            std::fs::create_dir_all(&target)
                .map_err(|error| io_error(format!("creating {}", target.display()), error))?;
            match link_commit(&source, &target) {
                Ok((position, files)) => {
                    return Ok(PartitionSnapshot {
                        id,
                        partition,
                        position,
                        files,
                    });
                }
                Err(error) => {
                    remove_dir(&target)?;
                    if error.kind() != std::io::ErrorKind::NotFound {
                        return Err(io_error(
                            format!("snapshot of partition {partition}"),
                            error,
                        ));
                    }
                }
            }
        }
        Err(SearchError::Index(
            format!("partition {partition} kept merging during {SNAPSHOT_ATTEMPTS} snapshots")
                .into(),
        ))
    }

    fn drop_old_snapshots(&self) {
        let Ok(entries) = std::fs::read_dir(self.snapshots_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > SNAPSHOT_LIFETIME);
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Up to `length` (at most [`MAX_CHUNK_BYTES`]) bytes of `file` of snapshot `id` from
    /// `offset`; empty at the end. Blocking.
    pub fn read_snapshot(
        &self,
        id: &str,
        file: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, SearchError> {
        if !plain_name(id) || !plain_name(file) {
            return Err(SearchError::BadQuery("no such snapshot file".into()));
        }
        let path = self.snapshots_dir().join(id).join(file);
        let mut opened = std::fs::File::open(&path)
            .map_err(|_| SearchError::BadQuery(format!("no file {file} in snapshot {id}")))?;
        opened
            .seek(SeekFrom::Start(offset))
            .map_err(|error| io_error(path.display(), error))?;
        let mut chunk = Vec::new();
        opened
            .take(length.min(MAX_CHUNK_BYTES))
            .read_to_end(&mut chunk)
            .map_err(|error| io_error(path.display(), error))?;
        Ok(chunk)
    }

    /// Removes snapshot `id` (copied, or given up).
    pub fn drop_snapshot(&self, id: &str) -> Result<(), SearchError> {
        if !plain_name(id) {
            return Err(SearchError::BadQuery("no such snapshot".into()));
        }
        remove_dir(&self.snapshots_dir().join(id))
    }

    /// An empty directory to receive a copy of `partition` into.
    pub fn incoming_dir(&self, partition: PartitionId) -> Result<PathBuf, SearchError> {
        self.slot(partition)?;
        let dir = self
            .dir
            .join(INCOMING)
            .join(format!("p{partition}-{}", unique_suffix()));
        std::fs::create_dir_all(&dir)
            .map_err(|error| io_error(format!("creating {}", dir.display()), error))?;
        Ok(dir)
    }

    /// Puts the copy received in `from` (an [`SearchIndex::incoming_dir`]) in place of
    /// `partition`'s index and returns its position. Blocking.
    pub fn install_partition(
        &self,
        partition: PartitionId,
        from: &Path,
    ) -> Result<Offset, SearchError> {
        let slot = self.slot(partition)?;
        // Tantivy removes only the files it knows it made: name the copied ones, so that those
        // merged away later are collected too
        let mut names = Vec::new();
        for entry in std::fs::read_dir(from).map_err(|error| io_error(from.display(), error))? {
            let name = entry
                .map_err(|error| io_error(from.display(), error))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if plain_name(&name) {
                names.push(name);
            }
        }
        let managed = serde_json::to_vec(&names)
            .map_err(|error| SearchError::Index(error.to_string().into()))?;
        std::fs::write(from.join(".managed.json"), managed)
            .map_err(|error| io_error(from.display(), error))?;
        let current = slot.read().clone();
        // no apply runs on the replaced index from here on
        let _writer = current.writer.lock();
        let live = partition_dir(&self.dir, partition);
        let replaced = self
            .dir
            .join(INCOMING)
            .join(format!("replaced-p{partition}-{}", unique_suffix()));
        std::fs::rename(&live, &replaced)
            .map_err(|error| io_error(format!("moving {} aside", live.display()), error))?;
        std::fs::rename(from, &live)
            .map_err(|error| io_error(format!("moving the copy to {}", live.display()), error))?;
        let opened = match self.opener.open(&live) {
            Ok(opened) => opened,
            Err(error) => {
                // back to the index it had
                let _ = std::fs::rename(&live, from);
                let _ = std::fs::rename(&replaced, &live);
                return Err(error);
            }
        };
        let position = opened.position.load(Ordering::Acquire);
        *slot.write() = Arc::new(opened);
        // open searches keep their files (mapped) until they end
        let _ = std::fs::remove_dir_all(&replaced);
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meta_names_position_and_segments_as_files_are_named() {
        let meta = br#"{"segments":[{"segment_id":"67b6e9c6-8c9d-4562-ab6e-990b3d3dc3bf","max_doc":4,"deletes":null}],"opstamp":5,"payload":"42"}"#;
        let (position, segments) = read_meta(meta).unwrap();
        assert_eq!(position, 42);
        assert_eq!(
            segments,
            vec!["67b6e9c68c9d4562ab6e990b3d3dc3bf".to_owned()]
        );
    }

    #[test]
    fn snapshot_names_never_reach_outside_the_snapshot() {
        assert!(plain_name("p1-123-0"));
        assert!(plain_name("67b6e9c68c9d4562ab6e990b3d3dc3bf.idx"));
        for bad in ["", "..", "../p1", "a/b", ".managed.json", "p1/../../etc"] {
            assert!(!plain_name(bad), "{bad}");
        }
    }
}
