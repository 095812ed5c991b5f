//! Rewriting container mount paths to the directories the runner wrote the volumes to.
//!
//! A process cannot mount, so the runner writes each volume under the pod's work
//! directory and rewrites paths instead. The rule: in the command, args, env values and
//! working directory, every occurrence of a volumeMount's `mountPath` that stands as a
//! whole path prefix (preceded by the start or a character that cannot be part of a path
//! such as `=`, `:`, `,` or a space, and followed by the end, `/`, or such a character)
//! is replaced by the volume's directory (joined with `subPath` when set). The longest
//! mount path wins. The mapping is also given to the process as JSON in the env var
//! `SLUICE_PATH_REMAP` (`{"/etc/sluice": "/tmp/.../volumes/config"}`), for programs that
//! build paths themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The env var holding the mount-path mapping as a JSON object.
pub const PATH_REMAP_ENV: &str = "SLUICE_PATH_REMAP";

/// Mount path -> local directory.
#[derive(Debug, Clone, Default)]
pub struct PathRemap {
    /// Sorted longest mount path first.
    mounts: Vec<(String, PathBuf)>,
}

impl PathRemap {
    /// Builds the mapping; the root path and empty paths are ignored.
    pub fn new(mounts: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        let mut mounts: Vec<(String, PathBuf)> = mounts
            .into_iter()
            .map(|(m, p)| (m.trim_end_matches('/').to_string(), p))
            .filter(|(m, _)| m.starts_with('/') && m.len() > 1)
            .collect();
        mounts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        mounts.dedup_by(|a, b| a.0 == b.0);
        Self { mounts }
    }

    /// Rewrites every mount path in `input`.
    pub fn rewrite(&self, input: &str) -> String {
        if self.mounts.is_empty() {
            return input.to_string();
        }
        let mut out = String::with_capacity(input.len());
        let mut i = 0;
        let bytes = input.as_bytes();
        while i < input.len() {
            let at_boundary = i == 0 || !is_path_char(input[..i].chars().next_back());
            if at_boundary && bytes[i] == b'/' {
                let hit = self.mounts.iter().find(|(m, _)| {
                    input[i..].starts_with(m.as_str())
                        && ends_path(input[i + m.len()..].chars().next())
                });
                if let Some((m, host)) = hit {
                    out.push_str(&host.to_string_lossy());
                    i += m.len();
                    continue;
                }
            }
            let ch = input[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
        out
    }

    /// Rewrites a path.
    pub fn rewrite_path(&self, path: &Path) -> PathBuf {
        PathBuf::from(self.rewrite(&path.to_string_lossy()))
    }

    /// The mapping as the JSON object put in `SLUICE_PATH_REMAP`.
    pub fn to_json(&self) -> String {
        let map: BTreeMap<&str, String> = self
            .mounts
            .iter()
            .map(|(m, p)| (m.as_str(), p.to_string_lossy().into_owned()))
            .collect();
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_string())
    }
}

fn is_path_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '~' | '/'))
}

fn ends_path(next: Option<char>) -> bool {
    match next {
        None | Some('/') => true,
        Some(c) => !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '~')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remap() -> PathRemap {
        PathRemap::new([
            (
                "/etc/sluice/".to_string(),
                PathBuf::from("/tmp/pod/vol/config"),
            ),
            (
                "/etc/sluice/tls".to_string(),
                PathBuf::from("/tmp/pod/vol/tls"),
            ),
            ("/data".to_string(), PathBuf::from("/tmp/pod/vol/data")),
        ])
    }

    #[test]
    fn rewrites_whole_path_prefixes() {
        let r = remap();
        assert_eq!(
            r.rewrite("/etc/sluice/pipeline.yaml"),
            "/tmp/pod/vol/config/pipeline.yaml"
        );
        assert_eq!(r.rewrite("/etc/sluice"), "/tmp/pod/vol/config");
        assert_eq!(
            r.rewrite("--config=/etc/sluice/p.yaml"),
            "--config=/tmp/pod/vol/config/p.yaml"
        );
        assert_eq!(
            r.rewrite("a:/data,/data/x"),
            "a:/tmp/pod/vol/data,/tmp/pod/vol/data/x"
        );
    }

    #[test]
    fn multibyte_text_around_paths_is_kept() {
        let r = remap();
        assert_eq!(r.rewrite("é /data/ü"), "é /tmp/pod/vol/data/ü");
        assert_eq!(r.rewrite("é/data"), "é/data");
        assert_eq!(r.rewrite("/dataé"), "/dataé");
        assert_eq!(r.rewrite("€=/data€"), "€=/tmp/pod/vol/data€");
        assert_eq!(r.rewrite("/"), "/");
        assert_eq!(r.rewrite(""), "");
    }

    #[test]
    fn longest_mount_wins() {
        assert_eq!(
            remap().rewrite("/etc/sluice/tls/ca.crt"),
            "/tmp/pod/vol/tls/ca.crt"
        );
    }

    #[test]
    fn leaves_lookalike_paths_alone() {
        let r = remap();
        assert_eq!(r.rewrite("/etc/sluicex/a"), "/etc/sluicex/a");
        assert_eq!(r.rewrite("/x/data"), "/x/data");
        assert_eq!(r.rewrite("/database"), "/database");
        assert_eq!(r.rewrite("/data.bak"), "/data.bak");
        assert_eq!(
            r.rewrite("no paths here, ünïcode"),
            "no paths here, ünïcode"
        );
    }

    #[test]
    fn json_lists_every_mount() {
        let json: BTreeMap<String, String> = serde_json::from_str(&remap().to_json()).unwrap();
        assert_eq!(json["/etc/sluice"], "/tmp/pod/vol/config");
        assert_eq!(json.len(), 3);
    }
}
