//! Least privilege in PostgreSQL: the schema's owner migrates and runs
//! `migrations/roles.sql`; every process of the shop then runs as a service
//! role that cannot change the schema (`--no-migrate`), and an order still
//! goes all the way to `confirmed`. The service role cannot create tables
//! in public, nor drop, update or delete events.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use strata::testing::{nats_url, test_database, unique_stream, wait_until};

mod support;

use support::{dev_issuer, staff_client, ShopEnv, ShopProcesses, BIN};

const ROLES_SQL: &str = include_str!("../../migrations/roles.sql");

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `migrations/roles.sql` with its psql variables filled in, as
/// `psql -v service_role=... -f migrations/roles.sql` in database `db` would.
fn roles_sql(service_role: &str, db: &str) -> String {
    let sql = ROLES_SQL
        .replace(":\"service_role\"", &quote_ident(service_role))
        .replace(":'service_role'", &format!("'{service_role}'"))
        .replace(":\"DBNAME\"", &quote_ident(db));
    for line in sql.lines().filter(|l| !l.trim_start().starts_with("--")) {
        let unfilled = line
            .split("::")
            .any(|part| part.contains(":\"") || part.contains(":'") || part.contains(":DBNAME"));
        assert!(
            !unfilled,
            "roles.sql has a psql variable the test does not fill: {line}"
        );
    }
    sql
}

/// The service role, dropped (with what it owns) when the test ends, pass
/// or fail.
struct ServiceRole {
    name: String,
    admin_url: String,
}

impl Drop for ServiceRole {
    fn drop(&mut self) {
        let (name, url) = (quote_ident(&self.name), self.admin_url.clone());
        let role = self.name.clone();
        // Drop runs outside any async context it could use: a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut c = PgConnection::connect(&url).await?;
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                )
                .bind(&role)
                .execute(&mut c)
                .await?;
                sqlx::raw_sql(&format!(
                    "REASSIGN OWNED BY {name} TO CURRENT_USER; DROP OWNED BY {name}; \
                     DROP ROLE IF EXISTS {name}"
                ))
                .execute(&mut c)
                .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
    }
}

/// Runs the binary to completion; (succeeded, stdout and stderr).
fn run(args: &[&str], database_url: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("NATS_URL", nats_url())
        .env_remove("STRATA_NO_MIGRATE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The SQLSTATE of what `sql` fails with, run as the service role.
async fn refused(conn: &mut PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Ok(_) => panic!("the service role was allowed to: {sql}"),
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
            .unwrap_or_else(|| panic!("{sql}: {e}")),
    }
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let resp = http.post(&url).json(&body).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_as_a_service_role_without_ddl_rights() {
    // The owner (here the superuser that made the database) has migrated.
    let db = test_database().await;
    let role = ServiceRole {
        name: format!(
            "strata_svc_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
        admin_url: db.url.clone(),
    };
    sqlx::raw_sql(&format!("CREATE ROLE {} LOGIN", quote_ident(&role.name)))
        .execute(&db.pool)
        .await
        .unwrap();
    // A view table an earlier deployment made in public, as the owner.
    sqlx::raw_sql(
        "CREATE TABLE strata_view_low_stock_v1 (key TEXT COLLATE \"C\" PRIMARY KEY, \
         doc JSONB NOT NULL, position BIGINT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql(&roles_sql(&role.name, &db.name))
        .execute(&db.pool)
        .await
        .expect("roles.sql applies");
    // Twice: it converges.
    sqlx::raw_sql(&roles_sql(&role.name, &db.name))
        .execute(&db.pool)
        .await
        .expect("roles.sql applies again");

    let mut service_url = url::Url::parse(&db.url).unwrap();
    service_url.set_username(&role.name).unwrap();
    service_url.set_password(None).unwrap();
    let service_url = service_url.to_string();

    // What the role may not do.
    let mut conn = PgConnection::connect(&service_url).await.unwrap();
    for sql in [
        "CREATE TABLE public.intruder (id int)",
        "DROP TABLE strata_events",
        "DELETE FROM strata_events",
        "UPDATE strata_events SET payload = '{}'",
        "TRUNCATE strata_events",
        "ALTER TABLE strata_streams ADD COLUMN x int",
    ] {
        assert_eq!(refused(&mut conn, sql).await, "42501", "{sql}");
    }
    // Migrating is the owner's: the service role is refused before its
    // search_path could send a second event store into strata_views.
    // Checking the schema needs no DDL.
    let (ok, out) = run(&["migrate"], &service_url);
    assert!(!ok, "the service role migrated:\n{out}");
    assert!(
        out.contains("apply migrations as the schema's owner") && out.contains("--no-migrate"),
        "{out}"
    );
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'strata_views' \
            AND tablename NOT LIKE 'strata\\_view\\_%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(strays, 0, "migrate made tables in strata_views");
    let (ok, out) = run(&["migrate", "--no-migrate"], &service_url);
    assert!(ok && out.contains("schema is up to date"), "{out}");

    // Every process of the shop, as the service role.
    let cfg = unique_stream();
    // The APIs trust a development issuer made for this test.
    let (identity, issuer_dir) = dev_issuer("roles");
    // Staff and operator by default; the order is placed as its customer.
    let http = staff_client(&identity, "sam");
    let as_ada = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                identity.bearer("ada").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let env = ShopEnv {
        db_url: service_url.clone(),
        stream: cfg.clone(),
        issuer_dir,
        no_migrate: true,
    };
    let procs = ShopProcesses::start(env, &http).await;
    let (cmd, query) = (procs.cmd.clone(), procs.query.clone());

    post(
        &http,
        format!("{cmd}/products"),
        json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 1250 }),
    )
    .await;
    post(
        &http,
        format!("{cmd}/inventory/MUG-01/restock"),
        json!({ "quantity": 10 }),
    )
    .await;
    let placed = post(
        &as_ada,
        format!("{cmd}/orders"),
        json!({ "lines": [{ "sku": "MUG-01", "quantity": 2 }] }),
    )
    .await;
    let order = placed["order_id"].as_str().expect("an order id").to_owned();
    wait_until(
        Duration::from_secs(60),
        "the order to be confirmed in order_details",
        || async {
            let Ok(r) = http.get(format!("{query}/orders/{order}")).send().await else {
                return false;
            };
            let v: Value = r.json().await.unwrap_or(Value::Null);
            v["data"]["status"] == json!("confirmed")
        },
    )
    .await;

    // The view tables are the service role's, in strata_views only; the
    // one an earlier deployment made in public moved there.
    let tables: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text, tableowner::text FROM pg_tables \
          WHERE tablename LIKE 'strata\\_view\\_%' AND tablename <> 'strata_view_versions' \
          ORDER BY 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let names: Vec<&str> = tables.iter().map(|(_, t, _)| t.as_str()).collect();
    for view in ["strata_view_order_details_v1", "strata_view_low_stock_v1"] {
        assert!(names.contains(&view), "{view} missing from {tables:?}");
    }
    for (schema, table, owner) in &tables {
        assert_eq!(
            (schema.as_str(), owner.as_str()),
            ("strata_views", role.name.as_str()),
            "{table}"
        );
    }

    drop(procs);
    let _ = conn.close().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let _ = js.delete_stream(&cfg.stream).await;
}
