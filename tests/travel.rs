//! The travel example, run end to end on a fresh SQLite file: the flight, the hotel and the car
//! of each trip are booked at the same time; a trip whose hotel is sold out or whose flight is
//! refused ends compensated with none of its bookings held, a car whose answer came too late
//! is found by its probe, and nothing is booked twice.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

/// The lines of one trip's report (its status line and what follows, up to the next trip).
fn trip(stdout: &str, n: u64) -> Vec<&str> {
    example::report(stdout, &format!("trip {n}: "))
}

/// (start, end) in ms of `what`'s first partner call in a trip's lines.
fn span(lines: &[&str], what: &str) -> (u64, u64) {
    let line = lines
        .iter()
        .find(|line| line.trim_start().starts_with(&format!("{what} ")))
        .unwrap_or_else(|| panic!("no `{what}` call in {lines:?}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn bookings_run_at_once_and_a_partial_booking_is_undone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("travel.db").display());
    let stdout = example::run("travel", &["--db", &db, "--trips", "6"]);
    let figures = example::Figures::of(&stdout);
    let figure = |name: &str| figures.get(name);
    assert_eq!(figure("trips"), 6, "{stdout}");
    assert_eq!(figure("completed"), 4, "{stdout}");
    assert_eq!(figure("compensated"), 2, "{stdout}");
    assert_eq!(figure("booked_twice"), 0, "{stdout}");
    assert_eq!(figure("partial_bookings_left"), 0, "{stdout}");

    // Trip 1: the three bookings overlap, and the charge comes after all of them.
    let first = trip(&stdout, 1);
    let (flight, hotel, car) = (
        span(&first, "flight"),
        span(&first, "hotel"),
        span(&first, "car"),
    );
    let last_start = flight.0.max(hotel.0).max(car.0);
    let first_end = flight.1.min(hotel.1).min(car.1);
    assert!(
        last_start < first_end,
        "the bookings ran at the same time: {first:?}"
    );
    assert!(
        span(&first, "charge").0 >= flight.1.max(hotel.1).max(car.1),
        "{first:?}"
    );

    // Trip 4: the hotel is sold out; the flight and the car are undone, then the budget.
    let sold_out = trip(&stdout, 4);
    assert!(sold_out[0].ends_with("compensated"), "{sold_out:?}");
    let (undo_flight, undo_car) = (span(&sold_out, "undo flight"), span(&sold_out, "undo car"));
    assert!(
        undo_flight.0 < undo_car.1 && undo_car.0 < undo_flight.1,
        "the two cancellations ran at the same time: {sold_out:?}"
    );
    assert!(
        span(&sold_out, "undo budget").0 >= undo_flight.1.max(undo_car.1),
        "{sold_out:?}"
    );
    assert!(sold_out
        .iter()
        .any(|line| line.contains("bookings held: none")));

    // Trip 5: the car's answer came too late; its probe found the booking.
    let late = trip(&stdout, 5);
    assert!(late[0].ends_with("completed"), "{late:?}");
    assert!(
        late.iter().any(|line| line.contains("car (probe: booked)")),
        "{late:?}"
    );
}
