//! Each misuse of `#[derive(Saga)]` fails to compile with a message that says how to fix it,
//! pointing at the offending token. The expected messages are checked in as `ui/*.stderr`
//! (regenerate with `TRYBUILD=overwrite`, then read every changed file).

#[test]
fn misuses_fail_to_compile_with_teaching_messages() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
