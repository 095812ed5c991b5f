//! The environment file `e2e/up` writes (`e2e/.state/env`): KEY=VALUE lines.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Why the environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The file is not there: the environment is not up.
    #[error(
        "the e2e environment is not running ({path} not found): start it with `e2e/up` (or run `make test`, which starts it)"
    )]
    NotUp {
        /// Where the file was looked for.
        path: PathBuf,
    },
    /// The file is there but lacks a key.
    #[error("{key} is missing from {path}: run `e2e/up` again")]
    Missing {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
    },
}

/// The values `e2e/up` wrote.
#[derive(Debug, Clone)]
pub struct TestEnv {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

/// The e2e package's directory in the checkout under test. Cargo says it at run time: a
/// target directory shared by several checkouts can hold a test binary compiled in
/// another one, with that one's path built in. Outside Cargo, where it was compiled.
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The repository root of the checkout under test.
pub fn repo_root() -> PathBuf {
    package_dir().join("..")
}

/// Builds binary `name` of package `name` (debug) in the checkout under test and returns
/// its path; panics with cargo's failure (a test harness has no better place for it).
/// It builds what `make e2e` builds, the same packages at once: cargo unifies the
/// features of shared dependencies over the packages it builds, so building one package
/// alone would compile much of the workspace again with other features (minutes on a
/// cold cache), where this finds everything built.
pub fn cargo_binary(name: &str) -> PathBuf {
    // `make e2e` builds the binaries before the suites and says so: building them again
    // here, from a test's environment, would unify features differently and relink them.
    if std::env::var_os("SLUICE_E2E_PREBUILT").is_none() {
        build_binaries(name);
    }
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("debug")
        .join(name);
    assert!(bin.exists(), "{} not found after the build", bin.display());
    bin
}

/// `cargo build` of the binaries the suites run, as `make e2e` builds them.
fn build_binaries(name: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "sluice-operator",
            "-p",
            "sluice-processor",
            "-p",
            "sluice-e2e",
            "--bins",
            "--tests",
        ])
        .current_dir(repo_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p {name} failed");
}

impl TestEnv {
    /// `DATABASE_URL` (`postgres://user:password@host:port/dbname`) as libpq keys: what a
    /// Connector's `secretRef` holds.
    pub fn database_keys(&self) -> [(&'static str, String); 5] {
        let url = self.var("DATABASE_URL");
        let rest = url.trim_start_matches("postgres://");
        let (auth, rest) = rest.split_once('@').expect("user@host in DATABASE_URL");
        let (user, password) = auth.split_once(':').expect("user:password in DATABASE_URL");
        let (hostport, dbname) = rest.split_once('/').expect("/dbname in DATABASE_URL");
        let (host, port) = hostport.split_once(':').expect("host:port in DATABASE_URL");
        [
            ("host", host.to_string()),
            ("port", port.to_string()),
            ("dbname", dbname.to_string()),
            ("user", user.to_string()),
            ("password", password.to_string()),
        ]
    }

    /// The directory `e2e/up` keeps its state in.
    pub fn state_dir() -> PathBuf {
        std::env::var_os("SLUICE_E2E_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| package_dir().join(".state"))
    }

    /// Reads `e2e/.state/env`.
    pub fn load() -> Result<Self, EnvError> {
        let path = Self::state_dir().join("env");
        let text =
            std::fs::read_to_string(&path).map_err(|_| EnvError::NotUp { path: path.clone() })?;
        Ok(Self {
            values: parse(&text),
            path,
        })
    }

    /// Reads the environment, panicking with how to start it when it is not up. For tests.
    pub fn require() -> Self {
        match Self::load() {
            Ok(env) => env,
            Err(err) => panic!("{err}"),
        }
    }

    /// One value.
    pub fn get(&self, key: &str) -> Result<&str, EnvError> {
        self.values
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| EnvError::Missing {
                key: key.to_string(),
                path: self.path.clone(),
            })
    }

    /// One value, panicking with a clear message when missing. For tests.
    pub fn var(&self, key: &str) -> String {
        match self.get(key) {
            Ok(v) => v.to_string(),
            Err(err) => panic!("{err}"),
        }
    }
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value_lines() {
        let v = parse("# comment\nKAFKA_BOOTSTRAP=127.0.0.1:9092\nexport KUBECONFIG=\"/x/kc\"\n\n");
        assert_eq!(v["KAFKA_BOOTSTRAP"], "127.0.0.1:9092");
        assert_eq!(v["KUBECONFIG"], "/x/kc");
        assert_eq!(v.len(), 2);
    }
}
