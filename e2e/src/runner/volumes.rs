//! Writing a pod's volumes to its work directory.
//!
//! ConfigMap, Secret, downwardAPI and projected volumes (ServiceAccount token, ConfigMap,
//! Secret, downwardAPI sources) are written as files; emptyDir (and, with a warning, any
//! other volume type) is an empty directory; hostPath is the host path itself. The
//! ServiceAccount token is a real token from the TokenRequest API bound to the pod, and
//! `kube-root-ca.crt` falls back to the runner's cluster CA when that ConfigMap is not
//! published.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume};
use kube::api::PostParams;
use kube::{Api, Client};

use super::error::PrepareError;
use super::fields::{field_value, resource_value};
use super::objects::{Data, Objects};

/// Default lifetime of a projected token, as Kubernetes' admission sets it.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3607;

/// A projected ServiceAccount token file to keep fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    /// Where the token is written.
    pub path: PathBuf,
    /// Its audience (`None`: the API server's).
    pub audience: Option<String>,
    /// Requested lifetime in seconds.
    pub expiration_seconds: i64,
}

/// What writing the volumes produced.
#[derive(Debug, Default)]
pub struct Written {
    /// Volume name -> local directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Token files to refresh.
    pub tokens: Vec<TokenFile>,
}

/// What a pod's volumes need from the runner.
pub struct VolumeContext<'a> {
    /// API client (the runner's identity).
    pub client: &'a Client,
    /// This node.
    pub node: &'a str,
    /// The cluster CA, for `kube-root-ca.crt` when that ConfigMap is missing.
    pub ca_pem: Option<&'a [u8]>,
}

/// Writes every volume of `pod` under `root` (one directory per volume).
pub async fn write_all(
    ctx: &VolumeContext<'_>,
    objects: &mut Objects,
    pod: &Pod,
    root: &Path,
) -> Result<Written, PrepareError> {
    let mut written = Written::default();
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(host) = &volume.host_path {
            written
                .dirs
                .insert(volume.name.clone(), PathBuf::from(&host.path));
            continue;
        }
        let dir = root.join(sanitize(&volume.name));
        create_dir(&dir)?;
        write_volume(ctx, objects, pod, volume, &dir, &mut written.tokens).await?;
        written.dirs.insert(volume.name.clone(), dir);
    }
    Ok(written)
}

async fn write_volume(
    ctx: &VolumeContext<'_>,
    objects: &mut Objects,
    pod: &Pod,
    volume: &Volume,
    dir: &Path,
    tokens: &mut Vec<TokenFile>,
) -> Result<(), PrepareError> {
    if let Some(cm) = &volume.config_map {
        let data = objects
            .config_map(&cm.name, cm.optional.unwrap_or(false))
            .await?;
        let files = project(
            &data.unwrap_or_default(),
            cm.items.as_deref(),
            cm.default_mode,
            "ConfigMap",
            &cm.name,
        )?;
        write_files(dir, &files)?;
    } else if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let data = objects
            .secret(&name, secret.optional.unwrap_or(false))
            .await?;
        let mode = Some(secret.default_mode.unwrap_or(0o644));
        let files = project(
            &data.unwrap_or_default(),
            secret.items.as_deref(),
            mode,
            "Secret",
            &name,
        )?;
        write_files(dir, &files)?;
    } else if let Some(downward) = &volume.downward_api {
        let files = downward_files(
            pod,
            ctx.node,
            downward.items.as_deref().unwrap_or_default(),
            downward.default_mode,
        )?;
        write_files(dir, &files)?;
    } else if let Some(projected) = &volume.projected {
        let mode = projected.default_mode;
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                let optional = cm.optional.unwrap_or(false);
                let data = match objects
                    .config_map(&cm.name, optional || cm.name == "kube-root-ca.crt")
                    .await?
                {
                    Some(d) => Some(d),
                    None if cm.name == "kube-root-ca.crt" => match ctx.ca_pem {
                        Some(ca) => Some([("ca.crt".to_string(), ca.to_vec())].into()),
                        None if optional => None,
                        None => {
                            return Err(PrepareError::NotFound {
                                kind: "ConfigMap",
                                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                                name: cm.name.clone(),
                            });
                        }
                    },
                    None => None,
                };
                let files = project(
                    &data.unwrap_or_default(),
                    cm.items.as_deref(),
                    mode,
                    "ConfigMap",
                    &cm.name,
                )?;
                write_files(dir, &files)?;
            }
            if let Some(secret) = &source.secret {
                let data =
                    secret_or_none(objects, &secret.name, secret.optional.unwrap_or(false)).await?;
                let files = project(&data, secret.items.as_deref(), mode, "Secret", &secret.name)?;
                write_files(dir, &files)?;
            }
            if let Some(downward) = &source.downward_api {
                let files = downward_files(
                    pod,
                    ctx.node,
                    downward.items.as_deref().unwrap_or_default(),
                    mode,
                )?;
                write_files(dir, &files)?;
            }
            if let Some(token) = &source.service_account_token {
                let rel = safe_relative(&token.path).ok_or_else(|| PrepareError::Io {
                    path: PathBuf::from(&token.path),
                    source: std::io::Error::other(
                        "token path must be relative and stay inside the volume",
                    ),
                })?;
                let file = TokenFile {
                    path: dir.join(rel),
                    audience: token.audience.clone().filter(|a| !a.is_empty()),
                    expiration_seconds: token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
                };
                issue_token(ctx.client, pod, &file).await?;
                tokens.push(file);
            }
        }
    } else if volume.empty_dir.is_none() {
        tracing::warn!(volume = %volume.name, "unsupported volume type: using an empty directory");
    }
    Ok(())
}

async fn secret_or_none(
    objects: &mut Objects,
    name: &str,
    optional: bool,
) -> Result<Data, PrepareError> {
    Ok(objects.secret(name, optional).await?.unwrap_or_default())
}

/// Requests a token for the pod's ServiceAccount, bound to the pod, and writes it.
/// Returns the token's lifetime in seconds.
pub async fn issue_token(
    client: &Client,
    pod: &Pod,
    file: &TokenFile,
) -> Result<i64, PrepareError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: file.audience.clone().into_iter().collect(),
            expiration_seconds: Some(file.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let issued = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(PrepareError::api(format!(
            "requesting a token for service account {namespace}/{account}"
        )))?;
    let status = issued.status.ok_or_else(|| PrepareError::NoToken {
        namespace: namespace.clone(),
        name: account.clone(),
    })?;
    if let Some(parent) = file.path.parent() {
        create_dir(parent)?;
    }
    write_atomic(&file.path, status.token.as_bytes(), 0o600)?;
    let lifetime =
        status.expiration_timestamp.0.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    Ok(lifetime.max(60))
}

/// One file to write: relative path, content, mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// Path inside the volume.
    pub path: PathBuf,
    /// Content.
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// The files a ConfigMap/Secret projection produces: every key, or only `items`.
pub fn project(
    data: &Data,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    kind: &'static str,
    name: &str,
) -> Result<Vec<VolumeFile>, PrepareError> {
    let default_mode = mode_bits(default_mode, 0o644);
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data
            .iter()
            .filter_map(|(k, v)| {
                Some(VolumeFile {
                    path: safe_relative(k)?,
                    content: v.clone(),
                    mode: default_mode,
                })
            })
            .collect());
    };
    let mut files = Vec::new();
    for item in items {
        let content = data
            .get(&item.key)
            .ok_or_else(|| PrepareError::MissingKey {
                kind,
                name: name.to_string(),
                key: item.key.clone(),
            })?;
        let Some(path) = safe_relative(&item.path) else {
            continue;
        };
        files.push(VolumeFile {
            path,
            content: content.clone(),
            mode: mode_bits(item.mode, default_mode),
        });
    }
    Ok(files)
}

fn downward_files(
    pod: &Pod,
    node: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Vec<VolumeFile>, PrepareError> {
    let mut files = Vec::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            field_value(pod, node, &f.field_path)
                .ok_or_else(|| PrepareError::UnsupportedField(f.field_path.clone()))?
        } else if let Some(r) = &item.resource_field_ref {
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| {
                    s.containers
                        .iter()
                        .find(|c| Some(c.name.as_str()) == r.container_name.as_deref())
                        .or(s.containers.first())
                })
                .cloned()
                .unwrap_or_default();
            resource_value(&container, &r.resource, r.divisor.as_ref())
                .ok_or_else(|| PrepareError::UnsupportedField(r.resource.clone()))?
        } else {
            continue;
        };
        if let Some(path) = safe_relative(&item.path) {
            files.push(VolumeFile {
                path,
                content: value.into_bytes(),
                mode: mode_bits(item.mode.or(default_mode), 0o644),
            });
        }
    }
    Ok(files)
}

fn mode_bits(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map_or(default, |m| m & 0o777)
}

/// A relative path that stays inside its directory, or `None`.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

/// A volume name usable as a directory name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn create_dir(dir: &Path) -> Result<(), PrepareError> {
    std::fs::create_dir_all(dir).map_err(PrepareError::io(dir))
}

fn write_files(dir: &Path, files: &[VolumeFile]) -> Result<(), PrepareError> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        write_atomic(&path, &f.content, f.mode)?;
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), PrepareError> {
    let tmp = path.with_extension("sluice-runner-tmp");
    std::fs::write(&tmp, content).map_err(PrepareError::io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(PrepareError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(PrepareError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Data {
        [
            ("a.yaml".to_string(), b"a".to_vec()),
            ("b".to_string(), b"b".to_vec()),
            ("../evil".to_string(), b"x".to_vec()),
        ]
        .into()
    }

    #[test]
    fn projects_every_safe_key_by_default() {
        let files = project(&data(), None, Some(0o400), "ConfigMap", "c").unwrap();
        let paths: Vec<_> = files
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, vec!["a.yaml", "b"]);
        assert!(files.iter().all(|f| f.mode == 0o400));
    }

    #[test]
    fn projects_selected_items_with_their_modes() {
        let items = vec![KeyToPath {
            key: "a.yaml".into(),
            path: "conf/pipeline.yaml".into(),
            mode: Some(0o600),
        }];
        let files = project(&data(), Some(&items), None, "ConfigMap", "c").unwrap();
        assert_eq!(
            files,
            vec![VolumeFile {
                path: PathBuf::from("conf/pipeline.yaml"),
                content: b"a".to_vec(),
                mode: 0o600
            }]
        );
        let missing = vec![KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        assert!(project(&data(), Some(&missing), None, "ConfigMap", "c").is_err());
    }

    #[test]
    fn refuses_paths_leaving_the_volume() {
        assert!(safe_relative("../x").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("").is_none());
        assert_eq!(safe_relative("a/b"), Some(PathBuf::from("a/b")));
    }

    #[test]
    fn writes_files_atomically_with_modes() {
        let dir = std::env::temp_dir().join(format!("sluice-runner-vol-{}", std::process::id()));
        let files = project(&data(), None, Some(0o640), "ConfigMap", "c").unwrap();
        write_files(&dir, &files).unwrap();
        assert_eq!(std::fs::read(dir.join("a.yaml")).unwrap(), b"a");
        let mode = std::fs::metadata(dir.join("b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
