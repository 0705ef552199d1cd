//! Where a node keeps its files under its data directory (`data_dir`): the embedded log, the
//! history store, the search index, the dev-mode secrets, the record of a running node's URL,
//! and the lock that lets one process at a time hold the directory.
//!
//! Every path under the data directory is named here and nowhere else; the lock is an OS file
//! lock on `LOCK`, held while the returned file is open (a crashed process releases it).

use std::fs::File;
use std::path::{Path, PathBuf};

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataLayoutError {
    #[error("creating data directory {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the lock file of {path}")]
    LockFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another chorus process (stop it first)")]
    InUse { path: String },
}

/// Where each store lives under the data directory.
#[derive(Debug, Clone)]
pub struct DataLayout {
    pub root: PathBuf,
}

impl DataLayout {
    pub fn new(root: &Path) -> Self {
        DataLayout {
            root: root.to_path_buf(),
        }
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }

    pub fn history(&self) -> PathBuf {
        self.root.join("history.redb")
    }

    pub fn search(&self) -> PathBuf {
        self.root.join("search")
    }

    /// Where a projection named `projection` is rebuilt beside the live one (`chorus replay`).
    pub fn rebuild(&self, projection: &str) -> PathBuf {
        self.root.join(format!("{projection}.rebuild"))
    }

    /// Where the live projection named `projection` is moved while a rebuilt one is installed.
    pub fn set_aside(&self, projection: &str) -> PathBuf {
        self.root.join(format!("{projection}.old"))
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join("LOCK")
    }

    /// The dev-mode JWT secret generated when none is configured.
    pub fn dev_secret(&self) -> PathBuf {
        self.root.join("dev-jwt-secret")
    }

    /// The dev-mode business API key generated when none is configured.
    pub fn dev_api_key(&self) -> PathBuf {
        self.root.join("dev-api-key")
    }

    /// Where a running node records its URL, so `chorus replay` can ask it.
    pub fn running_file(&self) -> PathBuf {
        self.root.join("serve.json")
    }

    /// The URL of the node running on this data directory, if one recorded it.
    pub fn running_url(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.running_file()).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["url"].as_str().map(str::to_owned)
    }

    /// Whether a process holds the data directory's lock.
    pub fn in_use(&self) -> bool {
        let Ok(file) = File::create(self.lock()) else {
            return false;
        };
        file.try_lock().is_err()
    }

    /// Takes the data directory's lock: one process at a time. Held while the file is open.
    pub fn lock_exclusive(&self) -> Result<File, DataLayoutError> {
        let path = self.root.display().to_string();
        std::fs::create_dir_all(&self.root).map_err(|source| DataLayoutError::Create {
            path: path.clone(),
            source,
        })?;
        let file = File::create(self.lock()).map_err(|source| DataLayoutError::LockFile {
            path: path.clone(),
            source,
        })?;
        file.try_lock()
            .map_err(|_| DataLayoutError::InUse { path })?;
        Ok(file)
    }
}
