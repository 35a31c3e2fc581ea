//! Time: event times in input files (seconds of any epoch, or `YYYY-MM-DD HH:MM:SS` taken
//! as UTC) and the wall clock in Unix milliseconds.

/// Now, in milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Seconds since the Unix epoch (or the file's own epoch, for numbers); `None` if neither form.
pub fn parse_time(s: &str) -> Option<f64> {
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_and_datetimes() {
        assert_eq!(super::parse_time("12.5"), Some(12.5));
        assert_eq!(super::parse_time("1970-01-01 00:01:00"), Some(60.0));
        assert_eq!(super::parse_time("yesterday"), None);
        assert_eq!(super::parse_time("inf"), None);
    }
}
