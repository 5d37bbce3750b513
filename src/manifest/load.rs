//! Reading a model directory's manifest: its schema version, its fields, their ranges, and
//! the sha256 of every file it lists.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{checks, Manifest, MANIFEST_FILE, MAX_MANIFEST, SCHEMA_VERSION};
use crate::error::LoadError;

impl Manifest {
    /// Read `dir/manifest.json`, check its schema version, its shapes and every file's sha256.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join(MANIFEST_FILE);
        let text = read_regular(&path, MAX_MANIFEST)?;
        let raw: serde_json::Value =
            serde_json::from_slice(&text).map_err(|source| LoadError::ManifestJson { path: path.clone(), source })?;
        let found = raw.get("schema_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if found != SCHEMA_VERSION {
            return Err(LoadError::SchemaVersion { path, found, expected: SCHEMA_VERSION });
        }
        let manifest: Manifest = serde_path_to_error::deserialize(raw).map_err(|e| LoadError::Invalid {
            path: path.clone(),
            what: format!("field {}: {}", e.path(), e.inner()),
        })?;
        checks::check(&manifest).map_err(|what| LoadError::Invalid { path: path.clone(), what })?;
        for (file, sha) in manifest.files() {
            verify_sha256(&dir.join(file), sha)?;
        }
        Ok(manifest)
    }

    fn files(&self) -> Vec<(&str, &str)> {
        let mut files = vec![
            (self.tokenizer.file.as_str(), self.tokenizer.sha256.as_str()),
            (self.embeddings.file.as_str(), self.embeddings.sha256.as_str()),
        ];
        files.extend(self.weights.iter().map(|w| (w.file.as_str(), w.sha256.as_str())));
        files.extend(self.graphs.iter().map(|g| (g.file.as_str(), g.sha256.as_str())));
        files
    }
}

/// The file's sha256 must be `expected`; it must be a regular file (a FIFO or device would block or never end).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), LoadError> {
    let bytes = read_regular(path, u64::MAX)?;
    let actual = format!("{:x}", Sha256::digest(&bytes));
    if actual != expected {
        return Err(LoadError::Checksum { path: path.to_path_buf(), expected: expected.into(), actual });
    }
    Ok(())
}

/// The bytes of a regular file of at most `max` bytes. Opened without waiting (a FIFO would
/// wait for a writer), checked on the open descriptor (a symlink to a device or a FIFO is not
/// a regular file), read no further than `max`.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, LoadError> {
    let io = |source| LoadError::Io { path: path.to_path_buf(), source };
    let invalid = |what: String| LoadError::Invalid { path: path.to_path_buf(), what };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(invalid(format!("{} bytes; at most {max} are read", meta.len())));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("grew past {max} bytes while read")));
    }
    Ok(bytes)
}
