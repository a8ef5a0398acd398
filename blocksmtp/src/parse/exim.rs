//! Exim main log (`/var/log/exim4/mainlog`, also what exim sends to syslog):
//!
//! `2026-11-27 12:00:00 H=name (helo) [192.0.2.66]:54321 I=[192.0.2.25]:25
//! F=<a@example.net> rejected RCPT <x@example.com>: Unknown user`
//!
//! The timestamp may carry `.mmm` (`+millisec`) and a zone (`log_timezone`), and a
//! `[pid]` may follow (`+pid`). The host part after `H=` is one of `[ip]`,
//! `name [ip]`, `(helo) [ip]`, `name (helo) [ip]`, each optionally followed by
//! `:port` (`+incoming_port`). Guesses: `rejected RCPT <…>: Unknown user` and
//! `…: Unrouteable address` (Debian's `verify = recipient`), `No Such User Here`, and
//! what Debian's stock ACL logs for every RCPT after the 10th when fewer than half were
//! good: `…: Rejected for too many bad recipients`, or its `log_message`
//! `…: REJECT [ip]: bad recipient count high [N]` (the address there is the ACL's
//! `$sender_host_address`, ignored: the client is still read from `H=`).
//!
//! Exim sends the same lines to syslog (`log_file_path = syslog`), where they may carry
//! Exim's own timestamp after the syslog header (`syslog_timestamp` left at true): it
//! is skipped.
//!
//! Accepted mail: the arrival line `1tXyzA-000Abc-1F <= a@example.net H=name (helo)
//! [192.0.2.10]:54321 I=[192.0.2.25]:25 P=esmtps S=2345 id=…` is
//! [`Event::Delivered`] (the message id as session), the evidence of a real sender
//! the policy uses; its client is read as in [`arrival_client`].
//!
//! The HELO (in parentheses), the sender and the recipient are the client's text. The
//! address is taken right after `H=` when the field starts with `[`; otherwise it is
//! the bracket preceded by a blank and followed by a port, a blank or the end of the
//! line — and it must be the only such bracket on the line (or all of them must name
//! the same address). A client that writes one more ` [ip] ` into its HELO or sender
//! only makes its line unattributable; it can never make another address banned.
use std::net::IpAddr;

use memchr::memmem;

use super::{Event, Frame, GuessKind, client::parse_ip, syslog::parse_pid, time::RawTime};

/// Frame an exim main-log line (tag `exim`, no host), or `None`.
pub fn frame(line: &[u8]) -> Option<Frame<'_>> {
    if line.len() < 21 || line[4] != b'-' || line[7] != b'-' || line[10] != b' ' || line[13] != b':' {
        return None;
    }
    let mut end = 19;
    if line.get(end) == Some(&b'.') {
        end += 1 + line[end + 1..].iter().take(9).take_while(|b| b.is_ascii_digit()).count();
    }
    if line.get(end) == Some(&b' ')
        && matches!(line.get(end + 1), Some(b'+' | b'-'))
        && line.len() >= end + 6
        && line[end + 2..end + 6].iter().all(u8::is_ascii_digit)
    {
        end += 6;
    }
    let time = RawTime::Exim(&line[..end]);
    let mut rest = line[end..].strip_prefix(b" ")?;
    let mut pid = None;
    if rest.first() == Some(&b'[')
        && let Some(close) = rest.iter().take(12).position(|&b| b == b']')
        && let Some(p) = parse_pid(&rest[1..close])
    {
        pid = Some(p);
        rest = rest[close + 1..].strip_prefix(b" ").unwrap_or(&rest[close + 1..]);
    }
    Some(Frame { time, host: b"", tag: b"exim", pid, msg: rest.into(), exim_mainlog: true })
}

fn is_message_id(tok: &[u8]) -> bool {
    // 4.97+: 6-11-4 characters; before: 6-6-2.
    let (a, b) = match tok.len() {
        16 => (6, 13),
        23 => (6, 18),
        _ => return false,
    };
    tok.iter().enumerate().all(|(i, &c)| if i == a || i == b { c == b'-' } else { c.is_ascii_alphanumeric() })
}

const REJECTED_RCPT: &[u8] = b" rejected RCPT ";
const REASONS: [&[u8]; 4] =
    [b": Unknown user", b": Unrouteable address", b": No Such User Here", b": Rejected for too many bad recipients"];
const BAD_COUNT: &[u8] = b"]: bad recipient count high [";
const REJECT_AT: &[u8] = b": REJECT [";

/// Length of the `: REJECT [ip]: bad recipient count high [N]` ending `body`, if it has it.
fn bad_count_reason_len(body: &[u8]) -> Option<usize> {
    let head = body.strip_suffix(b"]")?;
    let digits = head.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let head = head[..head.len() - digits].strip_suffix(BAD_COUNT)?;
    // `: REJECT [` then the address (no blank in it), then what was stripped above.
    let at = memmem::rfind(head, REJECT_AT)?;
    if head[at + REJECT_AT.len()..].contains(&b' ') {
        return None;
    }
    Some(body.len() - at)
}

/// An Exim timestamp (`YYYY-MM-DD HH:MM:SS[.mmm][ ±zzzz][ [pid]]`) opening a syslog
/// message: the text after it.
fn skip_own_timestamp(msg: &[u8]) -> &[u8] {
    match frame(msg) {
        Some(Frame { msg: std::borrow::Cow::Borrowed(rest), .. }) => rest,
        _ => msg,
    }
}

/// Recognise one exim message (the part after the timestamp / `[pid]`).
pub fn parse(msg: &[u8]) -> Event<'_> {
    let mut body = skip_own_timestamp(msg);
    if let Some(sp) = body.iter().take(24).position(|&b| b == b' ')
        && is_message_id(&body[..sp])
    {
        if let Some(arrival) = body[sp + 1..].strip_prefix(b"<= ") {
            return match arrival_client(arrival) {
                Some(client) => Event::Delivered { session: Some(&body[..sp]), client },
                None => Event::Other,
            };
        }
        body = &body[sp + 1..];
    }
    let Some(host) = body.strip_prefix(b"H=") else { return Event::Other };
    let Some(reason_len) = REASONS
        .iter()
        .find(|r| body.len() >= r.len() && body[body.len() - r.len()..].eq_ignore_ascii_case(r))
        .map(|r| r.len())
        .or_else(|| bad_count_reason_len(body))
    else {
        return Event::Other;
    };
    let Some(pos) = memmem::find(host, REJECTED_RCPT) else { return Event::Other };
    let target_end = host.len() - reason_len;
    let target = if pos + REJECTED_RCPT.len() <= target_end { &host[pos + REJECTED_RCPT.len()..target_end] } else { b"" };
    let kind = GuessKind::UnknownRecipient;
    match client(host) {
        Some(client) => Event::Guess { client, kind, target, session: None },
        None => Event::Unattributable { kind, target },
    }
}

/// After `]`: an optional `:port` / `.port`, then a blank or the end.
fn bracket_end_ok(after: &[u8]) -> bool {
    let after = match after.first() {
        Some(b':' | b'.') => {
            let n = after[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return false;
            }
            &after[1 + n..]
        }
        _ => after,
    };
    matches!(after.first(), None | Some(b' '))
}

/// The client of an arrival (`<= sender H=… [ip]:port I=… P=… S=… id=…`), which
/// Exim writes when it accepted a message: the sender comes before `H=` and the
/// message id (and subject, with `+subject`) after it, all client text, so `H=` is
/// not anchored here. Every bracketed address on the line that stands as a host
/// field does (after ` H=` or a blank, followed by a port, a blank or the end; not
/// `I=[…]`, the interface) must be the same one, and there must be an ` H=`: a client
/// that writes another such address into its text gets no credit at all. Local
/// submissions (`U=user P=local`, no `H=`) have no client.
fn arrival_client(line: &[u8]) -> Option<IpAddr> {
    memmem::find(line, b" H=")?;
    let mut found: Option<IpAddr> = None;
    for pos in memchr::memchr_iter(b'[', line) {
        let standalone = pos >= 1 && line[pos - 1] == b' ';
        let after_h = pos >= 3 && &line[pos - 3..pos] == b" H=";
        if !standalone && !after_h {
            continue;
        }
        if let Some(ip) = bracketed(&line[pos + 1..]) {
            found = Some(agree(found, ip)?);
        }
    }
    found
}

/// The address of `ADDR]` at the start of `inner` (just after a `[`), when a port, a
/// blank or the end follows the bracket.
fn bracketed(inner: &[u8]) -> Option<IpAddr> {
    let len = inner.iter().take(60).position(|&b| b == b']')?;
    let ip = parse_ip(&inner[..len])?;
    bracket_end_ok(&inner[len + 1..]).then_some(ip)
}

/// `ip`, if it is the same as the one found before (if any): `None` when they differ.
fn agree(found: Option<IpAddr>, ip: IpAddr) -> Option<IpAddr> {
    match found {
        Some(prev) if prev != ip => None,
        _ => Some(ip),
    }
}

/// The client address of the text after `H=` (see the module documentation).
fn client(host: &[u8]) -> Option<IpAddr> {
    if host.first() == Some(&b'[') {
        return bracketed(&host[1..]);
    }
    let mut found: Option<IpAddr> = None;
    for pos in memmem::find_iter(host, b" [") {
        if let Some(ip) = bracketed(&host[pos + 2..]) {
            found = Some(agree(found, ip)?);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client_of(line: &[u8]) -> Option<IpAddr> {
        let f = frame(line).expect("exim frame");
        match parse(&f.msg) {
            Event::Guess { client, .. } => Some(client),
            Event::Unattributable { .. } => None,
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn message_ids() {
        assert!(is_message_id(b"1tXyzA-000Abc-1F"));
        assert!(is_message_id(b"1tXyzA-000Abc12345-1F2b"));
        assert!(!is_message_id(b"1tXyzA-000Abc-1"));
        assert!(!is_message_id(b"1tXyzA_000Abc-1F"));
        assert!(!is_message_id(b"H=[192.0.2.66]12"));
    }

    #[test]
    fn frames() {
        let f = frame(b"2026-11-27 12:00:00 H=[192.0.2.66] rejected RCPT <a@b>: Unknown user").unwrap();
        assert_eq!(f.time, RawTime::Exim(b"2026-11-27 12:00:00"));
        assert_eq!(&*f.msg, b"H=[192.0.2.66] rejected RCPT <a@b>: Unknown user");
        let f = frame(b"2026-11-27 12:00:00.123 +0100 [4242] H=[192.0.2.66] x").unwrap();
        assert_eq!(f.time, RawTime::Exim(b"2026-11-27 12:00:00.123 +0100"));
        assert_eq!(f.pid, Some(4242));
        assert_eq!(&*f.msg, b"H=[192.0.2.66] x");
        assert!(frame(b"2026-11-27T12:00:00Z mx x: y").is_none());
        assert!(frame(b"2026-11-27 12:00:00").is_none());
    }

    /// Exim 4.96 arrival lines (`<=`): accepted mail from the `H=` host, or nothing.
    #[test]
    fn arrivals_are_accepted_mail() {
        let id = &b"1tXyzA-000Abc-1F"[..];
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= b@example.net H=mail.example.net [192.0.2.10]:40001 I=[192.0.2.25]:25 P=esmtps X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no S=2345 id=x@example.net", Some("192.0.2.10")),
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= b@example.net H=(helo.example.net) [192.0.2.10]:40001 I=[192.0.2.25]:25 P=esmtp S=2345", Some("192.0.2.10")),
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= <> H=mail.example.net (helo) [2001:db8::10]:40001 I=[2001:db8::25]:25 P=esmtp S=900", Some("2001:db8::10")),
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= b@example.net H=[192.0.2.10] P=smtp S=12", Some("192.0.2.10")),
            (b"2026-11-27 12:00:00.123 +0100 [4242] 1tXyzA-000Abc-1F <= b@example.net H=x [192.0.2.10]:1 P=esmtp S=12 id=y", Some("192.0.2.10")),
            // Client text holding addresses where they cannot stand as a host field.
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= evil@[198.51.100.9] H=(x [198.51.100.8]) [192.0.2.10]:1 P=esmtp S=12 id=<a@[198.51.100.7]>", Some("192.0.2.10")),
            // ... and where they could: no credit for anyone.
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= \"x H=[198.51.100.9]:25 \"@example.net H=mail [192.0.2.10]:1 P=esmtp S=12", None),
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= b@example.net H=mail [192.0.2.10]:1 P=esmtp S=12 id= [198.51.100.9] ", None),
            // Local submission and bounce: no client.
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= root@mx.example.com U=root P=local S=345", None),
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F <= <> R=1tXyz9-000Abc-1F U=Debian-exim P=local S=1800", None),
            // Not arrivals.
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F => alice <alice@example.com> R=local_user T=mail_spool", None),
            (b"2026-11-27 12:00:00 <= b@example.net H=mail [192.0.2.10]:1 P=esmtp S=12", None),
        ];
        for (line, want) in cases {
            let f = frame(line).expect("exim frame");
            let got = parse(&f.msg);
            let want = want.map(|w| Event::Delivered { session: Some(id), client: ip(w) });
            assert_eq!(got, want.unwrap_or(Event::Other), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn host_field_forms() {
        for (line, want) in [
            (&b"2026-11-27 12:00:00 H=[192.0.2.66] F=<a@example.net> rejected RCPT <x@example.com>: Unknown user"[..], "192.0.2.66"),
            (b"2026-11-27 12:00:00 H=mail.example.net [192.0.2.66] F=<a@example.net> rejected RCPT <x@example.com>: Unknown user", "192.0.2.66"),
            (b"2026-11-27 12:00:00 H=(harvester.invalid) [192.0.2.66]:54321 I=[192.0.2.25]:25 F=<a@example.net> rejected RCPT <x@example.com>: Unknown user", "192.0.2.66"),
            (b"2026-11-27 12:00:00 H=host.example.net (harvester.invalid) [192.0.2.66]:54321 I=[192.0.2.25]:25 F=<a@example.net> rejected RCPT <x@example.com>: Unrouteable address", "192.0.2.66"),
            (b"2026-11-27 12:00:00 1tXyzA-000Abc-1F H=(x) [2001:db8::66]:54321 F=<> rejected RCPT <x@example.com>: Unknown user", "2001:db8::66"),
            (b"2026-11-27 12:00:00 H=[2001:db8::66]:25 F=<> rejected RCPT <x@example.com>: unknown user", "2001:db8::66"),
            // Hostile HELO, sender, recipient and reverse-DNS name.
            (b"2026-11-27 12:00:00 H=host (helo [198.51.100.210]) [192.0.2.66]:54321 F=<a@example.net> rejected RCPT <x@example.com>: Unknown user", "192.0.2.66"),
            (b"2026-11-27 12:00:00 H=([198.51.100.210]) [192.0.2.66]:54321 F=<evil@[198.51.100.203]> rejected RCPT <\"[198.51.100.200]\"@example.com>: Unknown user", "192.0.2.66"),
            (b"2026-11-27 12:00:00 H=198.51.100.201 [192.0.2.66] F=<a@example.net> rejected RCPT <x@example.com>: Unknown user", "192.0.2.66"),
        ] {
            assert_eq!(client_of(line), Some(ip(want)), "{}", String::from_utf8_lossy(line));
        }
    }

    /// Debian exim4 4.96's stock ACL lines, and the same lines through syslog with and
    /// without Exim's own timestamp.
    #[test]
    fn debian_bad_recipient_lines_and_syslog_forms() {
        for (msg, want) in [
            (&b"H=(harvester.invalid) [192.0.2.66]:54321 I=[192.0.2.25]:25 F=<a@example.net> rejected RCPT <k@example.com>: Rejected for too many bad recipients"[..], "192.0.2.66"),
            (b"H=(harvester.invalid) [192.0.2.66]:54321 I=[192.0.2.25]:25 F=<a@example.net> rejected RCPT <k@example.com>: REJECT [192.0.2.66]: bad recipient count high [11]", "192.0.2.66"),
            // The ACL's address is not where the client is read from.
            (b"H=[192.0.2.66] F=<> rejected RCPT <k@example.com>: REJECT [198.51.100.9]: bad recipient count high [12]", "192.0.2.66"),
            (b"2026-11-27 12:00:00 H=[192.0.2.66] F=<> rejected RCPT <k@example.com>: Unrouteable address", "192.0.2.66"),
            (b"2026-11-27 12:00:00.123 +0100 [4242] H=[192.0.2.66] F=<> rejected RCPT <k@example.com>: Unrouteable address", "192.0.2.66"),
            (b"1tXyzA-000Abc-1F H=[192.0.2.66] F=<> rejected RCPT <k@example.com>: Unknown user", "192.0.2.66"),
        ] {
            match parse(msg) {
                Event::Guess { client, target, .. } => {
                    assert_eq!(client, ip(want), "{}", String::from_utf8_lossy(msg));
                    assert_eq!(target, b"<k@example.com>", "{}", String::from_utf8_lossy(msg));
                }
                e => panic!("{e:?}: {}", String::from_utf8_lossy(msg)),
            }
        }
        for msg in [
            &b"H=[192.0.2.66] F=<> rejected RCPT <k@example.com>: bad recipient count high [11]"[..],
            b"H=[192.0.2.66] F=<> rejected RCPT <k@example.com>: REJECT [192.0.2.66]: bad recipient count high []",
            b"H=[192.0.2.66] F=<> rejected RCPT <k@example.com>: REJECT [a b]: bad recipient count high [3]",
        ] {
            assert_eq!(parse(msg), Event::Other, "{}", String::from_utf8_lossy(msg));
        }
    }

    #[test]
    fn a_second_address_makes_the_line_unattributable() {
        for line in [
            &b"2026-11-27 12:00:00 H=(x) [198.51.100.210]:1 (y) [192.0.2.66]:54321 F=<a@example.net> rejected RCPT <x@example.com>: Unknown user"[..],
            b"2026-11-27 12:00:00 H=(x) [192.0.2.66]:54321 F=<\"a [198.51.100.203] b\"@example.net> rejected RCPT <x@example.com>: Unknown user",
        ] {
            assert_eq!(client_of(line), None, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn other_exim_lines() {
        for line in [
            &b"2026-11-27 12:00:00 H=(x) [192.0.2.66] F=<a@example.net> rejected RCPT <victim@example.org>: relay not permitted"[..],
            b"2026-11-27 12:00:00 H=(x) [192.0.2.66] F=<a@example.net> temporarily rejected RCPT <x@example.com>: greylisted",
            b"2026-11-27 12:00:00 SMTP connection from (x) [192.0.2.66]:54321 lost",
            b"2026-11-27 12:00:00 Start queue run: pid=1234",
        ] {
            let f = frame(line).unwrap();
            assert_eq!(parse(&f.msg), Event::Other, "{}", String::from_utf8_lossy(line));
        }
    }
}
