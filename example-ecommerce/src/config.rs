//! Connection settings of the shop's processes: the flags and environment
//! variables every server subcommand takes ([`ServerArgs`], with the NATS
//! credentials and TLS settings in [`NatsArgs`]), and the connections they
//! make ([`pg`], [`nats`]).
//!
//! # Secrets
//!
//! `DATABASE_URL` and `NATS_URL` may carry passwords, and `NATS_PASSWORD`,
//! `NATS_TOKEN` and `NATS_NKEY` are secrets. None of them is ever shown:
//!
//! - `--help` lists their environment variables without the values
//!   (`hide_env_values`);
//! - every message that names a URL (errors, the demo's banner, `Debug`)
//!   shows it through [`redact`];
//! - a `DATABASE_URL` parameter sqlx does not know is refused by name,
//!   because sqlx would log it with its value.
//!
//! Pass secrets through the environment (or a credentials file), not as
//! flags: other users of the machine can read a process's arguments.
//! See `docs/deployment-security.md`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::FalseyValueParser;
use clap::Args;
use strata::nats::StreamConfig;
use strata::PgEventStore;

use crate::runtime::Servers;

/// The PostgreSQL URL used when none is given.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The NATS URL used when none is given.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// What [`redact`] puts in place of a secret.
pub const REDACTED: &str = "***";

/// The settings every server subcommand takes (`migrate`, `command-api`,
/// `query-api`, `relay`, `projector`, `process-manager`, `admin`).
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// PostgreSQL URL (`?sslmode=require` for TLS).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = DEFAULT_DATABASE_URL
    )]
    pub database_url: String,
    /// NATS URL (`tls://` for TLS).
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = DEFAULT_NATS_URL
    )]
    pub nats_url: String,
    /// JetStream stream name.
    #[arg(long, env = "STRATA_STREAM", default_value = "STRATA")]
    pub stream: String,
    /// Subject prefix of events (`<prefix>.<stream type>.<stream id>`).
    #[arg(long, env = "STRATA_SUBJECT_PREFIX", default_value = "strata")]
    pub subject_prefix: String,
    /// Do not apply migrations: check that the schema's owner has applied
    /// them and exit if not. For a database role without DDL rights.
    #[arg(long, env = "STRATA_NO_MIGRATE", value_parser = FalseyValueParser::new())]
    pub no_migrate: bool,
    /// NATS credentials and TLS.
    #[command(flatten)]
    pub nats: NatsArgs,
}

impl ServerArgs {
    /// The settings for [`crate::runtime`].
    pub fn servers(&self) -> Servers {
        Servers {
            database_url: self.database_url.clone(),
            nats_url: self.nats_url.clone(),
            stream: StreamConfig::new(self.stream.clone(), self.subject_prefix.clone()),
        }
    }
}

impl fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerArgs")
            .field("database_url", &redact(&self.database_url))
            .field("nats_url", &redact(&self.nats_url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("no_migrate", &self.no_migrate)
            .field("nats", &self.nats)
            .finish()
    }
}

/// How to authenticate to NATS and whether to use TLS. At most one way to
/// authenticate: user and password, a token, an nkey seed, or a
/// credentials file.
#[derive(Args, Clone, Default)]
pub struct NatsArgs {
    /// NATS user name (with --nats-password).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (use the environment variable: flags show in `ps`).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS authentication token (use the environment variable).
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS nkey seed, `SU...` (use the environment variable).
    #[arg(long, env = "NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// NATS credentials file (user JWT and nkey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) that verify the NATS server, instead of the system's.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS mutual TLS (with --nats-tls-key).
    #[arg(long, env = "NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS.
    #[arg(long, env = "NATS_REQUIRE_TLS", value_parser = FalseyValueParser::new())]
    pub nats_require_tls: bool,
}

impl fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| REDACTED);
        f.debug_struct("NatsArgs")
            .field("nats_user", &self.nats_user)
            .field("nats_password", &hidden(&self.nats_password))
            .field("nats_token", &hidden(&self.nats_token))
            .field("nats_nkey", &hidden(&self.nats_nkey))
            .field("nats_creds", &self.nats_creds)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .field("nats_require_tls", &self.nats_require_tls)
            .finish()
    }
}

impl NatsArgs {
    /// The `async_nats` options these settings ask for (authentication and
    /// TLS only; timeouts and retries are the caller's). Fails, naming the
    /// flag and never a secret, on settings that contradict each other, a
    /// missing file or an unreadable credentials file.
    pub async fn connect_options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let ways = [
            self.nats_user.is_some() || self.nats_password.is_some(),
            self.nats_token.is_some(),
            self.nats_nkey.is_some(),
            self.nats_creds.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            bail!(
                "give one way to authenticate to NATS: --nats-user and --nats-password, \
                 --nats-token, --nats-nkey or --nats-creds"
            );
        }
        for (flag, path) in [
            ("--nats-creds", &self.nats_creds),
            ("--nats-tls-ca", &self.nats_tls_ca),
            ("--nats-tls-cert", &self.nats_tls_cert),
            ("--nats-tls-key", &self.nats_tls_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    bail!("{flag} {}: no such file", path.display());
                }
            }
        }
        let mut options = async_nats::ConnectOptions::new();
        let user = ("--nats-user", &self.nats_user, " (NATS_USER)");
        let password = ("--nats-password", &self.nats_password, " (NATS_PASSWORD)");
        if let Some((user, password)) = together(user, password)? {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.nats_token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nats_nkey {
            // Checked here, because a bad seed would otherwise only show at
            // connect time, as "failed signing nonce".
            if !seed.starts_with("SU") || seed.len() != 58 {
                bail!("--nats-nkey (NATS_NKEY) is not a user nkey seed (58 characters, `SU...`)");
            }
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &self.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading NATS credentials file {}", path.display()))?;
        }
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        let cert = ("--nats-tls-cert", &self.nats_tls_cert, "");
        let key = ("--nats-tls-key", &self.nats_tls_key, "");
        if let Some((cert, key)) = together(cert, key)? {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.nats_require_tls {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

/// Two settings that go together, each as (flag, value, where else it
/// can come from): both or neither. One without the other is an error
/// that names the missing one.
fn together<'a, A, B>(
    (a_flag, a, a_env): (&str, &'a Option<A>, &str),
    (b_flag, b, b_env): (&str, &'a Option<B>, &str),
) -> anyhow::Result<Option<(&'a A, &'a B)>> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (Some(_), None) => bail!("{a_flag} needs {b_flag}{b_env}"),
        (None, Some(_)) => bail!("{b_flag} needs {a_flag}{a_env}"),
        (None, None) => Ok(None),
    }
}

/// `url` with its secrets replaced by [`REDACTED`]: the password (the user
/// name stays), a NATS token given as the user (`nats://token@host`), and
/// query parameters that carry a password, token or secret. Each URL of a
/// comma-separated list is redacted. Text that is not a URL is masked the
/// same way as far as it can be told apart: everything before an `@` in its
/// authority, and `password=...`-like pairs.
pub fn redact(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return redact_text(text);
    };
    if !url.has_host() {
        // `host:4222` parses as a scheme and a path: treat it as text.
        return redact_text(text);
    }
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
    } else if !url.username().is_empty() && is_nats_scheme(url.scheme()) {
        // For NATS, a user name alone is a token.
        let _ = url.set_username(REDACTED);
    }
    if url.query_pairs().any(|(k, _)| is_secret_key(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_key(&k) {
                    REDACTED.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

fn is_nats_scheme(scheme: &str) -> bool {
    matches!(scheme, "nats" | "tls" | "ws" | "wss")
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "token", "secret", "nkey", "seed"]
        .iter()
        .any(|s| key.contains(s))
}

/// Masks what text that is not a URL may hide: the user info of an
/// authority (`scheme://user:pass@host`, or `user:pass@host`), and the
/// values of secret-looking `key=value` pairs.
fn redact_text(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?'])
        .map_or(text.len(), |i| start + i);
    let masked = match text[start..end].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    };
    // key=value pairs, separated by `&`, `?`, `;` or whitespace.
    let mut result = String::with_capacity(masked.len());
    let mut rest = masked.as_str();
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq]
            .rfind(|c: char| c == '&' || c == '?' || c == ';' || c.is_whitespace())
            .map_or(0, |i| i + 1);
        let value_end = rest[eq + 1..]
            .find(|c: char| c == '&' || c == ';' || c.is_whitespace())
            .map_or(rest.len(), |i| eq + 1 + i);
        result.push_str(&rest[..=eq]);
        if is_secret_key(&rest[key_start..eq]) {
            result.push_str(REDACTED);
        } else {
            result.push_str(&rest[eq + 1..value_end]);
        }
        rest = &rest[value_end..];
    }
    result.push_str(rest);
    result
}

/// Query parameters sqlx's Postgres driver understands. sqlx logs any other
/// one with its value, so [`pg`] refuses them instead.
const PG_PARAMETERS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Refuses a `DATABASE_URL` with a query parameter the driver does not
/// know, naming the parameter and not its value (which may be a misspelt
/// password that sqlx would otherwise log).
pub fn check_database_url(url: &str) -> anyhow::Result<()> {
    let Ok(parsed) = url::Url::parse(url) else {
        // sqlx reports the parse error, without the URL.
        return Ok(());
    };
    for (key, _) in parsed.query_pairs() {
        if !PG_PARAMETERS.contains(&key.as_ref()) && !key.starts_with("options[") {
            bail!(
                "DATABASE_URL has a parameter PostgreSQL connections do not take: {key:?} \
                 (known: {})",
                PG_PARAMETERS.join(", ")
            );
        }
    }
    Ok(())
}

/// Connects the event store: applies the migrations, or with
/// `--no-migrate` only checks them. Errors name the URL redacted.
pub async fn pg(args: &ServerArgs) -> anyhow::Result<PgEventStore> {
    let shown = redact(&args.database_url);
    check_database_url(&args.database_url)?;
    let store = if args.no_migrate {
        PgEventStore::connect_migrated(&args.database_url).await
    } else {
        PgEventStore::connect(&args.database_url).await
    };
    store.map_err(|e| {
        // Migration failures (sqlx's "while executing migrations", the
        // store's "apply migrations as the schema's owner") get the way out;
        // connection failures do not need it.
        let migrating = !args.no_migrate && e.to_string().contains("migrat");
        let hint = if migrating {
            " (a role that may not change the schema runs with --no-migrate, after the \
             schema's owner ran `ecommerce migrate`)"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("connecting to PostgreSQL at {shown}{hint}"))
    })
}

/// Connects to NATS with [`ServerArgs::nats`]. See [`connect_nats`].
pub async fn nats(args: &ServerArgs) -> anyhow::Result<async_nats::Client> {
    connect_nats(&args.nats_url, &args.nats).await
}

/// Connects to NATS at `url` with `auth`'s credentials and TLS settings.
///
/// One attempt first: a refused login, a bad seed or a failed TLS handshake
/// is a configuration error that retrying cannot mend, so it is returned
/// at once, with the URL redacted. A server that is not reachable (yet) is
/// not an error: the client keeps trying in the background
/// ([`strata::nats::connect_with`]), so start order does not matter.
pub async fn connect_nats(url: &str, auth: &NatsArgs) -> anyhow::Result<async_nats::Client> {
    let shown = redact(url);
    let first = auth
        .connect_options()
        .await?
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await;
    match first {
        Ok(client) => Ok(client),
        Err(e) if is_unreachable(&e) => {
            tracing::warn!(url = %shown, error = %e, "NATS is not reachable; retrying in the background");
            strata::nats::connect_with(url, auth.connect_options().await?)
                .await
                .with_context(|| format!("connecting to NATS at {shown}"))
        }
        Err(e) => {
            let hint = match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation => {
                    " (check NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY or NATS_CREDS)"
                }
                _ => "",
            };
            Err(anyhow::Error::new(e))
                .with_context(|| format!("connecting to NATS at {shown}{hint}"))
        }
    }
}

/// True for failures that mean "no server there (yet)": refused or reset
/// connections, timeouts, names that do not resolve. Not for a refused
/// login or a TLS failure (rustls reports those as `InvalidData`).
fn is_unreachable(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as K;
    match e.kind() {
        K::TimedOut | K::Dns => true,
        K::Io => {
            let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
            io.is_none_or(|io| io.kind() != std::io::ErrorKind::InvalidData)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_postgres_password_and_keeps_the_rest() {
        assert_eq!(
            redact("postgres://shop:s3cret@db.internal:5432/shop?sslmode=require"),
            "postgres://shop:***@db.internal:5432/shop?sslmode=require"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
    }

    #[test]
    fn redact_hides_passwords_given_as_parameters() {
        let shown = redact("postgres://db/shop?user=shop&password=s3cret&sslmode=require");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("user=shop"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
    }

    #[test]
    fn redact_hides_nats_passwords_and_tokens() {
        assert_eq!(
            redact("nats://app:s3cret@nats:4222"),
            "nats://app:***@nats:4222"
        );
        assert_eq!(redact("nats://s3cret@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact("tls://nats:4222"), "tls://nats:4222");
        assert_eq!(
            redact("nats://a:s3cret@n1:4222,nats://b:0ther@n2:4222"),
            "nats://a:***@n1:4222,nats://b:***@n2:4222"
        );
    }

    #[test]
    fn redact_masks_what_is_not_a_url() {
        for text in [
            "app:s3cret@nats:4222",
            "postgres://u:s3cret@host:notaport/db",
            "host=db user=shop password=s3cret dbname=shop",
        ] {
            let shown = redact(text);
            assert!(!shown.contains("s3cret"), "{text} -> {shown}");
        }
        assert_eq!(redact("nats:4222"), "nats:4222");
        assert_eq!(
            redact("host=db password=s3cret dbname=shop"),
            "host=db password=*** dbname=shop"
        );
    }

    #[test]
    fn unknown_database_parameters_are_refused_by_name_only() {
        let e = check_database_url("postgres://u@h/db?pasword=s3cret").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("\"pasword\""), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        check_database_url("postgres://u:p@h/db?sslmode=require&options[search_path]=x")
            .expect("known parameters pass");
    }

    #[test]
    fn debug_shows_no_secret() {
        let args = ServerArgs {
            database_url: "postgres://u:s3cret@h/db".into(),
            nats_url: "nats://s3cret@h:4222".into(),
            stream: "S".into(),
            subject_prefix: "s".into(),
            no_migrate: false,
            nats: NatsArgs {
                nats_user: Some("app".into()),
                nats_password: Some("s3cret".into()),
                nats_token: None,
                ..NatsArgs::default()
            },
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("app"), "{shown}");
    }

    #[tokio::test]
    async fn contradicting_nats_settings_are_refused_without_secrets() {
        let both = NatsArgs {
            nats_user: Some("app".into()),
            nats_password: Some("s3cret".into()),
            nats_token: Some("t0ken-s3cret".into()),
            ..NatsArgs::default()
        };
        let msg = format!("{:#}", both.connect_options().await.unwrap_err());
        assert!(msg.contains("one way to authenticate"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");

        let no_user = NatsArgs {
            nats_password: Some("s3cret".into()),
            ..NatsArgs::default()
        };
        let msg = format!("{:#}", no_user.connect_options().await.unwrap_err());
        assert!(msg.contains("--nats-user"), "{msg}");

        let bad_seed = NatsArgs {
            nats_nkey: Some("SUs3cret".into()),
            ..NatsArgs::default()
        };
        let msg = format!("{:#}", bad_seed.connect_options().await.unwrap_err());
        assert!(
            msg.contains("nkey seed") && !msg.contains("s3cret"),
            "{msg}"
        );

        let missing = NatsArgs {
            nats_tls_ca: Some("/nonexistent/ca.pem".into()),
            ..NatsArgs::default()
        };
        let msg = format!("{:#}", missing.connect_options().await.unwrap_err());
        assert!(msg.contains("--nats-tls-ca /nonexistent/ca.pem"), "{msg}");
    }
}
