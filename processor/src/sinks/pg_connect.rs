//! Where and how the PostgreSQL sink connects: libpq's keys read from the connector's
//! Secret, and TLS (through native-tls, the workspace's one TLS stack) as `sslmode` asks.

use std::path::Path;

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::{Client, NoTls};

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

/// Drives a connection until it closes, saying why when it fails.
async fn watch<C: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: C) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "PostgreSQL connection closed");
    }
}

/// The database's message for an error, with its code and detail, or the chain of causes
/// (a TLS handshake: which certificate check failed).
pub fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}): {detail}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let more = c.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                cause = c.source();
            }
            text
        }
    }
}

impl Credentials {
    /// Connects as `application_name` (the connection runs on a task of the current
    /// runtime). A refused login or a certificate `sslmode` does not accept is fatal;
    /// anything else may pass.
    pub async fn connect(&self, application_name: &str) -> Result<Client, SinkError> {
        let pg = self.config(application_name);
        let refused = |e: tokio_postgres::Error| {
            let text = format!(
                "cannot connect to {}:{}/{}: {}",
                self.host,
                self.port,
                self.dbname,
                message(&e)
            );
            if e.code().is_some_and(|c| &c.code()[..2] == "28")
                || std::error::Error::source(&e).is_some_and(|s| s.is::<native_tls::Error>())
            {
                SinkError::Fatal(text)
            } else {
                SinkError::Unavailable(text)
            }
        };
        Ok(match self.tls()? {
            None => {
                let (client, connection) = pg.connect(NoTls).await.map_err(refused)?;
                tokio::spawn(watch(connection));
                client
            }
            Some(tls) => {
                let (client, connection) = pg.connect(tls).await.map_err(refused)?;
                tokio::spawn(watch(connection));
                client
            }
        })
    }

    /// libpq's connection string for these settings, with `extra` (`replication=database`)
    /// appended; `dir` is where the Secret's files are (`sslrootcert` is read from there).
    pub fn conninfo(&self, application_name: &str, dir: &Path, extra: &str) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut parts = vec![
            format!("host={}", quote(&self.host)),
            format!("port={}", self.port),
            format!("dbname={}", quote(&self.dbname)),
            format!("user={}", quote(&self.user)),
            format!("application_name={}", quote(application_name)),
            "connect_timeout=10".to_string(),
            format!(
                "sslmode={}",
                match self.sslmode {
                    SslMode::Disable => "disable",
                    SslMode::Prefer => "prefer",
                    SslMode::Require => "require",
                    SslMode::VerifyCa => "verify-ca",
                    SslMode::VerifyFull => "verify-full",
                }
            ),
        ];
        if let Some(p) = &self.password {
            parts.push(format!("password={}", quote(p)));
        }
        if self.root_cert.is_some() {
            parts.push(format!(
                "sslrootcert={}",
                quote(&dir.join("sslrootcert").to_string_lossy())
            ));
        }
        parts.push(extra.to_string());
        parts.join(" ")
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
