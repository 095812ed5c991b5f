//! Where and how the PostgreSQL sink connects: libpq's keys read from the connector's
//! Secret, and TLS (through native-tls, the workspace's one TLS stack) as `sslmode` asks.

use std::path::Path;

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::config::SslMode as WireMode;

use super::secret::SecretFiles;
use crate::runtime::sink::SinkError;

/// libpq's `sslmode`, as the sink honours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's `allow`
    /// tries without TLS first; the sink treats it as `prefer`).
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS; the certificate must chain to `sslrootcert` (or the system's roots).
    VerifyCa,
    /// As `verify-ca`, and the certificate must name `host`.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, SinkError> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(SinkError::Fatal(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// Where to connect: libpq's names, read from the files of the credentials directory.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `host`.
    pub host: String,
    /// `port` (5432 when missing).
    pub port: u16,
    /// `dbname`.
    pub dbname: String,
    /// `user`.
    pub user: String,
    /// `password` (none when missing).
    pub password: Option<String>,
    /// `sslmode` (`prefer` when missing, as libpq).
    pub sslmode: SslMode,
    /// `sslrootcert`: the PEM certificates the server's must chain to.
    pub root_cert: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads `host`, `port`, `dbname`, `user`, `password`, `sslmode` and `sslrootcert`
    /// from `dir` (a mounted Secret: one file per key).
    pub fn read(dir: &Path) -> Result<Credentials, SinkError> {
        let secret = SecretFiles::new(dir);
        let port = match secret.get("port") {
            Some(p) => p
                .parse()
                .map_err(|_| SinkError::Fatal(format!("port {p:?} is not a port number")))?,
            None => 5432,
        };
        Ok(Credentials {
            host: secret.need("host")?,
            port,
            dbname: secret.need("dbname")?,
            user: secret.need("user")?,
            password: secret.get("password"),
            sslmode: secret
                .get("sslmode")
                .map_or(Ok(SslMode::Prefer), |m| SslMode::parse(&m))?,
            root_cert: secret.get("sslrootcert"),
        })
    }

    /// The connection settings, named `application_name` in `pg_stat_activity`.
    pub fn config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .application_name(application_name)
            .connect_timeout(std::time::Duration::from_secs(10))
            .ssl_mode(match self.sslmode {
                SslMode::Disable => WireMode::Disable,
                SslMode::Prefer => WireMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
            });
        if let Some(p) = &self.password {
            pg.password(p);
        }
        pg
    }

    /// The TLS connector `sslmode` asks for (`None`: no TLS).
    pub fn tls(&self) -> Result<Option<MakeTlsConnector>, SinkError> {
        if self.sslmode == SslMode::Disable {
            return Ok(None);
        }
        let mut builder = TlsConnector::builder();
        let verify_chain = matches!(self.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
        builder
            .danger_accept_invalid_certs(!verify_chain)
            .danger_accept_invalid_hostnames(self.sslmode != SslMode::VerifyFull);
        if let Some(pem) = &self.root_cert {
            let certs = Certificate::stack_from_pem(pem.as_bytes())
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    SinkError::Fatal("sslrootcert holds no PEM certificate".to_string())
                })?;
            for cert in certs {
                builder.add_root_certificate(cert);
            }
        }
        let connector = builder
            .build()
            .map_err(|e| SinkError::Fatal(format!("cannot set up TLS: {e}")))?;
        Ok(Some(MakeTlsConnector::new(connector)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, keys: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in keys {
            std::fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn libpq_keys_are_read_and_sslmode_defaults_to_prefer() {
        let base = [
            ("host", "db"),
            ("dbname", "shop"),
            ("user", "sluice"),
            ("password", "pw-123"),
        ];
        let c = Credentials::read(&secret("base", &base)).unwrap();
        assert_eq!((c.port, c.sslmode), (5432, SslMode::Prefer));
        assert!(c.tls().unwrap().is_some(), "prefer offers TLS");
        assert!(!format!("{c:?}").contains("pw-123"), "no password in Debug");
        let mut keys = base.to_vec();
        keys.push(("sslmode", "disable"));
        let c = Credentials::read(&secret("disable", &keys)).unwrap();
        assert!(c.tls().unwrap().is_none());
    }

    #[test]
    fn an_unknown_sslmode_and_a_root_cert_that_is_not_pem_are_refused() {
        let keys = [
            ("host", "db"),
            ("dbname", "shop"),
            ("user", "sluice"),
            ("sslmode", "always"),
            ("port", "5433"),
        ];
        let err = Credentials::read(&secret("always", &keys)).unwrap_err();
        assert!(err.to_string().contains("\"always\""), "{err}");
        let keys = [
            ("host", "db"),
            ("dbname", "shop"),
            ("user", "sluice"),
            ("sslmode", "verify-full"),
            ("sslrootcert", "not a certificate"),
            ("port", "5433"),
            ("password", "x"),
        ];
        let c = Credentials::read(&secret("not-pem", &keys)).unwrap();
        assert_eq!((c.port, c.sslmode), (5433, SslMode::VerifyFull));
        let err = c.tls().err().unwrap();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
    }
}
