//! Scrapes the metrics example's Prometheus output after its known workload and checks the
//! counters.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(port: u16) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counters_match_a_known_workload() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("metrics.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(example::binary("metrics"))
        .args([
            "--db",
            &db,
            "--sagas",
            "40",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the metrics example");

    // Scrape until all 40 sagas finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the example exited early"
        );
        if let Some(metrics) = scrape(port).await {
            let finished = sample(
                &metrics,
                r#"saga_finished_total{saga_type="checkout",status="completed"}"#,
            )
            .unwrap_or(0.0)
                + sample(
                    &metrics,
                    r#"saga_finished_total{saga_type="checkout",status="compensated"}"#,
                )
                .unwrap_or(0.0);
            if finished >= 40.0 {
                break metrics;
            }
        }
        assert!(Instant::now() < deadline, "the workload did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let expect = [
        (r#"saga_started_total{saga_type="checkout"}"#, 40.0),
        (r#"saga_start_dedup_total{saga_type="checkout"}"#, 40.0),
        (
            r#"saga_finished_total{saga_type="checkout",status="completed"}"#,
            30.0,
        ),
        (
            r#"saga_finished_total{saga_type="checkout",status="compensated"}"#,
            10.0,
        ),
        (
            r#"saga_compensations_started_total{saga_type="checkout"}"#,
            10.0,
        ),
        (
            r#"saga_compensation_duration_seconds_count{saga_type="checkout",outcome="compensated"}"#,
            10.0,
        ),
        (
            r#"saga_step_retries_total{saga_type="checkout",step="pay",phase="action"}"#,
            10.0,
        ),
        (
            r#"saga_step_attempts_total{saga_type="checkout",step="pay",phase="action",outcome="transient"}"#,
            10.0,
        ),
        (
            r#"saga_step_attempts_total{saga_type="checkout",step="pay",phase="action",outcome="permanent"}"#,
            10.0,
        ),
        (
            r#"saga_step_attempts_total{saga_type="checkout",step="pay",phase="action",outcome="ok"}"#,
            30.0,
        ),
        (
            r#"saga_step_attempts_total{saga_type="checkout",step="reserve",phase="compensation",outcome="ok"}"#,
            10.0,
        ),
        (
            r#"saga_step_attempts_total{saga_type="checkout",step="ship",phase="action",outcome="ok"}"#,
            30.0,
        ),
        (
            r#"saga_step_attempts_total{saga_type="checkout",step="notify",phase="action",outcome="ok"}"#,
            10.0,
        ),
        (
            r#"saga_policy_skips_total{saga_type="checkout",step="notify",policy="order_notices"}"#,
            20.0,
        ),
        (
            r#"saga_integration_duration_seconds_count{integration="payments_api"}"#,
            50.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&metrics, series), Some(value), "{series}\n{metrics}");
    }
    assert_eq!(
        sample(&metrics, "saga_interventions_open"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"saga_compensation_duration_seconds_count{saga_type="checkout",outcome="needs_intervention"}"#
        ),
        None,
        "no compensation failed: {metrics}"
    );
    assert!(
        metrics.contains("saga_step_duration_seconds"),
        "step duration histogram: {metrics}"
    );
    assert!(
        metrics.contains("saga_claim_duration_seconds"),
        "claim latency: {metrics}"
    );
}
