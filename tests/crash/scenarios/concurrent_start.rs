//! Scenario 5: the same sagas started at the same instant from several processes with one
//! idempotency key each: exactly one saga per key. One of the processes sends another input
//! for every fifth key: whichever input arrived first wins, every other caller with a
//! different input gets `Conflict` naming the winner, and callers with the same input get the
//! existing saga.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{deaths, reported, settle, specs, Db, Report};
use crate::child::StarterSpec;
use crate::harness::Workers;
use crate::invariants;

const STARTERS: u64 = 4;
const KEYS: u64 = 300;

/// One answer of one starter: (conflicting input?, new|existing|conflict, saga id).
type Answer = (bool, String, String);

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let exe = std::env::current_exe().expect("own path");
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 2_000;
    let children: Vec<_> = (0..STARTERS)
        .map(|i| {
            let spec = StarterSpec {
                url: db.url.clone(),
                keys: KEYS,
                conflict_every: if i == STARTERS - 1 { 5 } else { 0 },
                at_unix_ms: at,
                seed: seed.wrapping_add(i),
            };
            Command::new(&exe)
                .arg("--saga-starter")
                .arg(serde_json::to_string(&spec).expect("spec"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a starter process")
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|mut child| {
                let mut text = String::new();
                child
                    .stdout
                    .take()
                    .expect("stdout")
                    .read_to_string(&mut text)
                    .expect("read a starter's answers");
                let status = child.wait().expect("wait for a starter");
                assert!(status.success(), "a starter failed: {status}");
                text
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("starters");

    let mut answers: BTreeMap<String, Vec<Answer>> = BTreeMap::new();
    for line in outputs.iter().flat_map(|text| text.lines()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["START", key, conflicting, kind, id] = words.as_slice() {
            answers.entry((*key).to_owned()).or_default().push((
                *conflicting == "1",
                (*kind).to_owned(),
                (*id).to_owned(),
            ));
        } else if line.starts_with("START") {
            panic!("a start failed: {line}");
        }
    }
    assert_eq!(
        answers.len(),
        usize::try_from(KEYS).unwrap_or(0),
        "every key answered"
    );
    let mut conflicts = 0;
    let mut existing = 0;
    for (key, answers) in &answers {
        assert_eq!(
            answers.len(),
            usize::try_from(STARTERS).unwrap_or(0),
            "{key}: {answers:?}"
        );
        let winners: Vec<&Answer> = answers
            .iter()
            .filter(|(_, kind, _)| kind == "new")
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "{key}: exactly one start creates the saga: {answers:?}"
        );
        let (winner_conflicting, _, winner_id) = winners[0];
        for (conflicting, kind, id) in answers {
            assert_eq!(
                id, winner_id,
                "{key}: every caller is told the one saga: {answers:?}"
            );
            let expected = if conflicting == winner_conflicting {
                ["new", "existing"].as_slice()
            } else {
                ["conflict"].as_slice()
            };
            assert!(expected.contains(&kind.as_str()), "{key}: {answers:?}");
            conflicts += usize::from(kind == "conflict");
            existing += usize::from(kind == "existing");
        }
    }
    let stored = db.scalar("SELECT COUNT(*) FROM saga.saga_instances").await;
    let started = i64::try_from(KEYS).unwrap_or(0);
    assert_eq!(stored, started, "one saga per key");

    let mut workers = Workers::start(specs(&db, "start", 2, 2_000, seed), Vec::new());
    settle(&db, &mut workers, Duration::from_secs(90), |_| {
        Duration::from_millis(100)
    })
    .await;
    workers.stop_all();
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    let mut notes = vec![format!(
        "{STARTERS} processes started {KEYS} keys at the same instant: {KEYS} sagas created, {existing} starts returned the existing saga, {conflicts} got Conflict (different input)"
    )];
    notes.extend(reported(&workers));
    Report { summary, notes }
}
