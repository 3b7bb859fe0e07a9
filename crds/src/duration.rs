//! Durations as Istio YAML writes them: Go-style strings such as `500ms`, `2s`, `1m`, `1h30m`.

use std::time::Duration;

/// A Go-style duration (`1h30m`, `2s`, `0.5s`, `100ms`) as used in Istio YAML.
pub fn parse(s: &str) -> Result<Duration, String> {
    let hint = "write a duration such as 500ms, 2s, 1m or 1h30m";
    if s.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("{s:?} is not a duration; {hint}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration; {hint}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("{s:?} has no unit; {hint}")),
            u => {
                return Err(format!(
                    "{s:?} has an unknown unit {u:?}; units are ns, us, ms, s, m, h"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += n * seconds;
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 * 100.0 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}
