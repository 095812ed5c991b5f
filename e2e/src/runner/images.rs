//! Which container images the runner can run, and the local binary for each.
//!
//! A mapping is `REPOSITORY=PATH`, e.g.
//! `ghcr.io/sluice/sluice-processor=/work/main/target/debug/sluice-processor`. An image
//! matches when its repository (the image reference without `:tag` and `@digest`) equals
//! the mapping's repository; the tag is ignored, so every version of an image runs the
//! one binary that was built.

use std::path::{Path, PathBuf};

/// A malformed `--image` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid image mapping {value:?}: expected REPOSITORY=PATH")]
pub struct ImageMapError {
    /// The value given.
    pub value: String,
}

/// Image repository -> local binary.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    entries: Vec<(String, PathBuf)>,
}

impl ImageMap {
    /// Parses `REPOSITORY=PATH` values (a tag on the repository is ignored).
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, ImageMapError> {
        let mut entries = Vec::new();
        for value in values {
            let value = value.as_ref();
            let (image, path) = value.split_once('=').ok_or_else(|| ImageMapError {
                value: value.to_string(),
            })?;
            let (image, path) = (image.trim(), path.trim());
            if image.is_empty() || path.is_empty() {
                return Err(ImageMapError {
                    value: value.to_string(),
                });
            }
            entries.push((repository(image).to_string(), PathBuf::from(path)));
        }
        Ok(Self { entries })
    }

    /// The local binary for an image, if it is mapped.
    pub fn binary(&self, image: &str) -> Option<&Path> {
        let repo = repository(image);
        self.entries
            .iter()
            .find(|(r, _)| r == repo)
            .map(|(_, p)| p.as_path())
    }

    /// Whether no image is mapped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The repository part of an image reference: without `@digest` and without `:tag`
/// (a `:` before the last `/` is a registry port, not a tag).
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// The binary name an image's entrypoint is expected to have: the last path segment of
/// its repository (`ghcr.io/sluice/sluice-processor:1.0` -> `sluice-processor`).
pub fn binary_name(image: &str) -> &str {
    let repo = repository(image);
    repo.rsplit('/').next().unwrap_or(repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest_but_not_registry_port() {
        assert_eq!(repository("ghcr.io/sluice/p:1.2"), "ghcr.io/sluice/p");
        assert_eq!(repository("ghcr.io/sluice/p"), "ghcr.io/sluice/p");
        assert_eq!(repository("localhost:5000/p"), "localhost:5000/p");
        assert_eq!(repository("localhost:5000/p:dev"), "localhost:5000/p");
        assert_eq!(repository("p@sha256:abc"), "p");
        assert_eq!(repository("r/p:t@sha256:abc"), "r/p");
    }

    #[test]
    fn maps_images_ignoring_tags() {
        let map = ImageMap::parse(&[
            "ghcr.io/sluice/sluice-processor=/bin/proc",
            "ghcr.io/sluice/sluice-operator:latest=/bin/op",
        ])
        .unwrap();
        assert_eq!(
            map.binary("ghcr.io/sluice/sluice-processor:0.1.0"),
            Some(Path::new("/bin/proc"))
        );
        assert_eq!(
            map.binary("ghcr.io/sluice/sluice-operator"),
            Some(Path::new("/bin/op"))
        );
        assert_eq!(map.binary("ghcr.io/sluice/sluice-processor-x:1"), None);
        assert_eq!(map.binary("docker.io/library/nginx"), None);
    }

    #[test]
    fn refuses_malformed_mappings() {
        assert!(ImageMap::parse(&["no-equals"]).is_err());
        assert!(ImageMap::parse(&["=/bin/x"]).is_err());
        assert!(ImageMap::parse(&["img="]).is_err());
    }

    #[test]
    fn binary_name_is_last_segment() {
        assert_eq!(
            binary_name("ghcr.io/sluice/sluice-processor:1"),
            "sluice-processor"
        );
        assert_eq!(binary_name("busybox"), "busybox");
    }
}
