//! The OTLP exporter end to end: an in-process OTLP/gRPC receiver (the collector's
//! `TraceService`) on a loopback port, and two real processes exporting to it with
//! `saga::init_otlp`. The first starts a saga and is killed (SIGKILL) after its first step
//! completed; the second resumes it to the end. Every span of the saga, from both processes,
//! arrives in one trace: the trace of the span the saga was started in.
//!
//! When to kill: a process killed with SIGKILL loses the spans its batch exporter has not sent
//! yet. The children export every 100 ms (`OTEL_BSP_SCHEDULE_DELAY`), and the first is killed
//! only once it called the second step (so the first is recorded completed) and the receiver
//! holds the first step's span: what arrives is asserted, with no sleep and no flush hook in the
//! library.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tonic::transport::server::TcpIncoming;

const FIRST: &str = "otlp-e2e-first";
const RESUME: &str = "otlp-e2e-resume";

/// One span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// Whether this span is one of saga `id`'s: a drive (`saga.id`) or a step attempt (its
    /// idempotency key starts with the saga id).
    fn of_saga(&self, id: &str) -> bool {
        self.attribute("saga.id") == Some(id)
            || self
                .attribute("idempotency_key")
                .is_some_and(|key| key.starts_with(&format!("{id}:")))
    }

    fn is_step(&self, service: &str, step: &str) -> bool {
        self.service == service && self.name == "step" && self.attribute("step.name") == Some(step)
    }
}

/// The collector's trace service, keeping what it receives.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|attribute| {
            let value = match attribute
                .value
                .as_ref()
                .and_then(|value| value.value.as_ref())
            {
                Some(any_value::Value::StringValue(text)) => text.clone(),
                Some(any_value::Value::IntValue(number)) => number.to_string(),
                Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
                Some(any_value::Value::DoubleValue(number)) => number.to_string(),
                other => format!("{other:?}"),
            };
            (attribute.key.clone(), value)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = text(
                resource_spans
                    .resource
                    .as_ref()
                    .map_or(&[][..], |resource| &resource.attributes),
            );
            let service = resource
                .iter()
                .find(|(key, _)| key == "service.name")
                .map(|(_, name)| name.clone())
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: text(&span.attributes),
                });
            }
        }
        self.spans.lock().unwrap().extend(received);
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a received span satisfies `wanted`.
    async fn wait_for(&self, what: &str, wanted: impl Fn(&Received) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let arrived = self.arrived.notified();
            if self.spans().iter().any(&wanted) {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, arrived).await.is_ok(),
                "no {what} arrived within 30 s; received: {:#?}",
                self.spans()
            );
        }
    }
}

/// The child process (this crate's binary) in `role`, exporting to `endpoint` every 100 ms.
fn child(db: &str, endpoint: &str, role: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saga-otlp-e2e"));
    command
        .arg(db)
        .arg(endpoint)
        .args(role)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        // `init_otlp` filters every layer by `RUST_LOG`: the spans exported are those enabled here.
        .env("RUST_LOG", "warn,saga_core=info,saga_otlp_e2e=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Reads `child`'s stdout until a line starts with `prefix`; returns the rest of that line.
async fn line_after(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("the child closed its stdout before printing `{prefix}`")
    })
    .await;
    found.unwrap_or_else(|_| panic!("no `{prefix}` line within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_resumed_after_a_crash_arrives_at_the_collector_as_one_trace() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            TraceServiceServer::new(receiver.clone()),
            TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("orders.db").display());

    // The first process: `reserve` completes, `pay` hangs. Killed once `pay` was called and the
    // receiver holds `reserve`'s span.
    let mut first = child(&db, &endpoint, &["first"]).spawn().unwrap();
    let id = line_after(&mut first, "paying ").await;
    receiver
        .wait_for("span of `reserve` from the first process", |span| {
            span.is_step(FIRST, "reserve") && span.of_saga(&id)
        })
        .await;
    first.kill().await.unwrap();

    // The second process resumes the saga once the first's lease expired, and exits cleanly.
    let mut resume = child(&db, &endpoint, &["resume", &id]).spawn().unwrap();
    assert_eq!(line_after(&mut resume, "completed ").await, id);
    let status = tokio::time::timeout(Duration::from_secs(30), resume.wait())
        .await
        .expect("the resuming process exits")
        .unwrap();
    assert!(status.success(), "the resuming process failed: {status:?}");
    // Its exporter was flushed before it exited; the receiver has answered every export.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the receiver stops once its clients are gone")
        .unwrap()
        .unwrap();

    let spans = receiver.spans();
    let saga: Vec<&Received> = spans.iter().filter(|span| span.of_saga(&id)).collect();
    let from = |service: &str| -> Vec<&Received> {
        saga.iter()
            .copied()
            .filter(|span| span.service == service)
            .collect()
    };
    assert!(!from(FIRST).is_empty(), "spans from the first process");
    assert!(!from(RESUME).is_empty(), "spans from the resuming process");

    // One trace for the whole saga, before and after the crash: the caller's.
    let traces: BTreeSet<&str> = saga.iter().map(|span| span.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "one trace: {saga:#?}");
    let trace = *traces.first().unwrap();
    let caller = spans
        .iter()
        .find(|span| span.service == FIRST && span.name == "place_order")
        .expect("the span the saga was started in");
    assert_eq!(
        caller.trace_id, trace,
        "the saga continues its caller's trace"
    );
    for span in &saga {
        assert_eq!(
            span.attribute("trace_id"),
            Some(trace),
            "the stored trace id, recorded on the span, is the exported one: {span:#?}"
        );
    }

    // The resuming process's drive continues the caller's span, and its steps are in it.
    let drive = from(RESUME)
        .into_iter()
        .find(|span| span.name == "saga")
        .expect("the resumed drive's `saga` span");
    assert_eq!(drive.parent_span_id, caller.span_id, "{drive:#?}");
    for step in ["pay", "ship"] {
        let span = saga
            .iter()
            .find(|span| span.is_step(RESUME, step))
            .unwrap_or_else(|| panic!("the resumed `{step}` step's span: {saga:#?}"));
        assert_eq!(span.trace_id, trace);
        assert_eq!(span.parent_span_id, drive.span_id, "{span:#?}");
    }
    assert!(
        !saga.iter().any(|span| span.is_step(RESUME, "reserve")),
        "the completed step did not run again"
    );
}
