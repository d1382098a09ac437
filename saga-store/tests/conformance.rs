//! Runs the store conformance suite on every embedded backend.
use saga_store::SqliteStore;
saga_store::conformance_suite!(memory, async { saga_core::MemoryStore::new() });
saga_store::conformance_suite!(sqlite, async {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("conformance-{}.db", saga_core::SagaId::new()));
    SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open sqlite")
});
saga_store::conformance_suite!(postgres, async {
    let url = saga_store::testing::TestPg::fresh_database()
        .await
        .expect("a test database");
    saga_store::PgStore::connect(&url)
        .await
        .expect("connect to the test database")
});
