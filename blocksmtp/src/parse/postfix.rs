//! Postfix smtpd rejects:
//!
//! `NOQUEUE: reject: RCPT from name[ip]: 550 5.1.1 <x@example.com>: Recipient address
//! rejected: User unknown in local recipient table; from=<…> to=<…> proto=ESMTP helo=<…>`
//!
//! (also `virtual mailbox table`, `virtual alias table`, `relay recipient table`, and
//! `reject: VRFY from …` for VRFY probes). Every other reject — greylisting, relay
//! denied, RBL hits, sender checks — is not a guess.
//!
//! The client is `name[ip]` right after `RCPT from `: Postfix writes a verified
//! host name or `unknown`, which contain neither `[` nor `: `, so the address is the
//! bracket that closes the text before the first `: `. The recipient, sender and HELO
//! that follow are the client's own text and are never read for an address.
use memchr::memmem;

use super::{Event, GuessKind, client::parse_ip};

const UNKNOWN_IN: &[u8] = b"Recipient address rejected: User unknown in ";
const TABLES: [&[u8]; 4] =
    [b"local recipient table", b"virtual mailbox table", b"virtual alias table", b"relay recipient table"];

/// Recognise one Postfix message (after `postfix/smtpd[pid]: `).
pub fn parse(msg: &[u8]) -> Event<'_> {
    // "NOQUEUE: reject: " or "4F1A2B3C4D: reject: " (a queue id when the queue file
    // exists already, e.g. with milters).
    let Some(colon) = msg.iter().take(32).position(|&b| b == b':') else { return Event::Other };
    if !msg[..colon].iter().all(u8::is_ascii_alphanumeric) {
        return Event::Other;
    }
    if let Some(c) = msg[colon..].strip_prefix(b": client=") {
        return delivered(c);
    }
    let Some(rest) = msg[colon..].strip_prefix(b": reject: ") else { return Event::Other };
    let (kind, rest) = if let Some(r) = rest.strip_prefix(b"RCPT from ") {
        (GuessKind::UnknownRecipient, r)
    } else if let Some(r) = rest.strip_prefix(b"VRFY from ") {
        (GuessKind::Vrfy, r)
    } else {
        return Event::Other;
    };
    let Some(end) = memmem::find(rest, b": ") else { return Event::Other };
    let (client_part, reply) = (&rest[..end], &rest[end + 2..]);
    // 550 5.1.1, or 450 4.1.1 with unknown_local_recipient_reject_code = 450.
    if !(reply.starts_with(b"550 5.1.1 ") || reply.starts_with(b"450 4.1.1 ")) {
        return Event::Other;
    }
    let Some(pos) = memmem::find(reply, UNKNOWN_IN) else { return Event::Other };
    let after = &reply[pos + UNKNOWN_IN.len()..];
    if !TABLES.iter().any(|t| after.starts_with(t)) {
        return Event::Other;
    }
    let target = reply[10..pos].strip_suffix(b": ").unwrap_or(&reply[10..pos]);
    let Some(client_part) = client_part.strip_suffix(b"]") else { return Event::Other };
    let Some(open) = memchr::memchr(b'[', client_part) else { return Event::Other };
    match parse_ip(&client_part[open + 1..]) {
        Some(client) => Event::Guess { client, kind, target, session: None },
        None => Event::Unattributable { kind, target },
    }
}

/// `client=name[ip]` (then the end of the line or `, sasl_…`/`, orig_…` fields):
/// Postfix's verified name or `unknown` holds no `[`, so the first bracket is the address.
fn delivered(c: &[u8]) -> Event<'_> {
    let Some(open) = memchr::memchr(b'[', c) else { return Event::Other };
    let Some(close) = memchr::memchr(b']', &c[open..]).map(|i| open + i) else { return Event::Other };
    if !(close + 1 == c.len() || c[close + 1..].starts_with(b", ")) {
        return Event::Other;
    }
    match parse_ip(&c[open + 1..close]) {
        Some(client) => Event::Delivered { session: None, client },
        None => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Postfix smtpd / cleanup messages (after `postfix/smtpd[pid]: `) and their events.
    #[test]
    fn lines_and_their_events() {
        let guess = |client, kind, target| Event::Guess { client: ip(client), kind, target, session: None };
        let unknown = GuessKind::UnknownRecipient;
        let cases: Vec<(&[u8], Event<'static>)> = vec![
            // Accepted mail names its client.
            (b"4F1A2B3C4D: client=mail.example.net[192.0.2.10]", Event::Delivered { session: None, client: ip("192.0.2.10") }),
            (
                b"4F1A2B3C4D: client=unknown[2001:db8::10], sasl_method=PLAIN, sasl_username=a[192.0.2.99]",
                Event::Delivered { session: None, client: ip("2001:db8::10") },
            ),
            (b"4F1A2B3C4D: client=unknown[192.0.2.10]x", Event::Other),
            (b"4F1A2B3C4D: uid=0 from=<root>", Event::Other),
            // Unknown users in the local, virtual mailbox and virtual alias tables; VRFY.
            (
                b"NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 550 5.1.1 <nosuch@example.com>: Recipient address rejected: User unknown in local recipient table; from=<a@example.net> to=<nosuch@example.com> proto=ESMTP helo=<harvester.invalid>",
                guess("192.0.2.66", unknown, b"<nosuch@example.com>"),
            ),
            (
                b"NOQUEUE: reject: RCPT from mail.example.net[192.0.2.67]: 550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in virtual mailbox table; from=<a@example.net> to=<x@example.org> proto=ESMTP helo=<mail.example.net>",
                guess("192.0.2.67", unknown, b"<x@example.org>"),
            ),
            (
                b"NOQUEUE: reject: RCPT from unknown[2001:db8::66]: 550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in virtual alias table; from=<> to=<x@example.org> proto=SMTP helo=<x>",
                guess("2001:db8::66", unknown, b"<x@example.org>"),
            ),
            (
                b"4F1A2B3C4D: reject: RCPT from unknown[192.0.2.66]: 450 4.1.1 <x@example.com>: Recipient address rejected: User unknown in local recipient table; from=<> to=<x@example.com> proto=ESMTP helo=<x>",
                guess("192.0.2.66", unknown, b"<x@example.com>"),
            ),
            (
                b"NOQUEUE: reject: VRFY from unknown[192.0.2.66]: 550 5.1.1 <admin>: Recipient address rejected: User unknown in local recipient table; to=<admin> proto=SMTP",
                guess("192.0.2.66", GuessKind::Vrfy, b"<admin>"),
            ),
            // Attacker text is not the client: a reverse-DNS name that looks like an
            // address, HELO and recipient with addresses ...
            (
                b"NOQUEUE: reject: RCPT from 198.51.100.201[192.0.2.66]: 550 5.1.1 <\"[198.51.100.200]\"@example.com>: Recipient address rejected: User unknown in local recipient table; from=<evil@[198.51.100.203]> to=<\"[198.51.100.200]\"@example.com> proto=ESMTP helo=<[198.51.100.210]>",
                guess("192.0.2.66", unknown, b"<\"[198.51.100.200]\"@example.com>"),
            ),
            // ... and a name cannot contain '[': such a line has no usable client.
            (
                b"NOQUEUE: reject: RCPT from x[198.51.100.1][192.0.2.66]: 550 5.1.1 <a@b>: Recipient address rejected: User unknown in local recipient table; from=<> to=<a@b>",
                Event::Unattributable { kind: unknown, target: b"<a@b>" },
            ),
            // Other rejects are not guesses.
            (b"NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 450 4.2.0 <a@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html; from=<b@example.net> to=<a@example.com> proto=ESMTP helo=<x>", Event::Other),
            (b"NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 554 5.7.1 <victim@example.org>: Relay access denied; from=<b@example.net> to=<victim@example.org> proto=ESMTP helo=<x>", Event::Other),
            (b"NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 554 5.7.1 Service unavailable; Client host [192.0.2.66] blocked using zen.spamhaus.org; from=<b@example.net> to=<a@example.com> proto=ESMTP helo=<x>", Event::Other),
            (b"NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 554 5.7.1 <victim@example.org>: Relay access denied; from=<b@example.net> to=<Recipient address rejected: User unknown in local recipient table> proto=ESMTP helo=<x>", Event::Other),
            (b"connect from unknown[192.0.2.66]", Event::Other),
            (b"disconnect from unknown[192.0.2.66] ehlo=1 mail=1 rcpt=0/5 quit=1 commands=3/8", Event::Other),
            (b"NOQUEUE: reject: CONNECT from [192.0.2.66]:4242: 550 5.3.2 Service currently unavailable; proto=SMTP", Event::Other),
            (b"", Event::Other),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), want, "{}", String::from_utf8_lossy(line));
        }
    }
}
