//! Log timestamps: recognised cheaply while framing a line, resolved to a
//! [`SystemTime`] only when a line matters (see [`TimeResolver`]).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{Local, NaiveDate, TimeZone};

/// A line's timestamp as written, not yet resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawTime<'a> {
    /// `Nov 27 12:35:47` (local time, no year).
    Bsd(&'a [u8]),
    /// `2026-11-27T12:29:10.929159+00:00` (or `Z`, or no fraction).
    Rfc3339(&'a [u8]),
    /// Exim's `2026-11-27 12:00:00` (local time), optionally `.123` and ` +0100`.
    Exim(&'a [u8]),
    /// journald's `__REALTIME_TIMESTAMP`, µs since the epoch.
    UnixMicros(u64),
    /// The line carries none.
    None,
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// Month number (1–12) of a three-letter English abbreviation.
pub fn month_of(b: &[u8]) -> Option<u32> {
    MONTHS.iter().position(|m| &m[..] == b).map(|i| i as u32 + 1)
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year, month, day of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn valid_date(y: i64, m: u32, d: u32) -> bool {
    (1..=12).contains(&m) && d >= 1 && NaiveDate::from_ymd_opt(y as i32, m, d).is_some()
}

fn to_system(secs: i64, micros: u32) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, micros * 1000))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_micros(u64::from(micros)))
    }
}

/// Unix seconds of a system time (negative before 1970).
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The seconds field of a time of day (two digits; a leap second is read as :59).
fn seconds(b: &[u8]) -> Option<u32> {
    digits(b).filter(|s| b.len() == 2 && *s <= 60).map(|s| s.min(59))
}

/// `hh:mm:ss` → seconds of the day.
fn hms(b: &[u8]) -> Option<u32> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (digits(&b[0..2])?, digits(&b[3..5])?, seconds(&b[6..8])?);
    (h < 24 && m < 60).then(|| h * 3600 + m * 60 + s)
}

/// Fraction `.123456` at the start of `b` → (micros, bytes used).
fn fraction(b: &[u8]) -> (u32, usize) {
    if b.first() != Some(&b'.') {
        return (0, 0);
    }
    let n = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut micros = 0u32;
    for i in 0..6 {
        micros = micros * 10 + b.get(1 + i).filter(|_| i < n).map_or(0, |c| u32::from(c - b'0'));
    }
    (micros, 1 + n)
}

/// `+hh:mm`, `+hhmm`, `Z` → offset seconds east of UTC.
fn offset(b: &[u8]) -> Option<i32> {
    match b {
        b"Z" | b"z" => Some(0),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let h = digits(&[*h1, *h2])? as i32;
            let m = digits(&[*m1, *m2])? as i32;
            (h < 24 && m < 60).then_some(if *sign == b'-' { -1 } else { 1 } * (h * 3600 + m * 60))
        }
        _ => None,
    }
}

/// Resolves [`RawTime`]s: infers the year of BSD timestamps and converts local times
/// to UTC (through the local time zone, `TZ` respected; cached per hour).
///
/// Year inference: the first BSD timestamp gets the year of `now`, or the year before
/// if that would put it more than a day in the future. After that the resolver
/// follows the file: a month earlier than the previous one by more than six months
/// (December → January) starts a new year; a jump forward by more than six months
/// (January → December, a log read across the new year backwards) is taken as the
/// year before. A timestamp that still lands more than a day ahead of `now` is moved
/// back one year.
///
/// Lines come in runs of the same second: the last timestamp's bytes and result are
/// kept, so the calendar is computed once per distinct timestamp. (Resolving the same
/// bytes again at the same `now` leaves the year state as it was: the cache changes
/// no result.)
#[derive(Debug, Default)]
pub struct TimeResolver {
    bsd: Option<(i64, u32)>,
    tz_cache: Option<(i64, i64)>,
    /// `now` (unix seconds) and its year.
    now_year: Option<(i64, i64)>,
    last: Option<LastTime>,
}

#[derive(Debug)]
struct LastTime {
    kind: u8,
    raw: Vec<u8>,
    now: SystemTime,
    out: Option<SystemTime>,
}

impl TimeResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The time `raw` stands for; `now` anchors BSD year inference.
    pub fn resolve(&mut self, raw: RawTime<'_>, now: SystemTime) -> Option<SystemTime> {
        let (kind, b) = match raw {
            RawTime::None => return None,
            RawTime::UnixMicros(us) => return UNIX_EPOCH.checked_add(Duration::from_micros(us)),
            RawTime::Rfc3339(b) => (0, b),
            RawTime::Exim(b) => (1, b),
            RawTime::Bsd(b) => (2, b),
        };
        if let Some(l) = &mut self.last
            && l.kind == kind
            && l.now == now
        {
            if l.raw == b {
                return l.out;
            }
            // A BSD time in the minute of the line before (most lines of a busy log):
            // only the seconds differ, and nothing else of the calendar can.
            if kind == 2
                && b.len() == 15
                && l.raw.len() == 15
                && l.raw[..13] == b[..13]
                && let (Some(out), Some(old), Some(new)) = (l.out, seconds(&l.raw[13..]), seconds(&b[13..]))
            {
                let out = (out + Duration::from_secs(new.into())).checked_sub(Duration::from_secs(old.into()));
                l.raw[13..].copy_from_slice(&b[13..]);
                l.out = out;
                return out;
            }
        }
        let out = match kind {
            0 => parse_rfc3339(b),
            1 => self.exim(b),
            _ => self.bsd(b, now),
        };
        let l = self.last.get_or_insert_with(|| LastTime { kind, raw: Vec::with_capacity(40), now, out });
        l.kind = kind;
        l.raw.clear();
        l.raw.extend_from_slice(b);
        l.now = now;
        l.out = out;
        out
    }

    fn bsd(&mut self, b: &[u8], now: SystemTime) -> Option<SystemTime> {
        // "Nov 27 12:35:47" or "Nov  7 12:35:47"
        if b.len() != 15 || b[3] != b' ' || b[6] != b' ' {
            return None;
        }
        let month = month_of(&b[0..3])?;
        let day = if b[4] == b' ' { digits(&b[5..6])? } else { digits(&b[4..6])? };
        let secs_of_day = hms(&b[7..15])?;
        let now_secs = unix_secs(now);
        let now_year = match self.now_year {
            Some((s, y)) if s == now_secs => y,
            _ => {
                let y = civil_from_days(now_secs.div_euclid(86_400)).0;
                self.now_year = Some((now_secs, y));
                y
            }
        };
        let mut year = match self.bsd {
            None => now_year,
            Some((y, last)) if month + 6 < last => y + 1,
            Some((y, last)) if month > last + 6 => y - 1,
            Some((y, _)) => y,
        };
        // Feb 29 of a year that has none: the file must be from a leap year before.
        let mut tries = 0;
        while !valid_date(year, month, day) && tries < 8 {
            year -= 1;
            tries += 1;
        }
        let mut t = self.local(days_from_civil(year, month, day) * 86_400 + i64::from(secs_of_day));
        if t > now_secs + 86_400 {
            year -= 1;
            while !valid_date(year, month, day) {
                year -= 1;
            }
            t = self.local(days_from_civil(year, month, day) * 86_400 + i64::from(secs_of_day));
        }
        self.bsd = Some((year, month));
        to_system(t, 0)
    }

    fn exim(&mut self, b: &[u8]) -> Option<SystemTime> {
        // "2026-11-27 12:00:00" [".123"] [" +0100"]
        if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' {
            return None;
        }
        let (y, m, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
        if !valid_date(i64::from(y), m, d) {
            return None;
        }
        let naive = days_from_civil(i64::from(y), m, d) * 86_400 + i64::from(hms(&b[11..19])?);
        let (micros, used) = fraction(&b[19..]);
        let rest = &b[19 + used..];
        let secs = match rest.strip_prefix(b" ") {
            Some(off) => naive - i64::from(offset(off)?),
            None if rest.is_empty() => self.local(naive),
            None => return None,
        };
        to_system(secs, micros)
    }

    /// Local wall-clock seconds → Unix seconds, through the local time zone.
    fn local(&mut self, naive: i64) -> i64 {
        let hour = naive.div_euclid(3600);
        if let Some((h, off)) = self.tz_cache
            && h == hour
        {
            return naive - off;
        }
        let off = local_offset(naive).or_else(|| local_offset(naive + 3600)).unwrap_or(0);
        self.tz_cache = Some((hour, off));
        naive - off
    }
}

fn local_offset(naive: i64) -> Option<i64> {
    let dt = chrono::DateTime::from_timestamp(naive, 0)?.naive_utc();
    let local = Local.from_local_datetime(&dt).earliest()?;
    Some(i64::from(local.offset().local_minus_utc()))
}

/// `2026-11-27T12:29:10.929159+00:00` (fraction optional, `Z` allowed).
pub fn parse_rfc3339(b: &[u8]) -> Option<SystemTime> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let (y, m, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !valid_date(i64::from(y), m, d) {
        return None;
    }
    let tod = hms(&b[11..19])?;
    let (micros, used) = fraction(&b[19..]);
    let off = offset(&b[19 + used..])?;
    let secs = days_from_civil(i64::from(y), m, d) * 86_400 + i64::from(tod) - i64::from(off);
    to_system(secs, micros)
}

/// RFC 3339 text (UTC, `Z`, whole seconds) for reports.
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let Ok(y4) = u32::try_from(y) else { return format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60) };
    if y4 > 9999 {
        return format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60);
    }
    // Digits by hand: a replay's report has three of these per ban, and format! was a
    // third of its time.
    let mut b = *b"0000-00-00T00:00:00Z";
    let s = s as u32;
    for (at, v, n) in [(0, y4, 4), (5, m, 2), (8, d, 2), (11, s / 3600, 2), (14, s / 60 % 60, 2), (17, s % 60, 2)] {
        let mut v = v;
        for i in (at..at + n).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_rfc3339(s.as_bytes()).unwrap()
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 10_957, 20_000, 20_784, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    /// The hand-written digits say what format! said, round-tripping, at the ends of
    /// the four-digit years and across them.
    #[test]
    fn rfc3339_text_by_hand_matches_format() {
        let reference = |t: SystemTime| {
            let secs = unix_secs(t);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let s = secs.rem_euclid(86_400);
            format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
        };
        let end_of_9999 = days_from_civil(10_000, 1, 1) * 86_400 - 1;
        let mut cases: Vec<i64> = vec![0, 1, 59, 86_399, 86_400, 951_782_400, 1_800_000_000, end_of_9999, end_of_9999 + 1, -1, -86_401];
        cases.extend((0..2_000).map(|i| i * 7_919_993 + 17));
        for secs in cases {
            let t = if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs as u64) } else { UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) };
            let text = format_rfc3339(t);
            assert_eq!(text, reference(t), "{secs}");
            if (0..=end_of_9999).contains(&secs) {
                assert_eq!(parse_rfc3339(text.as_bytes()), Some(t), "{text}");
            }
        }
        assert_eq!(format_rfc3339(UNIX_EPOCH + Duration::from_secs(end_of_9999 as u64)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_forms() {
        let t = at("2026-11-27T12:29:10.929159+00:00");
        assert_eq!(format_rfc3339(t), "2026-11-27T12:29:10Z");
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().subsec_micros(), 929_159);
        assert_eq!(at("2026-11-27T13:29:10+01:00"), at("2026-11-27T12:29:10Z"));
        assert_eq!(at("2026-11-27T07:29:10.5-05:00"), at("2026-11-27T12:29:10.500000Z"));
        assert!(parse_rfc3339(b"2026-02-30T12:29:10Z").is_none());
        assert!(parse_rfc3339(b"2026-11-27T12:29:10").is_none());
        assert!(parse_rfc3339(b"2026-11-27T25:29:10Z").is_none());
    }

    #[test]
    fn bsd_same_minute_shortcut_agrees() {
        // Each time read after the one before it (the shortcut), and alone (the full path).
        let now = at("2026-11-27T13:00:00Z");
        let mut r = TimeResolver::new();
        for raw in [
            "Nov 27 12:35:47", "Nov 27 12:35:48", "Nov 27 12:35:05", "Nov 27 12:35:60", "Nov 27 12:35:4x",
            "Nov 27 12:35:59", "Nov 27 12:35:00", "Nov 27 12:36:00", "Nov  7 12:36:01", "Nov  7 12:36:1",
        ] {
            let fresh = TimeResolver::new().resolve(RawTime::Bsd(raw.as_bytes()), now);
            assert_eq!(r.resolve(RawTime::Bsd(raw.as_bytes()), now), fresh, "{raw}");
        }
    }

    #[test]
    fn bsd_year_inference_and_wrap() {
        // Only the year logic is under test: run in UTC.
        let now = at("2026-11-27T13:00:00Z");
        let mut r = TimeResolver::new();
        r.tz_cache = None;
        let t = r.resolve(RawTime::Bsd(b"Nov 27 12:35:47"), now).unwrap();
        let local_off = local_offset(unix_secs(t)).unwrap_or(0);
        let utc = |s: &str| at(s) - Duration::ZERO;
        let shift = |t: SystemTime| to_system(unix_secs(t) + local_off, 0).unwrap();
        assert_eq!(shift(t), utc("2026-11-27T12:35:47Z"));

        // A December line read in January belongs to last year, then January wraps.
        let now = at("2027-01-02T00:00:00Z");
        let mut r = TimeResolver::new();
        let dec = r.resolve(RawTime::Bsd(b"Dec 31 23:59:00"), now).unwrap();
        let jan = r.resolve(RawTime::Bsd(b"Jan  1 00:01:00"), now).unwrap();
        assert_eq!(civil_from_days(unix_secs(shift(dec)).div_euclid(86_400)).0, 2026);
        assert_eq!(civil_from_days(unix_secs(shift(jan)).div_euclid(86_400)), (2027, 1, 1));
        assert!(jan > dec);

        // A timestamp later in the year than "now" is last year's.
        let now = at("2026-03-01T00:00:00Z");
        let mut r = TimeResolver::new();
        let t = r.resolve(RawTime::Bsd(b"Nov 27 12:35:47"), now).unwrap();
        assert_eq!(civil_from_days(unix_secs(t).div_euclid(86_400)).0, 2025);

        assert!(r.resolve(RawTime::Bsd(b"Foo 27 12:35:47"), now).is_none());
        assert!(r.resolve(RawTime::Bsd(b"Nov 27 12:35:4x"), now).is_none());
        // Feb 29 outside a leap year falls back to the last leap year.
        let mut r = TimeResolver::new();
        let t = r.resolve(RawTime::Bsd(b"Feb 29 10:00:00"), at("2027-03-01T00:00:00Z")).unwrap();
        assert_eq!(civil_from_days(unix_secs(shift(t)).div_euclid(86_400)), (2024, 2, 29));
    }

    #[test]
    fn exim_with_and_without_zone() {
        let mut r = TimeResolver::new();
        let now = SystemTime::now();
        let t = r.resolve(RawTime::Exim(b"2026-11-27 12:00:00 +0100"), now).unwrap();
        assert_eq!(t, at("2026-11-27T11:00:00Z"));
        let t = r.resolve(RawTime::Exim(b"2026-11-27 12:00:00.250 -0030"), now).unwrap();
        assert_eq!(t, at("2026-11-27T12:30:00.25Z"));
        assert!(r.resolve(RawTime::Exim(b"2026-11-27 12:00:00"), now).is_some());
        assert!(r.resolve(RawTime::Exim(b"2026-13-27 12:00:00"), now).is_none());
        assert_eq!(
            r.resolve(RawTime::UnixMicros(1_795_782_550_929_159), now).unwrap(),
            at("2026-11-27T12:29:10.929159Z")
        );
    }
}
