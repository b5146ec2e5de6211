//! Calendar days.
//!
//! Every figure in strata is counted in whole calendar days of `[engine] timezone`. A
//! day is stored as an `i32`: the number of days since 1970-01-01 *in that zone*, so
//! day arithmetic (recency, window bounds, timers) is plain integer arithmetic and the
//! zone is consulted only when an instant is turned into a day or back.

use std::fmt::Write;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Utc};
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

/// `YYYY-MM-DD`. (Written directly: every output carries one or two, and chrono's
/// `format` parses its pattern on every call.)
/// Wall-clock milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn format_day(day: Day) -> String {
    let mut s = String::with_capacity(10);
    push_date(&mut s, date_of(day));
    s
}

fn push_date(s: &mut String, d: NaiveDate) {
    if (0..=9999).contains(&d.year()) {
        write!(s, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
    } else {
        write!(s, "{}", d.format("%Y-%m-%d"))
    }
    .expect("writing to a String never fails");
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
    let Some(t) = DateTime::<Utc>::from_timestamp_millis(ms) else {
        return String::new();
    };
    if !(0..=9999).contains(&t.year()) {
        return t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    }
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    let mut s = String::with_capacity(24);
    push_date(&mut s, t.date_naive());
    write!(
        s,
        "T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
    .expect("writing to a String never fails");
    match ms.rem_euclid(1000) {
        0 => {}
        frac => write!(s, ".{frac:03}").expect("writing to a String never fails"),
    }
    s.push('Z');
    s
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

    /// The hand-written formats equal chrono's, across eras, signs and fractions.
    #[test]
    fn formats_equal_chronos() {
        let mut ms: Vec<i64> = vec![0, -1, 1, 999, -999, 1_000, -86_400_000, 253_402_300_799_999];
        ms.extend((0..2000).map(|i: i64| i * 7_919_993_117 - 5_000_000_000_000 + i % 1000));
        ms.extend([
            DateTime::<Utc>::MIN_UTC.timestamp_millis(),
            DateTime::<Utc>::MAX_UTC.timestamp_millis(),
            -62_167_219_200_001, // just before year 0
            253_402_300_800_000, // year 10000
        ]);
        for m in ms {
            let chrono = DateTime::<Utc>::from_timestamp_millis(m)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                .unwrap_or_default();
            assert_eq!(rfc3339_utc(m), chrono, "{m}");
        }
        for d in (-800_000..3_000_000)
            .step_by(997)
            .chain([i32::MIN / 400, 2_932_896])
        {
            assert_eq!(
                format_day(d),
                date_of(d).format("%Y-%m-%d").to_string(),
                "{d}"
            );
        }
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
