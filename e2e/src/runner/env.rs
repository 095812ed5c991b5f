//! Resolving a container's `env` and `envFrom` against the API.

use k8s_openapi::api::core::v1::{Container, Pod};

use super::error::PrepareError;
use super::fields::{field_value, resource_value};
use super::launch::EnvEntry;
use super::objects::Objects;

/// The container's variables in Kubernetes order: `envFrom` sources, then `env`.
pub async fn resolve(
    objects: &mut Objects,
    pod: &Pod,
    node: &str,
    container: &Container,
) -> Result<Vec<EnvEntry>, PrepareError> {
    let mut out = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &source.config_map_ref {
            objects
                .config_map(&r.name, r.optional.unwrap_or(false))
                .await?
        } else if let Some(r) = &source.secret_ref {
            objects.secret(&r.name, r.optional.unwrap_or(false)).await?
        } else {
            None
        };
        for (key, value) in data.into_iter().flatten() {
            let name = format!("{prefix}{key}");
            if valid_env_name(&name) {
                out.push(EnvEntry {
                    name,
                    value: String::from_utf8_lossy(&value).into_owned(),
                    expand: false,
                });
            }
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            out.push(EnvEntry {
                name: var.name.clone(),
                value: var.value.clone().unwrap_or_default(),
                expand: true,
            });
            continue;
        };
        let value = if let Some(r) = &from.config_map_key_ref {
            let optional = r.optional.unwrap_or(false);
            key_of(
                objects.config_map(&r.name, optional).await?,
                "ConfigMap",
                &r.name,
                &r.key,
                optional,
            )?
        } else if let Some(r) = &from.secret_key_ref {
            let optional = r.optional.unwrap_or(false);
            key_of(
                objects.secret(&r.name, optional).await?,
                "Secret",
                &r.name,
                &r.key,
                optional,
            )?
        } else if let Some(r) = &from.field_ref {
            Some(
                field_value(pod, node, &r.field_path)
                    .ok_or_else(|| PrepareError::UnsupportedField(r.field_path.clone()))?,
            )
        } else if let Some(r) = &from.resource_field_ref {
            let target = match r.container_name.as_deref() {
                Some(name) if !name.is_empty() => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.iter().find(|c| c.name == name))
                    .unwrap_or(container),
                _ => container,
            };
            Some(
                resource_value(target, &r.resource, r.divisor.as_ref())
                    .ok_or_else(|| PrepareError::UnsupportedField(r.resource.clone()))?,
            )
        } else {
            return Err(PrepareError::UnsupportedField(format!(
                "env {} valueFrom",
                var.name
            )));
        };
        if let Some(value) = value {
            out.push(EnvEntry {
                name: var.name.clone(),
                value,
                expand: false,
            });
        }
    }
    Ok(out)
}

/// One key of a fetched object; `None` when the object or key is missing and optional.
fn key_of(
    data: Option<super::objects::Data>,
    kind: &'static str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, PrepareError> {
    match data.as_ref().and_then(|d| d.get(key)) {
        Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        None if optional => Ok(None),
        None => Err(PrepareError::MissingKey {
            kind,
            name: name.to_string(),
            key: key.to_string(),
        }),
    }
}

/// Whether `name` is a valid environment variable name (Kubernetes' C-identifier-ish
/// rule: no `=`, not empty, no NUL); invalid keys of `envFrom` are skipped.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['=', '\0'])
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("A_B"));
        assert!(valid_env_name("a.b-c"));
        assert!(!valid_env_name(""));
        assert!(!valid_env_name("1A"));
        assert!(!valid_env_name("A=B"));
    }

    #[test]
    fn missing_keys_are_errors_unless_optional() {
        let data: super::super::objects::Data = [("k".to_string(), b"v".to_vec())].into();
        assert_eq!(
            key_of(Some(data.clone()), "Secret", "s", "k", false)
                .unwrap()
                .as_deref(),
            Some("v")
        );
        assert!(key_of(Some(data.clone()), "Secret", "s", "x", false).is_err());
        assert_eq!(key_of(Some(data), "Secret", "s", "x", true).unwrap(), None);
        assert_eq!(key_of(None, "Secret", "s", "x", true).unwrap(), None);
    }
}
