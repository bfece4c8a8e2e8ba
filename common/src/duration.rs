//! Durations on the command line of both binaries: `500ms`, `90s`, `15m`, `1h`, or plain
//! seconds.

use std::time::Duration;

/// `500ms`, `90s`, `15m`, `1h`, or plain seconds (`7`). Zero is refused: every duration flag
/// is a period or a timeout, and none of them means anything at zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 90s, 15m or 1h"))?;
    let seconds_per_unit = match unit {
        "ms" => return positive(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    let seconds = n
        .checked_mul(seconds_per_unit)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    positive(Duration::from_secs(seconds))
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("duration must be positive".into())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("0ms").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX / 60)).is_err());
    }
}
