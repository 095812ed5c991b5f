//! Per-replica ports: every declared containerPort gets a free local port.
//!
//! All replicas share 127.0.0.1, so the port a container declares cannot be the port it
//! listens on. The rule, for every container:
//! - each declared `containerPort` is given a free port on 127.0.0.1;
//! - env `SLUICE_PORT_<NAME>` (name upper-cased, `-` -> `_`; the number when unnamed)
//!   holds that port, and `SLUICE_HTTP_ADDR=127.0.0.1:<port>` is set for the port named
//!   `http`, else `metrics`, else the first declared port (the Sluice binaries read their
//!   listen address from `SLUICE_HTTP_ADDR`);
//! - in args and env values, `0.0.0.0:<containerPort>`, `127.0.0.1:<containerPort>`,
//!   `localhost:<containerPort>`, `[::]:<containerPort>` and a bare `:<containerPort>`
//!   argument become `127.0.0.1:<port>`;
//! - probes naming a declared port (by number or name) probe the allocated port;
//! - the pod gets the annotation `e2e.sluice.dev/ports`, a JSON object port name (or
//!   number) -> allocated port, so tests can reach each replica.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The env var with the address the main HTTP port should listen on.
pub const HTTP_ADDR_ENV: &str = "SLUICE_HTTP_ADDR";
/// The pod annotation holding the allocated ports.
pub const PORTS_ANNOTATION: &str = "e2e.sluice.dev/ports";

/// One allocated port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedPort {
    /// The container declaring it.
    pub container: String,
    /// The port's name, if any.
    pub name: Option<String>,
    /// The declared containerPort.
    pub container_port: i32,
    /// The local port given to this replica.
    pub host_port: u16,
}

/// Every allocated port of a pod.
#[derive(Debug, Clone, Default)]
pub struct PortMap {
    ports: Vec<AllocatedPort>,
}

impl PortMap {
    /// Allocates a port for every containerPort of `containers` with `alloc`.
    pub fn allocate<E>(
        containers: &[Container],
        mut alloc: impl FnMut() -> Result<u16, E>,
    ) -> Result<Self, E> {
        let mut ports = Vec::new();
        for c in containers {
            for p in c.ports.iter().flatten() {
                ports.push(AllocatedPort {
                    container: c.name.clone(),
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    container_port: p.container_port,
                    host_port: alloc()?,
                });
            }
        }
        Ok(Self { ports })
    }

    fn of<'a>(&'a self, container: &'a str) -> impl Iterator<Item = &'a AllocatedPort> + 'a {
        self.ports.iter().filter(move |p| p.container == container)
    }

    /// The local port a probe or reference to `port` means in `container`: a declared
    /// port (this container's first, then any container's) maps to its allocated port; an
    /// undeclared number is used as it is.
    pub fn resolve(&self, container: &str, port: &IntOrString) -> Option<u16> {
        let matches = |p: &AllocatedPort| match port {
            IntOrString::Int(n) => p.container_port == *n,
            IntOrString::String(s) => {
                p.name.as_deref() == Some(s.as_str())
                    || s.parse::<i32>().is_ok_and(|n| n == p.container_port)
            }
        };
        if let Some(p) = self.of(container).find(|p| matches(p)) {
            return Some(p.host_port);
        }
        if let Some(p) = self.ports.iter().find(|p| matches(p)) {
            return Some(p.host_port);
        }
        match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(s) => s.parse().ok(),
        }
    }

    /// The env vars describing `container`'s ports.
    pub fn env(&self, container: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .of(container)
            .map(|p| {
                let key = match &p.name {
                    Some(name) => name.to_uppercase().replace(['-', '.'], "_"),
                    None => p.container_port.to_string(),
                };
                (format!("SLUICE_PORT_{key}"), p.host_port.to_string())
            })
            .collect();
        let named = |n: &str| self.of(container).find(|p| p.name.as_deref() == Some(n));
        if let Some(main) = named("http")
            .or_else(|| named("metrics"))
            .or_else(|| self.of(container).next())
        {
            env.push((
                HTTP_ADDR_ENV.to_string(),
                format!("127.0.0.1:{}", main.host_port),
            ));
        }
        env
    }

    /// Rewrites listen addresses on declared ports in an arg or env value.
    pub fn rewrite_listen(&self, container: &str, input: &str) -> String {
        let ports: Vec<&AllocatedPort> = self.of(container).collect();
        if ports.is_empty() {
            return input.to_string();
        }
        for p in &ports {
            if input == format!(":{}", p.container_port) {
                return format!("127.0.0.1:{}", p.host_port);
            }
        }
        const HOSTS: [&str; 4] = ["0.0.0.0:", "127.0.0.1:", "localhost:", "[::]:"];
        let mut out = String::with_capacity(input.len());
        let mut i = 0;
        'scan: while i < input.len() {
            let prev_ok = i == 0
                || !input[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
            if prev_ok {
                for host in HOSTS {
                    let Some(rest) = input[i..].strip_prefix(host) else {
                        continue;
                    };
                    for p in &ports {
                        let num = p.container_port.to_string();
                        if let Some(after) = rest.strip_prefix(num.as_str())
                            && !after.starts_with(|c: char| c.is_ascii_digit())
                        {
                            out.push_str(&format!("127.0.0.1:{}", p.host_port));
                            i += host.len() + num.len();
                            continue 'scan;
                        }
                    }
                }
            }
            let ch = input[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
        out
    }

    /// The `e2e.sluice.dev/ports` annotation value.
    pub fn annotation(&self) -> String {
        let map: BTreeMap<String, u16> = self
            .ports
            .iter()
            .map(|p| {
                let key = p
                    .name
                    .clone()
                    .unwrap_or_else(|| p.container_port.to_string());
                (key, p.host_port)
            })
            .collect();
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_string())
    }
}

/// Ports handed out recently, so two pods started close together never get the same one
/// before either has bound it.
static RECENT: Mutex<VecDeque<u16>> = Mutex::new(VecDeque::new());

/// A free port on 127.0.0.1 (asked of the kernel), not handed out recently.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if !recent.contains(&port) {
            recent.push_back(port);
            if recent.len() > 4096 {
                recent.pop_front();
            }
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free local port found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    fn container(name: &str, ports: &[(Option<&str>, i32)]) -> Container {
        Container {
            name: name.to_string(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ContainerPort {
                        name: n.map(str::to_string),
                        container_port: *p,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn map() -> PortMap {
        let mut next = 40000u16;
        PortMap::allocate::<()>(
            &[
                container(
                    "main",
                    &[(Some("metrics"), 9090), (Some("http"), 8080), (None, 7000)],
                ),
                container("side", &[(Some("admin"), 9901)]),
            ],
            || {
                next += 1;
                Ok(next)
            },
        )
        .unwrap()
    }

    #[test]
    fn probes_resolve_names_and_numbers_to_allocated_ports() {
        let m = map();
        assert_eq!(
            m.resolve("main", &IntOrString::String("http".into())),
            Some(40002)
        );
        assert_eq!(m.resolve("main", &IntOrString::Int(9090)), Some(40001));
        assert_eq!(
            m.resolve("main", &IntOrString::String("admin".into())),
            Some(40004)
        );
        assert_eq!(m.resolve("main", &IntOrString::Int(1234)), Some(1234));
        assert_eq!(m.resolve("main", &IntOrString::String("nope".into())), None);
    }

    #[test]
    fn env_prefers_the_http_port() {
        let env = m_env("main");
        assert!(env.contains(&("SLUICE_PORT_METRICS".into(), "40001".into())));
        assert!(env.contains(&("SLUICE_PORT_7000".into(), "40003".into())));
        assert!(env.contains(&(HTTP_ADDR_ENV.into(), "127.0.0.1:40002".into())));
        let side = m_env("side");
        assert!(side.contains(&(HTTP_ADDR_ENV.into(), "127.0.0.1:40004".into())));
        assert!(m_env("other").is_empty());
    }

    fn m_env(c: &str) -> Vec<(String, String)> {
        map().env(c)
    }

    #[test]
    fn rewrites_listen_addresses_on_declared_ports() {
        let m = map();
        assert_eq!(
            m.rewrite_listen("main", "--listen=0.0.0.0:8080"),
            "--listen=127.0.0.1:40002"
        );
        assert_eq!(m.rewrite_listen("main", ":9090"), "127.0.0.1:40001");
        assert_eq!(
            m.rewrite_listen("main", "[::]:7000,localhost:9090"),
            "127.0.0.1:40003,127.0.0.1:40001"
        );
        assert_eq!(m.rewrite_listen("main", "0.0.0.0:80801"), "0.0.0.0:80801");
        assert_eq!(m.rewrite_listen("main", "10.0.0.0:8080"), "10.0.0.0:8080");
        assert_eq!(m.rewrite_listen("main", "0.0.0.0:9901"), "0.0.0.0:9901");
    }

    #[test]
    fn multibyte_text_is_kept() {
        let m = map();
        assert_eq!(
            m.rewrite_listen("main", "é0.0.0.0:8080ü"),
            "é127.0.0.1:40002ü"
        );
        assert_eq!(m.rewrite_listen("main", "ü:8080"), "ü:8080");
        assert_eq!(m.rewrite_listen("main", ""), "");
    }

    #[test]
    fn annotation_names_every_port() {
        let json: BTreeMap<String, u16> = serde_json::from_str(&map().annotation()).unwrap();
        assert_eq!(json["http"], 40002);
        assert_eq!(json["7000"], 40003);
        assert_eq!(json["admin"], 40004);
    }

    #[test]
    fn free_ports_are_distinct() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
    }
}
