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

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `YYYY-MM-DD`. (Written directly: every output carries one or two, and
/// `core::fmt` costs more than the rest of an output's fields together.)
pub fn format_day(day: Day) -> String {
    match civil(day as i64) {
        Some(ymd) => {
            let mut b = [0u8; 10];
            put_ymd(&mut b, ymd);
            ascii(&b)
        }
        None => date_of(day).format("%Y-%m-%d").to_string(),
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), for years 0–9999 (the rest go through chrono).
fn civil(days: i64) -> Option<(u32, u32, u32)> {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    (0..=9999)
        .contains(&y)
        .then_some((y as u32, m as u32, d as u32))
}

/// `v` in decimal, zero-padded to fill `out`.
fn put_padded(out: &mut [u8], mut v: u32) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `YYYY-MM-DD` into the first 10 bytes.
fn put_ymd(b: &mut [u8], (y, m, d): (u32, u32, u32)) {
    put_padded(&mut b[0..4], y);
    b[4] = b'-';
    put_padded(&mut b[5..7], m);
    b[7] = b'-';
    put_padded(&mut b[8..10], d);
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("dates are ASCII")
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
    let Some(ymd) = civil(ms.div_euclid(86_400_000)) else {
        return DateTime::<Utc>::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .unwrap_or_default();
    };
    let secs = ms.div_euclid(1000).rem_euclid(86_400) as u32;
    // YYYY-MM-DDThh:mm:ss[.fff]Z
    let mut b = [0u8; 24];
    put_ymd(&mut b, ymd);
    b[10] = b'T';
    put_padded(&mut b[11..13], secs / 3600);
    b[13] = b':';
    put_padded(&mut b[14..16], secs / 60 % 60);
    b[16] = b':';
    put_padded(&mut b[17..19], secs % 60);
    let len = match ms.rem_euclid(1000) {
        0 => 19,
        frac => {
            b[19] = b'.';
            put_padded(&mut b[20..23], frac as u32);
            23
        }
    };
    b[len] = b'Z';
    ascii(&b[..=len])
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
