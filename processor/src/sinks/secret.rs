//! A connector's credentials as its pods see them: the mounted Secret, one file per key.

use std::path::{Path, PathBuf};

use crate::runtime::sink::SinkError;

/// The files of a mounted Secret.
#[derive(Debug, Clone)]
pub struct SecretFiles {
    dir: PathBuf,
}

impl SecretFiles {
    /// The Secret mounted at `dir`.
    pub fn new(dir: &Path) -> Self {
        SecretFiles {
            dir: dir.to_path_buf(),
        }
    }

    /// The value of `key`, without a trailing line break; `None` when it is missing.
    pub fn get(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(key))
            .ok()
            .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
    }

    /// The value of `key`, or a fatal error naming the file looked for.
    pub fn need(&self, key: &str) -> Result<String, SinkError> {
        self.get(key).ok_or_else(|| {
            SinkError::Fatal(format!(
                "the credentials have no {key} (looked for {})",
                self.dir.join(key).display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_files_and_a_missing_one_is_named() {
        let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("user"), "sluice\n").unwrap();
        let s = SecretFiles::new(&dir);
        assert_eq!(s.get("user").as_deref(), Some("sluice"));
        assert_eq!(s.get("password"), None);
        let err = s.need("host").unwrap_err().to_string();
        assert!(err.contains("no host") && err.contains("host"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
