//! Durations as written in the configuration file: `"500ms"`, `"300s"`, `"5m"`, `"24h"`, `"2d"`.

use std::time::Duration;

/// Parses a duration such as `"500ms"`, `"300s"`, `"5m"`, `"24h"`, `"2d"` or `"0"`.
///
/// A duration is one or more `NUMBER UNIT` groups (`"1h30m"` is 90 minutes) with the units
/// `ms`, `s`, `m`, `h` and `d`; the numbers are whole. A bare `"0"` is accepted as zero; any other
/// number needs a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || {
        format!(
            "invalid duration {s:?}: expected a whole number with a unit (ms, s, m, h, d), \
             e.g. \"300s\", \"5m\" or \"2d\""
        )
    };
    let too_large = || format!("invalid duration {s:?}: too large");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut millis: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| too_large())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_millis: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        millis = number
            .checked_mul(unit_millis)
            .and_then(|m| millis.checked_add(m))
            .ok_or_else(too_large)?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_millis(millis))
}

/// Renders a duration in the largest unit that divides it exactly (`"5m"`, `"1500ms"`).
pub fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis % size == 0 {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn accepts_compound_durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1_500)));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in [
            "", "5", "300", "5x", "s", "-5s", "1.5h", "5 m", "5M", "m5", "5mm", "0x",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_overflow() {
        let err = parse_duration("99999999999999999999d").unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let err = parse_duration("999999999999999999d").unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(172_800)), "2d");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
