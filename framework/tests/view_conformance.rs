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
