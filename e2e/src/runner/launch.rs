//! What to execute for a container: program, arguments, environment, working directory.
//!
//! - The environment starts from the runner's base variables (PATH, HOME, ...), the
//!   port variables and the pod's KUBECONFIG; then `envFrom` and `env` in order, `env`
//!   values expanded with `$(VAR)` against the variables defined before them.
//! - `command` and `args` are expanded against the whole environment.
//! - With an empty `command` the image's mapped binary runs with `args`; when
//!   `command[0]` is the image's binary name (or a path ending in it) the mapped binary
//!   replaces it; any other `command[0]` runs as written (found on PATH).
//! - Mount paths and listen addresses are rewritten in args, env values and the working
//!   directory (see [`super::paths`] and [`super::ports`]).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use super::expand::expand;
use super::images::binary_name;
use super::paths::PathRemap;
use super::ports::PortMap;

/// One resolved env entry of a container, before expansion and rewriting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEntry {
    /// Variable name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Whether `$(VAR)` references are expanded (true for `value`, false for `valueFrom`
    /// and `envFrom`, as in Kubernetes).
    pub expand: bool,
}

/// A process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory, when the container sets one.
    pub cwd: Option<PathBuf>,
}

/// Builds the launch spec of `container`, whose image maps to `binary`.
pub fn build(
    container: &Container,
    binary: &Path,
    base_env: Vec<(String, String)>,
    container_env: &[EnvEntry],
    remap: &PathRemap,
    ports: &PortMap,
) -> LaunchSpec {
    let rewrite = |s: &str| ports.rewrite_listen(&container.name, &remap.rewrite(s));
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    };
    for (name, value) in base_env {
        set(&mut env, name, value);
    }
    for entry in container_env {
        let value = if entry.expand {
            expand(&entry.value, |n| lookup(&env, n))
        } else {
            entry.value.clone()
        };
        set(&mut env, entry.name.clone(), rewrite(&value));
    }
    let expand_all = |s: &String| rewrite(&expand(s, |n| lookup(&env, n)));
    let command: Vec<String> = container.command.iter().flatten().map(expand_all).collect();
    let args: Vec<String> = container.args.iter().flatten().map(expand_all).collect();
    let image = container.image.as_deref().unwrap_or_default();
    let (program, mut argv) = match command.split_first() {
        None => (binary.to_path_buf(), Vec::new()),
        Some((first, rest)) => {
            let name = binary_name(image);
            let is_image_binary = !name.is_empty()
                && (first == name || Path::new(first).file_name().is_some_and(|f| f == name));
            let program = if is_image_binary {
                binary.to_path_buf()
            } else {
                PathBuf::from(first)
            };
            (program, rest.to_vec())
        }
    };
    argv.extend(args);
    let cwd = container
        .working_dir
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| remap.rewrite_path(Path::new(d)));
    LaunchSpec {
        program,
        args: argv,
        env,
        cwd,
    }
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    fn entry(name: &str, value: &str, expand: bool) -> EnvEntry {
        EnvEntry {
            name: name.into(),
            value: value.into(),
            expand,
        }
    }

    fn container(command: &[&str], args: &[&str]) -> Container {
        Container {
            name: "main".into(),
            image: Some("ghcr.io/sluice/sluice-processor:0.1".into()),
            command: (!command.is_empty()).then(|| command.iter().map(|s| s.to_string()).collect()),
            args: Some(args.iter().map(|s| s.to_string()).collect()),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn ports(c: &Container) -> PortMap {
        PortMap::allocate::<()>(std::slice::from_ref(c), || Ok(41000)).unwrap()
    }

    fn remap() -> PathRemap {
        PathRemap::new([("/etc/sluice".to_string(), PathBuf::from("/w/pod/config"))])
    }

    #[test]
    fn empty_command_runs_the_mapped_binary_with_rewritten_args() {
        let c = container(
            &[],
            &["run", "-f", "/etc/sluice/p.yaml", "--listen=0.0.0.0:8080"],
        );
        let spec = build(
            &c,
            Path::new("/bin/proc"),
            vec![],
            &[],
            &remap(),
            &ports(&c),
        );
        assert_eq!(spec.program, PathBuf::from("/bin/proc"));
        assert_eq!(
            spec.args,
            vec![
                "run",
                "-f",
                "/w/pod/config/p.yaml",
                "--listen=127.0.0.1:41000"
            ]
        );
    }

    #[test]
    fn image_binary_name_in_command_is_substituted() {
        for cmd in ["sluice-processor", "/usr/local/bin/sluice-processor"] {
            let c = container(&[cmd, "run"], &["--x"]);
            let spec = build(
                &c,
                Path::new("/bin/proc"),
                vec![],
                &[],
                &remap(),
                &ports(&c),
            );
            assert_eq!(spec.program, PathBuf::from("/bin/proc"));
            assert_eq!(spec.args, vec!["run", "--x"]);
        }
        let c = container(&["sh", "-c", "exec /etc/sluice/run.sh"], &[]);
        let spec = build(
            &c,
            Path::new("/bin/proc"),
            vec![],
            &[],
            &remap(),
            &ports(&c),
        );
        assert_eq!(spec.program, PathBuf::from("sh"));
        assert_eq!(spec.args, vec!["-c", "exec /w/pod/config/run.sh"]);
    }

    #[test]
    fn env_is_expanded_in_order_and_rewritten() {
        let c = container(&[], &["--port", "$(SLUICE_PORT_HTTP)", "--name=$(POD)"]);
        let base = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("SLUICE_PORT_HTTP".to_string(), "41000".to_string()),
        ];
        let env = vec![
            entry("POD", "p-1", false),
            entry("CONF", "/etc/sluice/$(POD).yaml", true),
            entry("RAW", "$(POD)", false),
            entry("LATER", "$(NEXT)", true),
            entry("NEXT", "x", true),
            entry("PATH", "/opt/bin:$(PATH)", true),
        ];
        let spec = build(&c, Path::new("/bin/proc"), base, &env, &remap(), &ports(&c));
        let get = |n: &str| {
            spec.env
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CONF"), Some("/w/pod/config/p-1.yaml"));
        assert_eq!(get("RAW"), Some("$(POD)"));
        assert_eq!(get("LATER"), Some("$(NEXT)"));
        assert_eq!(get("PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(spec.args, vec!["--port", "41000", "--name=p-1"]);
    }

    #[test]
    fn a_listen_address_set_in_env_gets_the_allocated_port() {
        let c = container(&[], &[]);
        let base = ports(&c).env("main");
        let env = vec![entry("SLUICE_HTTP_ADDR", "0.0.0.0:8080", true)];
        let spec = build(&c, Path::new("/bin/proc"), base, &env, &remap(), &ports(&c));
        let addr = spec
            .env
            .iter()
            .find(|(k, _)| k == "SLUICE_HTTP_ADDR")
            .map(|(_, v)| v.as_str());
        assert_eq!(addr, Some("127.0.0.1:41000"));
    }

    #[test]
    fn working_dir_is_remapped() {
        let mut c = container(&[], &[]);
        c.working_dir = Some("/etc/sluice/work".into());
        let spec = build(
            &c,
            Path::new("/bin/proc"),
            vec![],
            &[],
            &remap(),
            &ports(&c),
        );
        assert_eq!(spec.cwd, Some(PathBuf::from("/w/pod/config/work")));
    }
}
