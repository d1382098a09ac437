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
