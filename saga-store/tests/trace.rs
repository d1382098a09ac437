//! The statement that writes a saga shows in its caller's trace: a binary of its own, since the
//! check installs a thread's tracing subscriber, and tests running beside it in one process
//! race it for the callsites' cached interest.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use saga_core::Store;
use saga_store::testing::TestPg;
use saga_store::PgStore;

/// A saga of `saga_type` with input `n`, created idle (no lease, nothing begun).
fn new_saga(saga_type: &str, n: u32) -> saga_core::NewSaga {
    saga_core::NewSaga {
        id: saga_core::SagaId::new(),
        saga_type: saga_core::SagaType::new(saga_type),
        version: 1,
        fingerprint: "fp".to_owned(),
        input: serde_json::json!(n),
        input_hash: format!("h{n}"),
        idempotency_key: None,
        trace_context: None,
        lease: None,
        changes: Vec::new(),
        deadline: None,
        dedup_window: None,
        parent: None,
    }
}

/// The name of the one step the grouping tests begin.
const FIRST: &str = "first";

/// A saga of `saga_type` with input `n`, created leased to `worker` until `until` with its
/// first step ([`FIRST`]) running.
fn running_saga(
    saga_type: &str,
    n: u32,
    worker: &saga_core::WorkerId,
    until: saga_core::Timestamp,
) -> saga_core::NewSaga {
    use saga_core::{Attempt, Change, IdempotencyKey, Phase, StepIndex, StepName};
    let mut saga = new_saga(saga_type, n);
    let name = StepName::new(FIRST);
    saga.lease = Some((worker.clone(), until));
    saga.changes = vec![Change::BeginStep {
        index: StepIndex(0),
        key: IdempotencyKey::for_step(saga.id, &name, Phase::Action),
        name,
        phase: Phase::Action,
        attempt: Attempt(1),
    }];
    saga
}

/// The lease a saga made by [`running_saga`] was created with.
fn first_lease(
    saga: saga_core::SagaId,
    worker: &saga_core::WorkerId,
    until: saga_core::Timestamp,
) -> saga_core::Lease {
    saga_core::Lease {
        saga,
        owner: worker.clone(),
        token: saga_core::FencingToken(1),
        expires_at: until,
        taken_over_from: None,
    }
}

/// `count` sagas of `saga_type` created leased to `worker` until `until`, their first step running.
async fn running_sagas(
    store: &PgStore,
    saga_type: &str,
    count: u32,
    worker: &saga_core::WorkerId,
    until: saga_core::Timestamp,
) -> Vec<saga_core::SagaId> {
    let mut sagas = Vec::new();
    for n in 0..count {
        let saga = running_saga(saga_type, n, worker, until);
        sagas.push(saga.id);
        store.create(saga).await.unwrap();
    }
    sagas
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// A span as a tracing subscriber sees it: id, name, its `n` or `sagas` field, and parent.
type Seen = (u64, &'static str, Option<u64>, Option<u64>);

/// The spans opened while it is the subscriber.
#[derive(Clone, Default)]
struct Spans(Arc<std::sync::Mutex<Vec<Seen>>>);

struct Number<'a>(&'a mut Option<u64>);

impl tracing::field::Visit for Number<'_> {
    fn record_u64(&mut self, _: &tracing::field::Field, value: u64) {
        *self.0 = Some(value);
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut number = None;
        attrs.record(&mut Number(&mut number));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.id().into_u64());
        self.0
            .lock()
            .unwrap()
            .push((id.into_u64(), attrs.metadata().name(), number, parent));
    }
}

/// A current-thread runtime, so that the subscriber set for this thread also sees the store's
/// writer tasks.
#[tokio::test]
async fn each_write_shows_in_its_callers_trace_as_the_statement_that_wrote_it() {
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spans = Spans::default();
    let _subscriber = tracing_subscriber::registry()
        .with(spans.clone())
        .set_default();
    let url = TestPg::fresh_database().await.unwrap();
    let store = Arc::new(PgStore::connect(&url).await.unwrap());
    let worker = saga_core::WorkerId::new("traced");
    let until = saga_core::after(saga_core::now(), Duration::from_secs(60));
    let sagas = running_sagas(&store, "traced", 24, &worker, until).await;
    // All at once: the first caller writes alone, the others wait for the writers, which
    // group them.
    let writes = sagas.iter().enumerate().map(|(n, id)| {
        let span = tracing::info_span!("caller", n = n as u64);
        let store = Arc::clone(&store);
        let lease = first_lease(*id, &worker, until);
        let change = saga_core::Change::CompleteStep {
            index: saga_core::StepIndex(0),
            name: saga_core::StepName::new(FIRST),
            phase: saga_core::Phase::Action,
            attempt: saga_core::Attempt(1),
            output: None,
        };
        async move { store.apply(&lease, &[change]).await }.instrument(span)
    });
    for outcome in futures_join_all(writes).await {
        outcome.unwrap();
    }
    let spans = spans.0.lock().unwrap().clone();
    let callers: Vec<u64> = spans
        .iter()
        .filter(|(_, name, _, _)| *name == "caller")
        .map(|(id, ..)| *id)
        .collect();
    assert_eq!(callers.len(), 24);
    let writes: Vec<(Option<u64>, Option<u64>)> = spans
        .iter()
        .filter(|(_, name, _, _)| *name == "store_write")
        .map(|(_, _, sagas, parent)| (*sagas, *parent))
        .collect();
    for caller in &callers {
        assert!(
            writes.iter().any(|(_, parent)| parent == &Some(*caller)),
            "every caller's trace shows the statement that wrote its saga: {writes:?}"
        );
    }
    assert!(
        writes.iter().any(|(sagas, _)| sagas.is_some_and(|n| n > 1)),
        "some statements carried several sagas' writes: {writes:?}"
    );
    store.close().await;
}
