//! The view-store conformance suite, run against both view stores: every
//! case on a fresh `InMemoryViewStore` and on a `PgViewStore` over a fresh
//! database.

mod memory {
    strata::view_store_conformance_tests!(async { strata::InMemoryViewStore::new() });
}

mod postgres {
    strata::view_store_conformance_tests!(async {
        let db = strata::testing::test_database().await;
        strata::PgViewStore::new(db.pool)
    });
}

/// Key order does not depend on the database's collation: on a database
/// whose default collation is ICU `en-US` (where `B` sorts after `b` and
/// `a_2` before `a-1`), listings still come in byte order, as in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_key_order_ignores_the_database_collation() {
    use sqlx::{Connection, Executor};

    let db = strata::testing::test_database().await;
    // A second database beside the fresh one, named like it so stale ones
    // are dropped by later runs, with a collation unlike byte order.
    let name = format!("{}_icu", db.name);
    let mut admin = sqlx::PgConnection::connect(&strata::testing::database_url())
        .await
        .unwrap();
    // `name` is built from the test database's validated name only.
    admin
        .execute(
            format!(
                "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' \
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
            .as_str(),
        )
        .await
        .unwrap();
    let url = db.url.replace(&db.name, &name);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    strata::postgres::migrate(&pool).await.unwrap();
    let sorted: Vec<String> =
        sqlx::query_scalar("SELECT k FROM unnest(ARRAY['a', 'B', 'a-1', 'a_2']) k ORDER BY k")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_ne!(
        sorted,
        ["B", "a", "a-1", "a_2"],
        "the database sorts bytewise"
    );

    strata::testing::view_conformance::list_in_key_order(strata::PgViewStore::new(pool.clone()))
        .await;
    pool.close().await;
    let _ = admin
        .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await;
}
