//! Calendar days.
//!
//! Every figure in strata is counted in whole calendar days of `[engine] timezone`. A
//! day is stored as an `i32`: the number of days since 1970-01-01 *in that zone*, so
//! day arithmetic (recency, window bounds, timers) is plain integer arithmetic and the
//! zone is consulted only when an instant is turned into a day or back.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;

pub type Day = i32;

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
}

/// The calendar day (in `tz`) of an instant given in epoch milliseconds.
pub fn day_of_millis(ms: i64, tz: Tz) -> Option<Day> {
    let utc = DateTime::<Utc>::from_timestamp_millis(ms)?;
    let local = utc.with_timezone(&tz).date_naive();
    Some((local - epoch()).num_days() as Day)
}

pub fn date_of(day: Day) -> NaiveDate {
    epoch() + chrono::Duration::days(day as i64)
}

/// `YYYY-MM-DD`.
pub fn format_day(day: Day) -> String {
    date_of(day).format("%Y-%m-%d").to_string()
}

pub fn parse_day(s: &str) -> Option<Day> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some((d - epoch()).num_days() as Day)
}

/// The first instant of `day` in `tz`, in epoch milliseconds (the `ts` of timer and
/// recalibration outputs). On a day that starts inside a DST gap, the earliest valid
/// local time of that day is used.
pub fn day_start_millis(day: Day, tz: Tz) -> i64 {
    let date = date_of(day);
    for minutes in (0..24 * 60).step_by(15) {
        let naive = date.and_hms_opt(minutes / 60, minutes % 60, 0).unwrap();
        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
            return t.timestamp_millis();
        }
    }
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
        .timestamp_millis()
}

/// RFC 3339 in UTC, with fractional seconds only when present.
pub fn rfc3339_utc(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// Today in `tz` by the wall clock.
pub fn today(tz: Tz) -> Day {
    day_of_millis(Utc::now().timestamp_millis(), tz).expect("the wall clock is in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_follow_the_zone() {
        // 2026-11-20T18:00:00Z is already the 21st in Shanghai.
        let ms = DateTime::parse_from_rfc3339("2026-11-20T18:00:00Z")
            .unwrap()
            .timestamp_millis();
        let utc = day_of_millis(ms, chrono_tz::UTC).unwrap();
        let sh = day_of_millis(ms, chrono_tz::Asia::Shanghai).unwrap();
        assert_eq!(format_day(utc), "2026-11-20");
        assert_eq!(format_day(sh), "2026-11-21");
        assert_eq!(parse_day("2026-11-21"), Some(sh));
    }

    #[test]
    fn day_start_is_local_midnight() {
        let d = parse_day("2026-11-21").unwrap();
        let ms = day_start_millis(d, chrono_tz::Asia::Shanghai);
        assert_eq!(rfc3339_utc(ms), "2026-11-20T16:00:00Z");
        assert_eq!(
            rfc3339_utc(day_start_millis(d, chrono_tz::UTC)),
            "2026-11-21T00:00:00Z"
        );
    }
}
