use std::fmt;

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the Unix epoch, supplied by the caller.
///
/// The sdk never reads a clock. Hosts pass the wall clock; the simulator
/// passes its virtual clock. Arithmetic saturates, because a deadline past the
/// end of time is simply "never".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp `unix_ms` milliseconds after the epoch.
    pub const fn from_unix_ms(unix_ms: u64) -> Timestamp {
        Timestamp(unix_ms)
    }

    /// Milliseconds since the epoch.
    pub const fn unix_ms(&self) -> u64 {
        self.0
    }

    /// This timestamp plus `duration_ms`, saturating at the end of time.
    pub const fn plus_ms(self, duration_ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_ms))
    }

    /// Milliseconds from `earlier` to `self`, or zero if `earlier` is later.
    pub const fn ms_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    /// Writes RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T08:16:13.000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0 % 1000;
        let seconds_total = self.0 / 1000;
        let days = seconds_total / 86_400;
        let seconds_of_day = seconds_total % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            seconds_of_day / 3600,
            seconds_of_day % 3600 / 60,
            seconds_of_day % 60
        )
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date, after Howard
/// Hinnant's `civil_from_days` (exact for every non-negative day count).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case(0, "1970-01-01T00:00:00.000Z")]
    #[case(951_782_400_000, "2000-02-29T00:00:00.000Z")]
    #[case(1_795_594_573_123, "2026-11-25T08:16:13.123Z")]
    #[case(4_102_444_799_999, "2099-12-31T23:59:59.999Z")]
    fn display_is_rfc3339_utc(#[case] unix_ms: u64, #[case] text: &str) {
        // Proves timestamps render exactly, across leap days and centuries.
        assert_eq!(Timestamp::from_unix_ms(unix_ms).to_string(), text);
    }

    #[test]
    fn arithmetic_saturates() {
        // Proves deadlines past the end of time become "never" instead of wrapping.
        assert_eq!(
            Timestamp::from_unix_ms(u64::MAX - 1).plus_ms(10),
            Timestamp::from_unix_ms(u64::MAX)
        );
        assert_eq!(
            Timestamp::from_unix_ms(5).ms_since(Timestamp::from_unix_ms(9)),
            0
        );
    }
}
