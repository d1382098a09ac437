//! The README shows the test-kit example that `docs/test_kit_example.md` holds, and which the
//! facade compiles as a doc test (`TestKitReadmeExample`): the README cannot drift from code
//! that compiles.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[test]
fn the_readme_shows_the_compiled_test_kit_example_verbatim() {
    let readme = include_str!("../README.md");
    let example = include_str!("../docs/test_kit_example.md");
    assert!(
        example.trim_start().starts_with("```rust") && example.contains("TestKit::new()"),
        "docs/test_kit_example.md holds the example as one Rust code block"
    );
    assert!(
        readme.contains(example.trim()),
        "README.md must show docs/test_kit_example.md verbatim (copy the file's block into the README's test-kit section)"
    );
}
