//! Where a client address is read from a line: the extraction shared by the MTA parsers
//! (what gets banned, a source address or prefix, is `crate::addr`).
//!
//! Every function here anchors on structure the MTA itself writes, never on text a
//! client chose. The two anchors used by sendmail are:
//!
//! * [`relay_at_end`]: the text *ends* with sendmail's relay string (`[ip]`,
//!   `name [ip]`, `name [ip] (may be forged)`); the address is the last bracket. Any
//!   attacker-controlled text (sender, reverse-DNS name) comes before it and cannot
//!   move it.
//! * [`relay_at_start`]: the text *starts* with the relay string and the name part is
//!   restricted to host-name characters, so it can contain neither a blank nor a
//!   bracket and cannot smuggle in a second address.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Dotted-quad IPv4 without leading zeros (what every MTA writes); `None` otherwise.
fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v: u32 = 0;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 3 {
            v = v * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        if i == start || v > 255 || (b[start] == b'0' && i - start > 1) {
            return None;
        }
        *octet = v as u8;
    }
    (i == b.len()).then_some(Ipv4Addr::from(octets))
}

/// Parse the inside of an address bracket: `192.0.2.66`, `2001:db8::66`, or sendmail's
/// `IPv6:2001:db8:0:0:0:0:0:66` (any case of the `IPv6:` tag). Zone ids, blanks and
/// anything else are refused. IPv4-mapped IPv6 (`::ffff:192.0.2.66`) stays IPv6 here;
/// [`crate::addr::SourceAddr::from_ip`] folds it to IPv4.
pub fn parse_ip(inner: &[u8]) -> Option<IpAddr> {
    let inner = if inner.len() > 5 && inner[..5].eq_ignore_ascii_case(b"IPv6:") {
        let v6 = std::str::from_utf8(&inner[5..]).ok()?;
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    } else {
        inner
    };
    if inner.is_empty() || inner.len() > 45 {
        return None;
    }
    if !inner.contains(&b':') {
        return parse_ipv4(inner).map(IpAddr::V4);
    }
    if !inner.iter().all(|b| b.is_ascii_hexdigit() || *b == b'.' || *b == b':') {
        return None;
    }
    std::str::from_utf8(inner).ok()?.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

const MAY_BE_FORGED: &[u8] = b" (may be forged)";

/// `s` ends with a sendmail relay string; return its address (the last bracket).
/// Accepted: `[ip]`, `name [ip]`, `name [ip] (may be forged)` where `name` is
/// anything without a blank at its end (it is attacker-controlled and ignored).
pub fn relay_at_end(s: &[u8]) -> Option<IpAddr> {
    let s = s.strip_suffix(MAY_BE_FORGED).unwrap_or(s);
    let s = s.strip_suffix(b"]")?;
    let open = memchr::memrchr(b'[', s)?;
    if open > 0 && s[open - 1] != b' ' {
        return None;
    }
    parse_ip(&s[open + 1..])
}

/// Characters sendmail's relay name may have for [`relay_at_start`]: host-name
/// characters plus `@` (an ident user, `user@host [ip]`). No blank, no bracket.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@')
}

/// `s` starts with a sendmail relay string; return its address and the rest after it
/// (after ` (may be forged)` when present). The name part must be host-name
/// characters only; anything else is refused (a weird reverse-DNS name then hides
/// the line rather than risk reading an address out of attacker text).
pub fn relay_at_start(s: &[u8]) -> Option<(IpAddr, &[u8])> {
    let mut i = 0;
    if s.first() != Some(&b'[') {
        while i < s.len() && is_name_byte(s[i]) {
            i += 1;
        }
        if i == 0 || s.get(i) != Some(&b' ') {
            return None;
        }
        i += 1;
        if s.get(i) != Some(&b'[') {
            return None;
        }
    }
    let close = i + memchr::memchr(b']', &s[i..])?;
    let ip = parse_ip(&s[i + 1..close])?;
    let rest = &s[close + 1..];
    Some((ip, rest.strip_prefix(MAY_BE_FORGED).unwrap_or(rest)))
}

/// Longest sample kept: guessed recipients and probed names are cut to this many
/// characters (the rest is attacker text nobody needs).
pub const SAMPLE_MAX: usize = 64;

/// Lossy text of attacker-supplied bytes for evidence (a guessed recipient, a probed
/// name): at most `max` (≤ [`SAMPLE_MAX`]) characters, control characters replaced, so it
/// is safe to print in a terminal or JSON. Printable ASCII — nearly every sample — is
/// held inline: no allocation per guess (a harvest-heavy log has a million).
#[derive(Clone)]
pub struct Sample(Repr);

#[derive(Clone)]
enum Repr {
    /// Only printable ASCII is put here (sample_text's fast path).
    Ascii { len: u8, bytes: [u8; SAMPLE_MAX] },
    Text(std::sync::Arc<str>),
}

impl std::ops::Deref for Sample {
    type Target = str;

    fn deref(&self) -> &str {
        match &self.0 {
            Repr::Ascii { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Repr::Text(t) => t,
        }
    }
}

impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Sample {}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// Text that is already a sample (tests, and text made here).
impl From<&str> for Sample {
    fn from(s: &str) -> Self {
        sample_text(s.as_bytes(), SAMPLE_MAX)
    }
}

impl From<String> for Sample {
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

/// See [`Sample`].
pub fn sample_text(b: &[u8], max: usize) -> Sample {
    let max = max.min(SAMPLE_MAX);
    // The common case, printable ASCII within `max`: a plain copy.
    if b.len() <= max && b.iter().all(|c| (0x20..0x7f).contains(c)) {
        let mut bytes = [0u8; SAMPLE_MAX];
        bytes[..b.len()].copy_from_slice(b);
        return Sample(Repr::Ascii { len: b.len() as u8, bytes });
    }
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len().min(max + 3));
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    Sample(Repr::Text(out.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn brackets_and_sendmail_ipv6() {
        assert_eq!(parse_ip(b"192.0.2.66"), Some(ip("192.0.2.66")));
        assert_eq!(parse_ip(b"IPv6:2001:db8:0:0:0:0:0:66"), Some(ip("2001:db8::66")));
        assert_eq!(parse_ip(b"ipv6:2001:db8::66"), Some(ip("2001:db8::66")));
        assert_eq!(parse_ip(b"2001:db8::66"), Some(ip("2001:db8::66")));
        assert_eq!(parse_ip(b"IPv6:192.0.2.1"), None);
        assert_eq!(parse_ip(b"fe80::1%eth0"), None);
        assert_eq!(parse_ip(b" 192.0.2.66"), None);
        assert_eq!(parse_ip(b"192.0.2.666"), None);
        assert_eq!(parse_ip(b""), None);
        assert_eq!(parse_ip(b"0.0.0.0"), Some(ip("0.0.0.0")));
        assert_eq!(parse_ip(b"255.255.255.255"), Some(ip("255.255.255.255")));
        for bad in [&b"192.0.2"[..], b"192.0.2.1.", b"192.0.2.01", b"192.0.2.256", b"1922.0.2.1", b"192..2.1", b".1.2.3", b"1.2.3.4x"] {
            assert_eq!(parse_ip(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_ip(b"::ffff:192.0.2.66"), Some(ip("::ffff:192.0.2.66")));
    }

    #[test]
    fn relay_forms_at_end() {
        assert_eq!(relay_at_end(b"[192.0.2.66]"), Some(ip("192.0.2.66")));
        assert_eq!(relay_at_end(b"harvester.example.net [192.0.2.67]"), Some(ip("192.0.2.67")));
        assert_eq!(
            relay_at_end(b"forged.example.org [192.0.2.68] (may be forged)"),
            Some(ip("192.0.2.68"))
        );
        assert_eq!(relay_at_end(b"[IPv6:2001:db8:0:0:0:0:0:66]"), Some(ip("2001:db8::66")));
        // Attacker-controlled reverse-DNS names are ignored.
        assert_eq!(relay_at_end(b"198.51.100.201 [192.0.2.66]"), Some(ip("192.0.2.66")));
        assert_eq!(relay_at_end(b"[198.51.100.201] [192.0.2.66]"), Some(ip("192.0.2.66")));
        assert_eq!(relay_at_end(b"root@localhost"), None);
        assert_eq!(relay_at_end(b"x[192.0.2.66]"), None);
    }

    #[test]
    fn relay_forms_at_start() {
        let (a, rest) = relay_at_start(b"[192.0.2.66]: VRFY root").unwrap();
        assert_eq!((a, rest), (ip("192.0.2.66"), &b": VRFY root"[..]));
        let (a, rest) = relay_at_start(b"forged.example.org [192.0.2.68] (may be forged): X").unwrap();
        assert_eq!((a, rest), (ip("192.0.2.68"), &b": X"[..]));
        let (a, _) = relay_at_start(b"198.51.100.201 [192.0.2.66]: VRFY x").unwrap();
        assert_eq!(a, ip("192.0.2.66"));
        // A reverse-DNS name cannot contain a blank: the first bracket is taken and the
        // caller then finds no `: VRFY` right after it, so the line is refused.
        let (a, rest) = relay_at_start(b"evil [198.51.100.1] [192.0.2.66]: VRFY x").unwrap();
        assert_eq!((a, rest), (ip("198.51.100.1"), &b" [192.0.2.66]: VRFY x"[..]));
        // A name with a blank or bracket is refused outright.
        assert_eq!(relay_at_start(b"a b [192.0.2.66]: VRFY x"), None);
        assert_eq!(relay_at_start(b"a[198.51.100.1] [192.0.2.66]: VRFY x"), None);
        assert_eq!(relay_at_start(b"VRFY x"), None);
    }

    #[test]
    fn samples_are_bounded_and_printable() {
        assert_eq!(&*sample_text(b"<a@b>", 10), "<a@b>");
        assert_eq!(&*sample_text(b"abcdef", 3), "abc…");
        assert_eq!(&*sample_text(b"a\x1b[2Jb\xff", 10), "a?[2Jb\u{fffd}");
        let long = [b'a'; 100];
        assert_eq!(sample_text(&long, 100).chars().count(), SAMPLE_MAX + 1, "cut at SAMPLE_MAX, then …");
        assert_eq!(&*sample_text(&long[..SAMPLE_MAX], 100), std::str::from_utf8(&long[..SAMPLE_MAX]).unwrap(), "inline at the limit");
        assert!(matches!(sample_text(b"<a@b>", 10).0, Repr::Ascii { .. }) && matches!(sample_text("é".as_bytes(), 10).0, Repr::Text(_)));
        assert_eq!(Sample::from("<a@b>"), sample_text(b"<a@b>", 64));
    }
}
