//! Spans and metrics, captured for real: a recording `tracing` layer and a debugging `metrics`
//! recorder, around sagas run on the memory store.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::telemetry::{Telemetry, TraceContext};
use saga_core::{
    Config, IdempotencyKey, MemoryStore, Orchestrator, RetryPolicy, Saga, SagaDefinition,
    SagaStatus, Step, StepContext, StepError, Store,
};
use tracing::span::{Attributes, Id, Record};
use tracing::{field::Field, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// One captured span: its name, fields and parent.
#[derive(Debug, Clone)]
struct Captured {
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<HashMap<u64, Captured>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.id().into_u64());
        self.spans.lock().unwrap().insert(
            id.into_u64(),
            Captured {
                name: attrs.metadata().name().to_owned(),
                fields,
                parent,
            },
        );
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(span) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

impl Recorder {
    fn spans(&self) -> HashMap<u64, Captured> {
        self.spans.lock().unwrap().clone()
    }
}

/// Two steps; `pay` fails transiently on its first call, and hangs once when asked to.
struct Shop {
    calls: AtomicU32,
    hang_first: bool,
}

async fn reserve(_: Arc<Shop>, _: StepContext<serde_json::Value>) -> Result<String, StepError> {
    Ok("reserved".into())
}

async fn release(
    _: Arc<Shop>,
    _: StepContext<serde_json::Value>,
    _: String,
) -> Result<(), StepError> {
    Ok(())
}

async fn pay(shop: Arc<Shop>, _: StepContext<serde_json::Value>) -> Result<String, StepError> {
    let call = shop.calls.fetch_add(1, Ordering::SeqCst);
    if call == 0 {
        if shop.hang_first {
            std::future::pending::<()>().await;
        }
        return Err(StepError::transient("gateway timeout"));
    }
    Ok("paid".into())
}

impl Saga for Shop {
    type Input = serde_json::Value;

    fn definition() -> SagaDefinition<Self> {
        let retry = RetryPolicy::exponential(3, Duration::from_millis(1));
        SagaDefinition::new("shop", 1)
            .step(
                Step::new("reserve", reserve)
                    .compensate(release)
                    .retry(retry),
            )
            .step(Step::new("pay", pay).irreversible().retry(retry))
    }
}

fn orchestrator(store: Arc<dyn Store>, lease: Duration, telemetry: Telemetry) -> Orchestrator {
    Orchestrator::new(
        store,
        Config::default()
            .lease_ttl(lease)
            .poll_interval(Duration::from_millis(10))
            .telemetry(telemetry),
    )
}

fn shop(hang_first: bool) -> Shop {
    Shop {
        calls: AtomicU32::new(0),
        hang_first,
    }
}

#[tokio::test]
async fn step_spans_are_children_of_the_saga_span_and_carry_its_attributes() {
    let recorder = Recorder::default();
    let _guard = tracing_subscriber::registry()
        .with(recorder.clone())
        .set_default();
    let orchestrator = orchestrator(
        Arc::new(MemoryStore::new()),
        Duration::from_secs(5),
        Telemetry::default(),
    );
    orchestrator.register(shop(false)).unwrap();
    orchestrator.run();
    let trace = TraceContext::generate();
    let id = orchestrator
        .start_traced::<Shop>(None, &serde_json::json!({"card": "4242"}), trace.clone())
        .await
        .unwrap()
        .id();
    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(
        record.trace_context,
        Some(trace.to_string()),
        "stored at start"
    );
    orchestrator.shutdown().await;

    let spans = recorder.spans();
    let sagas: Vec<(&u64, &Captured)> = spans
        .iter()
        .filter(|(_, span)| span.name == "saga")
        .collect();
    assert!(!sagas.is_empty(), "a saga span");
    for (_, span) in &sagas {
        assert_eq!(span.fields["saga.id"], id.to_string());
        assert_eq!(span.fields["saga.type"], "shop");
        assert_eq!(span.fields["trace_id"], trace.trace_id());
        assert!(
            !span.fields.contains_key("input"),
            "inputs are not logged by default"
        );
    }
    let steps: Vec<&Captured> = spans.values().filter(|span| span.name == "step").collect();
    let mut seen: Vec<(String, String, String)> = steps
        .iter()
        .map(|span| {
            (
                span.fields["step.name"].clone(),
                span.fields["attempt"].clone(),
                span.fields["outcome"].clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("pay".into(), "1".into(), "transient".into()),
            ("pay".into(), "2".into(), "ok".into()),
            ("reserve".into(), "1".into(), "ok".into()),
        ]
    );
    for step in &steps {
        let parent = step
            .parent
            .and_then(|parent| spans.get(&parent))
            .expect("a parent");
        assert_eq!(
            parent.name, "saga",
            "step spans are children of the saga span"
        );
        assert_eq!(step.fields["trace_id"], trace.trace_id());
        assert_eq!(step.fields["step.phase"], "action");
        assert_eq!(
            step.fields["idempotency_key"],
            format!("{id}:{}:action", step.fields["step.name"])
        );
        assert!(
            !step.fields.contains_key("output"),
            "outputs are not logged by default"
        );
    }
    let failed = steps
        .iter()
        .find(|step| step.fields["outcome"] == "transient")
        .unwrap();
    assert_eq!(
        failed.fields["error"], "transient: gateway timeout",
        "errors on the span"
    );
}

#[tokio::test]
async fn a_resumed_saga_stays_in_the_trace_it_started_in() {
    let recorder = Recorder::default();
    let _guard = tracing_subscriber::registry()
        .with(recorder.clone())
        .set_default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = orchestrator(
        store.clone(),
        Duration::from_millis(300),
        Telemetry::default(),
    );
    first.register(shop(true)).unwrap();
    first.run();
    let trace =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let id = first
        .start_traced::<Shop>(
            Some(IdempotencyKey::new("order-1")),
            &serde_json::json!({}),
            trace.clone(),
        )
        .await
        .unwrap()
        .id();
    // `pay` hangs on its first call: wait for it, then crash the first orchestrator.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorder.spans().values().all(|span| {
        span.name != "step" || span.fields.get("step.name").map(String::as_str) != Some("pay")
    }) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    let second = orchestrator(store, Duration::from_millis(300), Telemetry::default());
    second.register(shop(false)).unwrap();
    second.run();
    assert_eq!(
        second
            .wait(id, Duration::from_secs(10))
            .await
            .unwrap()
            .status,
        SagaStatus::Completed
    );
    second.shutdown().await;

    let spans = recorder.spans();
    let saga_spans = spans.values().filter(|span| span.name == "saga").count();
    assert!(saga_spans >= 2, "one drive per orchestrator: {saga_spans}");
    for span in spans
        .values()
        .filter(|span| span.name == "saga" || span.name == "step")
    {
        assert_eq!(
            span.fields["trace_id"],
            trace.trace_id(),
            "every span of the saga, before and after the crash, is in the caller's trace: {span:?}"
        );
    }
    let pays: Vec<&Captured> = spans
        .values()
        .filter(|span| span.name == "step" && span.fields["step.name"] == "pay")
        .collect();
    assert!(
        pays.len() >= 2,
        "the interrupted attempt and the resumed one"
    );
}

#[tokio::test]
async fn payloads_are_logged_only_when_asked_and_then_redacted() {
    let recorder = Recorder::default();
    let _guard = tracing_subscriber::registry()
        .with(recorder.clone())
        .set_default();
    let telemetry = Telemetry {
        log_payloads: true,
        redact: Some(Arc::new(|value: &mut serde_json::Value| {
            if let Some(card) = value.get_mut("card") {
                *card = serde_json::Value::String("[redacted]".into());
            }
        })),
    };
    let orchestrator = orchestrator(
        Arc::new(MemoryStore::new()),
        Duration::from_secs(5),
        telemetry,
    );
    orchestrator.register(shop(false)).unwrap();
    orchestrator.run();
    let id = orchestrator
        .start::<Shop>(&serde_json::json!({"card": "4242-4242", "sku": "A"}))
        .await
        .unwrap();
    orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    orchestrator.shutdown().await;
    let spans = recorder.spans();
    let saga = spans.values().find(|span| span.name == "saga").unwrap();
    assert_eq!(saga.fields["input"], r#"{"card":"[redacted]","sku":"A"}"#);
    assert!(spans.values().all(|span| span
        .fields
        .values()
        .all(|value| !value.contains("4242-4242"))));
    let outputs: Vec<&str> = spans
        .values()
        .filter_map(|span| span.fields.get("output").map(String::as_str))
        .collect();
    assert!(outputs.contains(&r#""paid""#), "{outputs:?}");
}
