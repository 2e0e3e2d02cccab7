//! The schema: applying the migrations, and checking that they are applied.

use std::collections::HashMap;

use sqlx::PgPool;

use super::errors::is_undefined_table;
use crate::error::{Result, StoreError};

/// The schema in `migrations/`, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies the schema in `migrations/` (idempotent). Needs a role that may
/// change the schema (its owner).
///
/// Refuses, changing nothing, when the schema was migrated in one schema
/// but this connection would create tables in another (the first schema
/// on its `search_path`): the migrator's `CREATE TABLE IF NOT EXISTS`
/// would then build a second, empty event store there, which every later
/// query on that path would read. A service role whose path starts with
/// the view schema (see `migrations/roles.sql`) meets exactly this.
pub async fn migrate(pool: &PgPool) -> std::result::Result<(), sqlx::migrate::MigrateError> {
    let (target, migrated): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT current_schema()::text, \
                (SELECT n.nspname::text FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid = to_regclass('_sqlx_migrations'))",
    )
    .fetch_one(pool)
    .await?;
    if let (Some(target), Some(migrated)) = (target, migrated) {
        if target != migrated {
            return Err(sqlx::Error::Configuration(
                format!(
                    "the schema was migrated in schema {migrated:?}, but this role would \
                     create tables in {target:?} (the first schema on its search_path); \
                     apply migrations as the schema's owner"
                )
                .into(),
            )
            .into());
        }
    }
    MIGRATOR.run(pool).await
}

/// Checks, changing nothing, that the database `pool` reaches has every
/// migration of `migrations/` applied, with the checksums this build knows,
/// and none that this build does not know (the same conditions as
/// [`migrate`], which refuses a database a newer build migrated).
///
/// This is what a process whose database role may not run DDL does instead
/// of [`migrate`] (see `docs/deployment-security.md`): the schema's owner
/// migrates, the services only check. Needs `SELECT` on `_sqlx_migrations`.
pub async fn check_migrated(pool: &PgPool) -> Result<()> {
    let not_ready = |why: String| {
        StoreError::backend(format!(
            "the database schema is not up to date: {why}; apply the migrations as the \
             schema's owner first (`ecommerce migrate`)"
        ))
    };
    let applied: Vec<(i64, Vec<u8>, bool)> =
        match sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) if is_undefined_table(&e) => {
                return Err(not_ready("no migration has been applied".into()))
            }
            Err(e) => return Err(StoreError::backend(e)),
        };
    let applied: HashMap<i64, (Vec<u8>, bool)> = applied
        .into_iter()
        .map(|(v, checksum, ok)| (v, (checksum, ok)))
        .collect();
    let known: Vec<_> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    for m in &known {
        match applied.get(&m.version) {
            None => {
                return Err(not_ready(format!(
                    "migration {} ({}) is not applied",
                    m.version, m.description
                )))
            }
            Some((_, false)) => {
                return Err(not_ready(format!(
                    "migration {} ({}) failed part way",
                    m.version, m.description
                )))
            }
            Some((checksum, true)) if checksum[..] != m.checksum[..] => {
                return Err(not_ready(format!(
                    "migration {} ({}) was applied from a different file",
                    m.version, m.description
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(v) = applied
        .keys()
        .find(|v| !known.iter().any(|m| m.version == **v))
    {
        return Err(StoreError::backend(format!(
            "the database has migration {v}, which this build does not know: a newer build \
             migrated it"
        )));
    }
    Ok(())
}
