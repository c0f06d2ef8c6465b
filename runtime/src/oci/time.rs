//! Timestamps as runc writes them: RFC 3339 in UTC, without a date/time crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Splits days since 1970-01-01 into (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn split(t: SystemTime) -> (i64, u32, u32, u64, u32) {
    // Times before 1970 do not occur here (they come from the clock); clamp them.
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    (y, mo, d, secs % 86_400, since.subsec_nanos())
}

/// `2026-11-27T03:17:05Z` (Go's `time.RFC3339`, what runc's log lines carry).
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, s, _) = split(t);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `2026-11-27T03:17:05.426452299Z` with trailing zeros of the fraction dropped (Go's
/// `time.RFC3339Nano`, what runc's `created` field carries).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let (y, mo, d, s, nanos) = split(t);
    let mut frac = String::new();
    if nanos != 0 {
        frac = format!(".{nanos:09}");
        while frac.ends_with('0') {
            frac.pop();
        }
    }
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::new(1_795_749_425, 426_452_299);
        assert_eq!(rfc3339(t), "2026-11-27T03:17:05Z");
        assert_eq!(rfc3339_nano(t), "2026-11-27T03:17:05.426452299Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 500_000_000); // 2000-02-29
        assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.5Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_107_542_399); // 2100-02-28 23:59:59
        assert_eq!(rfc3339(t), "2100-02-28T23:59:59Z");
    }
}
