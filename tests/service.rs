//! Two instances of the service example on one Postgres database: both serve requests and drive
//! sagas; idempotency keys dedup across instances; SIGTERM shuts each down gracefully.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The service binary, (re)built by cargo so that it matches the sources under test.
fn service_binary() -> PathBuf {
    example::binary("service")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request over a fresh connection; returns (status, JSON body).
async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn post_order(port: u16, key: &str, body: &str) -> (u16, Value) {
    request(
        port,
        "POST",
        "/orders",
        &[
            ("Idempotency-Key", key),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
}

async fn wait_ready(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("the service exited at start-up ({status}): {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "the service did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn order(n: u64) -> String {
    format!(
        r#"{{"customer":"c{n}@example.com","sku":"SKU-{n}","quantity":1,"amount_cents":{}}}"#,
        1000 + n
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_database_and_shut_down_gracefully() {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let binary = service_binary();
    let ports = [free_port(), free_port()];
    let mut children: Vec<Child> = ports
        .iter()
        .enumerate()
        .map(|(n, port)| {
            Command::new(&binary)
                .args(["--db", &url, "--listen", &format!("127.0.0.1:{port}")])
                .args(["--name", &format!("instance-{}", n + 1)])
                .args(["--charge-latency-ms", "600"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the service")
        })
        .collect();
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        wait_ready(*port, child).await;
    }

    // Orders go to alternating instances.
    let mut ids = Vec::new();
    for n in 0..40u64 {
        let port = ports[(n % 2) as usize];
        let (status, body) = post_order(port, &format!("order-{n}"), &order(n)).await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // The same key and body, on the other instance: the existing saga.
    let (status, body) = post_order(ports[1], "order-0", &order(0)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"].as_str(), Some(ids[0].as_str()));
    // The same key with another body: 409 with a message.
    let (status, body) = post_order(ports[0], "order-1", &order(99)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("different input"),
        "{body}"
    );
    // No key: 400.
    let (status, _) = request(
        ports[0],
        "POST",
        "/orders",
        &[("Content-Type", "application/json")],
        &order(5),
    )
    .await;
    assert_eq!(status, 400);

    // Every saga completes; either instance reports it.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (n, id) in ids.iter().enumerate() {
        loop {
            let (status, body) =
                request(ports[(n % 2) ^ 1], "GET", &format!("/orders/{id}"), &[], "").await;
            assert_eq!(status, 200, "{body}");
            if body["status"] == "completed" {
                assert!(body["history"].as_array().unwrap().len() >= 7, "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "saga {id} did not complete: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, _) = request(ports[0], "GET", "/orders/not-a-uuid", &[], "").await;
    assert_eq!(status, 400);
    let (status, _) = request(
        ports[0],
        "GET",
        "/orders/0190b7a4-0000-7000-8000-000000000000",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 404);

    // An order paid by transfer, started on one instance, waits for the bank; its webhook comes
    // to the other instance, twice, and the order goes on once.
    let (status, body) = request(
        ports[0],
        "POST",
        "/transfers",
        &[
            ("Idempotency-Key", "transfer-1"),
            ("Content-Type", "application/json"),
        ],
        &order(7),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let transfer = body["id"].as_str().unwrap().to_owned();
    let webhook = |event: &str, key: &str| {
        format!(r#"{{"event_id":"{event}","order_key":"{key}","amount_cents":1007}}"#)
    };
    let json = [("Content-Type", "application/json")];
    let (status, body) = request(
        ports[1],
        "POST",
        "/webhooks/bank",
        &json,
        &webhook("evt_1", "transfer-1"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = request(
        ports[1],
        "POST",
        "/webhooks/bank",
        &json,
        &webhook("evt_1", "transfer-1"),
    )
    .await;
    assert_eq!(status, 200, "a repeated webhook is one signal: {body}");
    assert_eq!(body["delivered"], "duplicate");
    let (status, _) = request(
        ports[1],
        "POST",
        "/webhooks/bank",
        &json,
        &webhook("evt_2", "no-such"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = request(
        ports[1],
        "POST",
        "/webhooks/bank",
        &json,
        "{\"event_id\":1}",
    )
    .await;
    assert_eq!(status, 422);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = request(ports[0], "GET", &format!("/orders/{transfer}"), &[], "").await;
        if body["status"] == "completed" {
            let history = body["history"].as_array().unwrap();
            let received = history
                .iter()
                .filter(|line| line.as_str().unwrap_or("").contains("signal received"))
                .count();
            assert_eq!(received, 1, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transfer order did not complete: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both instances drove sagas: the transactional step records which one recorded each order.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rows = sqlx::query("SELECT recorded_by, COUNT(*) AS n FROM public.orders GROUP BY recorded_by ORDER BY recorded_by")
        .fetch_all(&pool)
        .await
        .unwrap();
    let by_instance: Vec<(String, i64)> = rows
        .iter()
        .map(|row| (row.get("recorded_by"), row.get("n")))
        .collect();
    assert_eq!(
        by_instance.iter().map(|(_, n)| n).sum::<i64>(),
        40,
        "one order row per saga: {by_instance:?}"
    );
    assert_eq!(
        by_instance.len(),
        2,
        "both instances drove sagas: {by_instance:?}"
    );

    // More orders, and SIGTERM while their charges are running: each instance lets its running
    // steps finish, records them, gives every lease back, and exits 0.
    for n in 0..8u64 {
        let port = ports[(n % 2) as usize];
        let (status, body) = post_order(port, &format!("late-{n}"), &order(100 + n)).await;
        assert_eq!(status, 201, "{body}");
    }
    let running_charges = "SELECT COUNT(*) FROM saga.saga_steps
                            WHERE name = 'charge_card' AND status = 'in_progress'";
    let deadline = Instant::now() + Duration::from_secs(30);
    let in_flight = loop {
        let running: i64 = sqlx::query_scalar(running_charges)
            .fetch_one(&pool)
            .await
            .unwrap();
        if running > 0 {
            break running;
        }
        assert!(Instant::now() < deadline, "no charge was ever seen running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for child in &children {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for child in &mut children {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit status after SIGTERM: {status:?}");
    }
    let leased: i64 =
        sqlx::query("SELECT COUNT(*) FROM saga.saga_instances WHERE lease_owner IS NOT NULL")
            .fetch_one(&pool)
            .await
            .and_then(|row| row.try_get(0))
            .unwrap();
    assert_eq!(leased, 0, "no lease left behind");
    let unfinished: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM saga.saga_steps WHERE status = 'in_progress'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        unfinished, 0,
        "the {in_flight} charge(s) running at SIGTERM finished and were recorded"
    );
}
