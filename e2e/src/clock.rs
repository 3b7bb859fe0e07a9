//! Wall-clock time in the formats the Kubernetes API uses.

use jiff::Timestamp;

/// Now, as an RFC 3339 timestamp with second precision
/// (`2006-01-02T15:04:05Z`), the format of `metav1.Time`.
pub fn now_rfc3339() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Now, with microseconds, the format of `metav1.MicroTime` (Events,
/// Leases).
pub fn now_micro() -> String {
    let now = Timestamp::now();
    let micros = now.as_microsecond();
    Timestamp::from_microsecond(micros)
        .map(|t| format!("{t:.6}"))
        .unwrap_or_default()
}

/// Seconds elapsed since an RFC 3339 timestamp, if it parses.
pub fn seconds_since(ts: &str) -> Option<i64> {
    let t: Timestamp = ts.parse().ok()?;
    Some(Timestamp::now().as_second() - t.as_second())
}

/// A duration the way kubectl prints ages: `45s`, `3m12s`, `5h`, `2d3h`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 600 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s < 3 * 3600 {
        format!("{}m", s / 60)
    } else if s < 8 * 3600 {
        let (h, m) = (s / 3600, (s % 3600) / 60);
        if m == 0 { format!("{h}h") } else { format!("{h}h{m}m") }
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else if s < 8 * 86400 {
        let (d, h) = (s / 86400, (s % 86400) / 3600);
        if h == 0 { format!("{d}d") } else { format!("{d}d{h}h") }
    } else {
        format!("{}d", s / 86400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_second_precision() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && !now.contains('.'), "{now}");
        assert!(seconds_since(&now).unwrap() <= 1);
        assert!(now_micro().contains('.'));
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(86400 * 2 + 3600 * 3), "2d3h");
    }
}
