//! The shipping example, run end to end on a fresh SQLite file: each order ships through a
//! child saga; a shipment that fails fails its order's step, a shipment whose order fails later
//! is sent back and undone, a cancelled order cancels its running shipment, and a compensated
//! order leaves nothing in effect.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

/// The lines of one order's report (its status line and what follows, up to the next order).
fn order(stdout: &str, n: u64) -> Vec<&str> {
    example::report(stdout, &format!("order {n}: "))
}

#[test]
fn orders_ship_through_child_sagas_that_are_undone_with_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("shipping.db").display());
    let stdout = example::run("shipping", &["--db", &db]);
    let figures = example::Figures::of(&stdout);
    assert_eq!(figures.get("orders"), 4, "{stdout}");
    assert_eq!(figures.get("completed"), 1, "{stdout}");
    assert_eq!(figures.get("compensated"), 3, "{stdout}");
    assert_eq!(
        figures.get("effects_left_by_compensated_orders"),
        0,
        "{stdout}"
    );
    assert_eq!(
        figures.get("effects_missing_from_completed_orders"),
        0,
        "{stdout}"
    );
    assert_eq!(figures.get("repeated_calls"), 0, "{stdout}");

    let first = order(&stdout, 1);
    assert!(first[0].contains("completed"), "{first:?}");
    assert!(
        first[1].contains("completed (child of step `ship`)"),
        "{first:?}"
    );

    // The carrier refused the label: the shipment compensated on its own, asked nothing.
    let second = order(&stdout, 2);
    assert!(second[0].contains("compensated"), "{second:?}");
    assert!(second[1].contains("compensated"), "{second:?}");
    assert!(
        !second.iter().any(|line| line.contains("by parent saga")),
        "{second:?}"
    );

    // The card was declined after shipping: the order sent its completed shipment back.
    let third = order(&stdout, 3);
    assert!(
        third.iter().any(|line| line.contains("by parent saga")
            && line.contains("the parent compensates its step `ship`")),
        "{third:?}"
    );

    // Cancelled by an operator while packing: the shipment was cancelled with its order.
    let fourth = order(&stdout, 4);
    assert!(
        fourth
            .iter()
            .any(|line| line.contains("the parent is compensating")
                && line.contains("cancel requested by ops")),
        "{fourth:?}"
    );
    assert!(
        fourth
            .iter()
            .any(|line| line.contains("still in effect: []")),
        "{fourth:?}"
    );
}
