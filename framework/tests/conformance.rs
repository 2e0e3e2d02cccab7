//! The store conformance suite, run against both stores.

mod memory {
    strata::store_conformance_tests!(async { strata::InMemoryEventStore::new() });
}

mod postgres {
    strata::store_conformance_tests!(async {
        let db = strata::testing::test_database().await;
        strata::PgEventStore::new(db.pool)
    });
}
