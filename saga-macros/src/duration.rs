//! Durations written as string literals ("200ms", "10s", "1m", "1h"), checked at compile time so
//! that a typo in a timeout or a retry delay never reaches a running saga.

/// The units a duration may use, with their length in milliseconds.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// What a duration literal must look like, for error messages.
pub(crate) const EXPECTED: &str =
    "write a whole number followed by a unit (ms, s, m or h), e.g. \"200ms\", \"10s\" or \"1m\"";

/// Parses `text` ("200ms", "10s", "1m", "1h") into milliseconds.
///
/// # Errors
/// A message saying what is wrong with `text` and how to write it instead: no number, a
/// fractional number, no unit, an unknown unit, zero, or a value too large.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let digits_end = text
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(text.len(), |(index, _)| index);
    let (number, unit) = text.split_at(digits_end);
    if text.is_empty() {
        return Err(format!("the duration is empty; {EXPECTED}"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("`{text}` contains a space; {EXPECTED}"));
    }
    if number.is_empty() {
        return Err(format!("`{text}` does not start with a number; {EXPECTED}"));
    }
    if unit.starts_with('.') || unit.starts_with(',') {
        return Err(format!(
            "`{text}` is not a whole number; use a smaller unit instead, e.g. \"1500ms\" rather than \"1.5s\""
        ));
    }
    if unit.is_empty() {
        return Err(format!(
            "`{text}` has no unit; add one of ms, s, m or h, e.g. \"{number}ms\" or \"{number}s\""
        ));
    }
    let Some(&(_, unit_millis)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "`{text}` has the unknown unit `{unit}`; {EXPECTED}"
        ));
    };
    let too_large = || format!("`{text}` is too large for a duration; {EXPECTED}");
    let value: u64 = number.parse().map_err(|_| too_large())?;
    if value == 0 {
        return Err(format!(
            "`{text}` is zero; give it a positive duration, e.g. \"1s\""
        ));
    }
    value.checked_mul(unit_millis).ok_or_else(too_large)
}

/// `millis` as a literal in the largest unit that divides it: 2000 → `2s`, 1500 → `1500ms`.
pub(crate) fn literal(millis: u64) -> String {
    UNITS
        .iter()
        .rev()
        .find(|(_, unit_millis)| millis % unit_millis == 0)
        .map_or_else(
            || format!("{millis}ms"),
            |(name, unit_millis)| format!("{}{name}", millis / unit_millis),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_converts_to_milliseconds() {
        assert_eq!(parse_millis("200ms"), Ok(200));
        assert_eq!(parse_millis("10s"), Ok(10_000));
        assert_eq!(parse_millis("1m"), Ok(60_000));
        assert_eq!(parse_millis("2h"), Ok(7_200_000));
        assert_eq!(parse_millis("007s"), Ok(7_000));
    }

    #[test]
    fn literals_use_the_largest_unit_that_fits() {
        assert_eq!(literal(1_500), "1500ms");
        assert_eq!(literal(2_000), "2s");
        assert_eq!(literal(120_000), "2m");
        assert_eq!(literal(7_200_000), "2h");
        for millis in [1, 999, 1_000, 61_000, 3_600_000] {
            assert_eq!(parse_millis(&literal(millis)), Ok(millis));
        }
    }

    #[test]
    fn zero_is_refused_in_every_unit() {
        for text in ["0ms", "0s", "0m", "00h"] {
            let err = parse_millis(text).unwrap_err();
            assert!(err.contains("is zero"), "{text}: {err}");
        }
    }

    #[test]
    fn a_missing_unit_suggests_units() {
        assert_eq!(
            parse_millis("10").unwrap_err(),
            "`10` has no unit; add one of ms, s, m or h, e.g. \"10ms\" or \"10s\""
        );
    }

    #[test]
    fn unknown_units_and_spaces_are_refused() {
        for text in ["10sec", "5d", "1m30s", "10S", "10µs"] {
            let err = parse_millis(text).unwrap_err();
            assert!(err.contains("unknown unit"), "{text}: {err}");
        }
    }

    #[test]
    fn text_without_a_leading_number_is_refused() {
        for text in ["s", "ms10", "-1s", "+1s"] {
            let err = parse_millis(text).unwrap_err();
            assert!(
                err.contains("does not start with a number"),
                "{text}: {err}"
            );
        }
        assert!(parse_millis("").unwrap_err().contains("is empty"));
    }

    #[test]
    fn spaces_are_refused() {
        for text in ["10 s", " 10s", "10s "] {
            let err = parse_millis(text).unwrap_err();
            assert!(err.contains("contains a space"), "{text:?}: {err}");
        }
    }

    #[test]
    fn fractions_suggest_a_smaller_unit() {
        let err = parse_millis("1.5s").unwrap_err();
        assert!(err.contains("not a whole number"), "{err}");
        assert!(err.contains("1500ms"), "{err}");
    }

    #[test]
    fn values_that_overflow_are_refused() {
        assert!(parse_millis("99999999999999999999ms")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_millis("18446744073709551615h")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_millis("18446744073709551615ms"), Ok(u64::MAX));
    }
}
