//! Human durations: `30s`, `10m`, `1h`, `7d`, combinations such as `1h30m`, and a bare
//! number of seconds (`90`). Used by the policy flags and the daemon's TOML config.
use std::{fmt, str::FromStr, time::Duration};

/// A [`Duration`] written and read the way an administrator types it.
///
/// `FromStr` accepts `s`, `m`, `h`, `d` and `w` units, optionally combined (`1d12h`,
/// `1h30m`); a bare number is seconds. `Display` writes the shortest such form, so a
/// value round-trips. Serde reads either that string or an integer number of seconds,
/// and writes the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// A duration that could not be read; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {value:?}: {why} (examples: 30s, 10m, 1h30m, 7d; a bare number is seconds)")]
pub struct DurationError {
    pub value: String,
    pub why: &'static str,
}

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

/// Parse `s` as a human duration (see [`HumanDuration`]).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError { value: s.to_string(), why };
    let t = s.trim();
    if t.is_empty() {
        return Err(err("empty"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().map_err(|_| err("number too large"))?;
        return Ok(Duration::from_secs(secs));
    }
    let bytes = t.as_bytes();
    let mut total: u64 = 0;
    let mut i = 0;
    let mut last_rank = u8::MAX;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number before each unit"));
        }
        let n: u64 = t[start..i].parse().map_err(|_| err("number too large"))?;
        let Some(&unit) = bytes.get(i) else {
            return Err(err("a number in a combination needs a unit"));
        };
        i += 1;
        let (mult, rank) = match unit.to_ascii_lowercase() {
            b'w' => (7 * 86_400, 5),
            b'd' => (86_400, 4),
            b'h' => (3_600, 3),
            b'm' => (60, 2),
            b's' => (1, 1),
            _ => return Err(err("unknown unit (use s, m, h, d or w)")),
        };
        if rank >= last_rank {
            return Err(err("units must go from largest to smallest, each once"));
        }
        last_rank = rank;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("too large"))?;
    }
    Ok(Duration::from_secs(total))
}

/// Write `d` (whole seconds) in the shortest `1d2h3m4s` form; zero is `0s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400u64), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&(secs / len).to_string());
            out.push_str(unit);
            secs %= len;
        }
    }
    out
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10m\" or a number of seconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration::from_secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(HumanDuration::from_secs)
                    .map_err(|_| E::custom(format!("invalid duration {v}: negative")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> u64 {
        parse_duration(s).unwrap().as_secs()
    }

    #[test]
    fn units_and_combinations() {
        assert_eq!(p("30s"), 30);
        assert_eq!(p("10m"), 600);
        assert_eq!(p("1h"), 3600);
        assert_eq!(p("7d"), 7 * 86400);
        assert_eq!(p("2w"), 14 * 86400);
        assert_eq!(p("1h30m"), 5400);
        assert_eq!(p("1d2h3m4s"), 93784);
        assert_eq!(p("90"), 90);
        assert_eq!(p(" 5M "), 300);
        assert_eq!(p("0"), 0);
    }

    #[test]
    fn bad_values_name_themselves() {
        for bad in ["", "m", "10x", "1h1h", "30m1h", "1.5h", "-5m", "h10", "5 m", "99999999999999999999"] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.value, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_duration("999999999999999999d").is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["0s", "30s", "10m", "1h", "1h30m", "7d", "1d2h3m4s"] {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!(HumanDuration::from_secs(3600 * 24 * 14).to_string(), "14d");
    }

    #[test]
    fn serde_string_or_seconds() {
        let d: HumanDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(d.0.as_secs(), 5400);
        let d: HumanDuration = serde_json::from_str("600").unwrap();
        assert_eq!(d.0.as_secs(), 600);
        assert!(serde_json::from_str::<HumanDuration>("\"soon\"").is_err());
        assert!(serde_json::from_str::<HumanDuration>("-3").is_err());
        assert_eq!(serde_json::to_string(&HumanDuration::from_secs(600)).unwrap(), "\"10m\"");
    }
}
