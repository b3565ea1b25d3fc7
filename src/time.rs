//! Time as the core sees it: milliseconds since 1970 handed in by the caller (the core never
//! reads a clock), and the two ways it writes a time down. A leaf: it depends on nothing of
//! the crate.

use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// A duration in whole milliseconds, as the store and the clock count.
pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The `SystemTime` of `at_ms` milliseconds since 1970 (the signer's clock on wasm32, where
/// `SystemTime::now()` panics).
pub fn system_time(at_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms)
}

/// RFC 3339 in UTC, e.g. `2026-11-25T19:18:15.123Z`.
pub fn rfc3339(at_ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{at_ms} ms after 1970"))
}

/// An RFC 3339 time as GitLab writes one (`2024-08-08T13:24:13.543Z`, or with an offset) in
/// milliseconds since 1970; `None` when it does not read as one, or lies before 1970.
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    let at = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// An HTTP date (`Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT`) in milliseconds since 1970.
pub fn http_date_ms(text: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(text.trim()).ok()?;
    Some(ms(at.duration_since(SystemTime::UNIX_EPOCH).ok()?))
}

/// `at_ms` as an HTTP date, as S3 writes `Last-Modified` (the tests' simulated S3).
#[cfg(test)]
pub fn http_date(at_ms: u64) -> String {
    httpdate::fmt_http_date(system_time(at_ms))
}

/// `%Y-%m-%d-%H-%M-%S` in UTC: the run's start in object keys and run folders.
pub fn key_timestamp(at: SystemTime) -> String {
    let format = format_description!("[year]-[month]-[day]-[hour]-[minute]-[second]");
    OffsetDateTime::from(at)
        .format(&format)
        .expect("a UTC time formats with a fixed numeric description")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_read_as_s3_and_gitlab_write_them() {
        assert_eq!(
            http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(
            http_date_ms(&http_date(784_111_777_000)),
            Some(784_111_777_000)
        );
        assert_eq!(http_date_ms("yesterday"), None);
    }
}
