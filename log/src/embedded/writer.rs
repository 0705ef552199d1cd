//! The writer thread: group commit of every pending append.
//!
//! Appenders send an [`AppendRequest`] over a bounded channel and await its oneshot reply. The
//! writer takes the first request, then every request already queued (up to `max_batch_bytes`),
//! stages them all (assigning offsets in file order), appends one write-ahead log entry per record
//! to the WAL with one `pwrite` and **one `fdatasync` however many partitions the batch touched**
//! (`wal.rs`), then hands each touched partition its frames (kept pending in memory and written in
//! larger `pwrite`s, not synced: the WAL holds the records; `partition.rs`), publishes the records
//! to readers, and only then replies to every request of the batch. While it syncs, new requests
//! queue up and form the next batch, so the number of syncs follows the disk, not the load: there
//! is no fixed delay, and a batch under load holds many appends. Once the WAL segment is full, the
//! writer checkpoints: it syncs the partition files written since the last checkpoint (in parallel,
//! on a pool of helper threads) and starts a new WAL segment. When the writer stops without a
//! failure it syncs them too and deletes the WAL.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use tokio::sync::{mpsc, oneshot};

use super::partition::{PartitionLog, StagedAppend};
use super::wal::Wal;
use crate::{LogError, NewRecord, Offset};

/// Appends queued for the writer before appenders wait for room (back-pressure).
const REQUEST_QUEUE_CAPACITY: usize = 8192;
/// Most threads syncing partition files at a checkpoint (the writer plus its helpers).
const MAX_PARALLEL_SYNCS: usize = 16;

/// One `append`/`append_to` call, as the writer sees it.
pub(super) struct AppendRequest {
    /// The records of the call, grouped by partition.
    pub(super) batches: Vec<(Arc<PartitionLog>, Vec<NewRecord>)>,
    /// Encoded size of all records, counted against the group-commit batch cap.
    pub(super) encoded_bytes: usize,
    /// Where the offsets go (one list per entry of `batches`) once everything is durable.
    pub(super) reply: oneshot::Sender<Result<Vec<Vec<Offset>>, LogError>>,
}

/// State shared between the writer thread and the log.
#[derive(Default)]
pub(super) struct WriterShared {
    /// Set when a write or sync failed: the files may no longer match what was acknowledged
    /// (after a failed fsync the kernel may have dropped the dirty pages), so every later append
    /// fails until a restart re-scans the files.
    pub(super) failure: OnceLock<String>,
    /// Group commits done.
    batches: AtomicU64,
    /// Records made durable.
    records: AtomicU64,
    /// File syncs issued.
    syncs: AtomicU64,
    /// Checkpoints done.
    checkpoints: AtomicU64,
}

/// Counters of the writer, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Group commits done (each makes one `fdatasync`, of the write-ahead log).
    pub batches: u64,
    /// Records made durable.
    pub records: u64,
    /// `fdatasync` calls on files issued by the writer: one per group commit, plus those of
    /// checkpoints (one per partition file written since the previous one) and of segment rolls
    /// (the sealed segment). Folder syncs (file creation and deletion) are not counted.
    pub syncs: u64,
    /// Checkpoints done (partition files synced, the write-ahead log restarted).
    pub checkpoints: u64,
}

impl WriterShared {
    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
        }
    }
}

/// Starts the writer thread, which owns the WAL. It exits once every sender is dropped and the
/// queue is drained, retiring the WAL (partition files synced, WAL deleted) unless it failed.
pub(super) fn spawn_writer(
    max_batch_bytes: usize,
    wal: Wal,
    shared: Arc<WriterShared>,
) -> io::Result<(mpsc::Sender<AppendRequest>, JoinHandle<()>)> {
    let (sender, receiver) = mpsc::channel(REQUEST_QUEUE_CAPACITY);
    let sync_pool = SyncPool::start(MAX_PARALLEL_SYNCS - 1)?;
    let thread = std::thread::Builder::new()
        .name("chorus-log-writer".to_owned())
        .spawn(move || run_writer(receiver, max_batch_bytes, wal, &sync_pool, &shared))?;
    Ok((sender, thread))
}

fn run_writer(
    mut receiver: mpsc::Receiver<AppendRequest>,
    max_batch_bytes: usize,
    mut wal: Wal,
    sync_pool: &SyncPool,
    shared: &WriterShared,
) {
    let mut batch = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        let mut batch_bytes = first.encoded_bytes;
        batch.push(first);
        while batch_bytes < max_batch_bytes {
            let Ok(request) = receiver.try_recv() else {
                break;
            };
            batch_bytes += request.encoded_bytes;
            batch.push(request);
        }
        if let Some(reason) = shared.failure.get() {
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(failed_log_error(reason)));
            }
            continue;
        }
        group_commit(&mut batch, &mut wal, sync_pool, shared);
    }
    if shared.failure.get().is_some() {
        tracing::debug!("log writer stopped after a failure; the WAL is kept for the next open");
        return;
    }
    match wal.retire(|files| sync_pool.sync_all(files)) {
        Ok(synced) => {
            shared.syncs.fetch_add(synced, Ordering::Relaxed);
            tracing::debug!("log writer stopped; partition files synced, WAL deleted");
        }
        Err(error) => {
            // Nothing is lost: whatever the WAL still holds is replayed on the next open.
            tracing::error!(error = %error, "retiring the write-ahead log on shutdown failed");
        }
    }
}

/// The error of appends refused after a write failure.
pub(super) fn failed_log_error(reason: &str) -> LogError {
    LogError::Backend(format!(
        "log writer failed earlier ({reason}); restart to recover"
    ))
}

/// Makes every request of the batch durable and replies to each; checkpoints if the WAL is full.
fn group_commit(
    batch: &mut Vec<AppendRequest>,
    wal: &mut Wal,
    sync_pool: &SyncPool,
    shared: &WriterShared,
) {
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        });
    let mut staged: Vec<StagedAppend> = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    let mut record_count = 0u64;
    let mut outcome: io::Result<()> = Ok(());
    for request in batch.drain(..) {
        let mut offsets = Vec::with_capacity(request.batches.len());
        for (partition, records) in request.batches {
            if outcome.is_err() {
                break;
            }
            record_count += records.len() as u64;
            let existing = staged
                .iter()
                .position(|entry| Arc::ptr_eq(&entry.partition, &partition));
            let slot = match existing {
                Some(slot) => slot,
                None => match partition.begin_staging() {
                    Ok(entry) => {
                        if entry.synced_sealed_segment {
                            shared.syncs.fetch_add(1, Ordering::Relaxed);
                        }
                        staged.push(entry);
                        staged.len() - 1
                    }
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                },
            };
            offsets.push(staged[slot].push(records, timestamp_ms));
        }
        replies.push((request.reply, offsets));
    }
    let outcome = outcome.and_then(|()| write_durably(&staged, wal, shared));
    if let Err(error) = outcome {
        let reason = error.to_string();
        tracing::error!(error = %error, "log write failed; refusing further appends until restart");
        let _ = shared.failure.set(reason.clone());
        for (reply, _) in replies {
            let _ = reply.send(Err(LogError::Io(io::Error::new(
                error.kind(),
                reason.clone(),
            ))));
        }
        return;
    }
    for entry in staged {
        entry.publish();
    }
    shared.batches.fetch_add(1, Ordering::Relaxed);
    shared.records.fetch_add(record_count, Ordering::Relaxed);
    for (reply, offsets) in replies {
        let _ = reply.send(Ok(offsets));
    }
    if wal.wants_checkpoint() {
        match wal.checkpoint(|files| sync_pool.sync_all(files)) {
            Ok(synced) => {
                shared.syncs.fetch_add(synced, Ordering::Relaxed);
                shared.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                // What was acknowledged is in the WAL, which is kept; but the partition files or
                // the WAL folder are in an unknown state, so stop as after a failed write.
                let reason = error.to_string();
                tracing::error!(
                    error = %error,
                    "log checkpoint failed; refusing further appends until restart"
                );
                let _ = shared.failure.set(reason);
            }
        }
    }
}

/// Appends the batch's WAL entries with one `pwrite` and one `fdatasync`, then hands each staged
/// partition its frames (pending in memory, written in larger `pwrite`s, synced at the next
/// checkpoint).
fn write_durably(staged: &[StagedAppend], wal: &mut Wal, shared: &WriterShared) -> io::Result<()> {
    let mut entries = Vec::new();
    for entry in staged {
        entry.encode_wal_entries(&mut entries);
    }
    wal.append(&entries)?;
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    for entry in staged {
        entry.partition.write_staged(entry)?;
        wal.mark_dirty(&entry.partition);
    }
    Ok(())
}

/// Threads that `fdatasync` partition files in parallel at a checkpoint: on virtual and network
/// disks a sync is mostly waiting, and concurrent syncs share the filesystem's journal commits,
/// so syncing 16 files at once takes little longer than syncing one.
struct SyncPool {
    /// Queue of files to sync, shared by the helper threads; dropped to stop them.
    jobs: Option<std::sync::mpsc::Sender<SyncJob>>,
    /// The helper threads, joined when the pool is dropped.
    helpers: Vec<JoinHandle<()>>,
}

/// One file to sync for one group commit.
struct SyncJob {
    /// The file.
    file: Arc<File>,
    /// The group commit's progress, updated when this sync ends.
    progress: Arc<SyncProgress>,
}

/// Progress of the syncs of one group commit.
struct SyncProgress {
    /// Counts and errors, updated by whoever finishes a sync.
    state: Mutex<SyncState>,
    /// Signalled when the last sync ends.
    finished: Condvar,
}

/// What is known about the syncs of one group commit so far.
struct SyncState {
    /// Syncs not finished yet.
    running: usize,
    /// The first sync error, reported for the whole group commit.
    first_error: Option<io::Error>,
}

impl SyncProgress {
    fn complete(&self, outcome: io::Result<()>) {
        let mut state = self.state.lock();
        state.running -= 1;
        if let Err(error) = outcome {
            state.first_error.get_or_insert(error);
        }
        if state.running == 0 {
            self.finished.notify_all();
        }
    }
}

impl SyncPool {
    fn start(helper_count: usize) -> io::Result<SyncPool> {
        let (jobs, receiver) = std::sync::mpsc::channel::<SyncJob>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut helpers = Vec::with_capacity(helper_count);
        for helper in 0..helper_count {
            let receiver = Arc::clone(&receiver);
            let thread = std::thread::Builder::new()
                .name(format!("chorus-log-sync-{helper}"))
                .spawn(move || {
                    loop {
                        let job = receiver.lock().recv();
                        let Ok(job) = job else {
                            return;
                        };
                        job.progress.complete(job.file.sync_data());
                    }
                })?;
            helpers.push(thread);
        }
        Ok(SyncPool {
            jobs: Some(jobs),
            helpers,
        })
    }

    /// Syncs every file (the calling thread takes one itself) and returns once all are done.
    fn sync_all(&self, mut files: Vec<Arc<File>>) -> io::Result<()> {
        let Some(own_file) = files.pop() else {
            return Ok(());
        };
        let progress = Arc::new(SyncProgress {
            state: Mutex::new(SyncState {
                running: files.len() + 1,
                first_error: None,
            }),
            finished: Condvar::new(),
        });
        for file in files {
            let job = SyncJob {
                file,
                progress: Arc::clone(&progress),
            };
            let unsent = match &self.jobs {
                Some(jobs) => jobs.send(job).err().map(|error| error.0),
                None => Some(job),
            };
            // Only reachable if every helper is gone: sync here instead.
            if let Some(job) = unsent {
                job.progress.complete(job.file.sync_data());
            }
        }
        progress.complete(own_file.sync_data());
        let mut state = progress.state.lock();
        while state.running > 0 {
            progress.finished.wait(&mut state);
        }
        match state.first_error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for SyncPool {
    fn drop(&mut self) {
        self.jobs.take();
        for helper in self.helpers.drain(..) {
            if helper.join().is_err() {
                tracing::error!("log sync helper thread panicked");
            }
        }
    }
}
