//! Test helpers: fresh Postgres databases per test, the conformance suites
//! of event stores, view stores and event buses, and connection defaults
//! that fail loudly.

pub mod bus_conformance;
pub mod conformance;
pub mod view_conformance;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// How to start Postgres on a machine of this project's kind.
pub const START_POSTGRES: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// How to start NATS with JetStream on a machine of this project's kind.
pub const START_NATS: &str = "start-stop-daemon --start --oknodo --background \
     --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
     -l /var/log/nats-server.log";

/// `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `NATS_URL`, or the local default.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

const PREFIX: &str = "strata_test_";
/// Test databases older than this are dropped by later test runs.
const STALE_AFTER: Duration = Duration::from_secs(3 * 3600);

/// A fresh database with the schema applied, for one test.
///
/// Its name carries its creation time; databases of earlier runs older than
/// three hours are dropped when a new one is made.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// A pool on the new database.
    pub pool: PgPool,
    /// The database's name.
    pub name: String,
    /// A URL that reaches the new database (for child processes).
    pub url: String,
}

/// Creates a fresh, migrated database. Panics with instructions when
/// Postgres cannot be reached: a test never skips silently.
pub async fn test_database() -> TestDatabase {
    let admin_url = database_url();
    let admin_opts: PgConnectOptions = crate::store::postgres::connect_options(&admin_url)
        .unwrap_or_else(|e| panic!("DATABASE_URL {admin_url:?} is not a Postgres URL: {e}"));
    let mut admin = match tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&admin_opts),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "cannot reach PostgreSQL at {admin_url}: {e}\n\
             Start it with:\n    {START_POSTGRES}\n\
             or point DATABASE_URL at a running server."
        ),
        Err(_) => panic!(
            "timed out connecting to PostgreSQL at {admin_url}\n\
             Start it with:\n    {START_POSTGRES}"
        ),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    drop_stale(&mut admin, now).await;
    let name = format!("{PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
    // Identifiers cannot be bound as parameters; `name` is built here from
    // digits, hex and a fixed prefix only.
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
    let _ = admin.close().await;
    let opts = admin_opts
        .clone()
        .database(&name)
        .log_statements(tracing::log::LevelFilter::Trace);
    let pool = crate::store::postgres::pool_options()
        .max_connections(12)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test database {name}: {e}"));
    crate::store::postgres::migrate(&pool)
        .await
        .unwrap_or_else(|e| panic!("migrations failed on {name}: {e}"));
    let url = with_database(&admin_url, &name);
    TestDatabase { pool, name, url }
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

async fn drop_stale(admin: &mut PgConnection, now: u64) {
    let names: Vec<String> =
        match sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{PREFIX}%"))
            .fetch_all(&mut *admin)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
    for name in names {
        let created = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        let safe = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if let (Some(created), true) = (created, safe) {
            if now.saturating_sub(created) > STALE_AFTER.as_secs() {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut *admin)
                    .await;
            }
        }
    }
}

/// Waits until `check` returns true, polling every 10 ms, for at most
/// `bound`. Panics with `what` if the bound passes: tests wait on
/// conditions, never on fixed sleeps.
pub async fn wait_until<F, Fut>(bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {bound:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects to NATS (`NATS_URL` or the local default). Panics with
/// instructions when it is unreachable: a test never skips silently.
pub async fn nats_client() -> async_nats::Client {
    let url = nats_url();
    match tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(&url),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "cannot reach NATS at {url}: {e}\nStart it (with JetStream) with:\n    {START_NATS}\n\
             or point NATS_URL at a running server."
        ),
        Err(_) => panic!("timed out connecting to NATS at {url}\nStart it with:\n    {START_NATS}"),
    }
}

/// A stream name and subject prefix no other test uses.
pub fn unique_stream() -> crate::StreamConfig {
    let id = uuid::Uuid::new_v4().simple().to_string();
    crate::StreamConfig::new(format!("T_{}", &id[..16]), format!("t{}", &id[..12]))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_in_a_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "y"),
            "postgres://u@h/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "z"), "postgres://u@h/z");
    }
}
