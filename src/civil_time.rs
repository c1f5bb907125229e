//! Unix seconds as a UTC calendar date and time, for the few places that print one (the
//! `X-Greylist` header, the name of a greylist file moved aside). No time-zone database needed.

/// A UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Thursday (1970-01-01), 1 = Friday, ...
    pub weekday_from_thursday: u32,
}

impl Utc {
    /// The UTC date and time of `unix` seconds (Howard Hinnant's `civil_from_days`).
    pub fn from_unix(unix: u64) -> Utc {
        let (days, secs) = (unix / 86_400, unix % 86_400);
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        // secs < 86,400 and day, month within 1..=31: the narrowing casts are exact.
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month: month as u32,
            day: day as u32,
            hour: (secs / 3_600) as u32,
            minute: (secs % 3_600 / 60) as u32,
            second: (secs % 60) as u32,
            weekday_from_thursday: (days % 7) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let t = Utc::from_unix(951_782_400); // 2000-02-29, a Tuesday
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
        assert_eq!(t.weekday_from_thursday, 5);
        let t = Utc::from_unix(1_796_424_633);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2026, 12, 4, 22, 50, 33)
        );
    }
}
