//! sendmail (8.x) messages, shaped on real 8.17 output.
//!
//! | line (after `QUEUEID: `)                                          | event |
//! |--------------------------------------------------------------------|-------|
//! | `<x@example.com>... User unknown` / `... No such user here`         | [`Event::PendingGuess`] (no address on the line) |
//! | `ruleset=check_rcpt, arg1=<x>, relay=R, reject=550 5.1.1 <x>... User unknown` | [`Event::Guess`] when the line holds exactly one `, relay=` and one `, reject=`; otherwise pending |
//! | `R: VRFY name`, `R: EXPN name`                                      | [`Event::Guess`] (probe) |
//! | `R: possible SMTP attack: command=VRFY, count=N`                    | [`Event::ProbeAttack`] |
//! | `R: Possible SMTP RCPT flood, throttling.` / `shutting down connection.` | [`Event::Flood`] |
//! | `from=<…>, …, relay=R`                                               | [`Event::Session`] (transaction over) |
//! | `lost input channel from R to …`, `R did not issue MAIL/EXPN/VRFY/ETRN …` | [`Event::Session`] |
//!
//! `R` is sendmail's relay string: `[ip]`, `name [ip]` or `name [ip] (may be forged)`.
//! Lines ending in sendmail's own fixed text take the address from the last bracket
//! before that text ([`relay_at_end`]); lines where attacker text follows `R` (VRFY,
//! EXPN, lost input) take it from the start with a strict host-name check
//! ([`relay_at_start`]). A "User unknown" line never yields an address: its recipient
//! is the attacker's text.
use std::sync::LazyLock;

use memchr::memmem::{Finder, FinderRev};

use super::{
    Event, GuessKind,
    client::{relay_at_end, relay_at_start},
};

const USER_UNKNOWN: &[u8] = b"... User unknown";
const NO_SUCH_USER: &[u8] = b"... No such user here";
const FLOOD_THROTTLE: &[u8] = b": Possible SMTP RCPT flood, throttling.";
const FLOOD_SHUTDOWN: &[u8] = b": Possible SMTP RCPT flood, shutting down connection.";
const ATTACK: &[u8] = b": possible SMTP attack: command=";
const LOST_INPUT: &[u8] = b"lost input channel from ";
const DID_NOT_ISSUE: &[u8] = b" did not issue MAIL/EXPN/VRFY/ETRN during connection to ";
const CHECK_RCPT: &[u8] = b"ruleset=check_rcpt, arg1=";

static FIND_ATTACK: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(ATTACK));
// Built once: a searcher costs more to build than to run on one line.
static FIND_NRCPTS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b", nrcpts="));

/// Split `QUEUEID: rest`. sendmail queue ids are 8 characters of time and sequence
/// plus the zero-padded pid: alphanumerics, 14 long on Linux (up to 20 allowed).
/// `NOQUEUE: rest` gives the id `NOQUEUE`.
pub fn split_queue_id(msg: &[u8]) -> (Option<&[u8]>, &[u8]) {
    // The 14-character id first, checked without a search (the byte loop below was
    // half of this parser's time): alphanumerics hold no `:`, so this is the first.
    if let Some((id, rest)) = msg.split_at_checked(14)
        && rest.starts_with(b": ")
        && id.iter().fold(true, |ok, b| ok & b.is_ascii_alphanumeric())
    {
        return (Some(id), &rest[2..]);
    }
    let end = msg.iter().take(22).position(|&b| b == b':');
    if let Some(end) = end
        && (8..=20).contains(&end)
        && msg.get(end + 1) == Some(&b' ')
        && msg[..end].iter().all(u8::is_ascii_alphanumeric)
    {
        return (Some(&msg[..end]), &msg[end + 2..]);
    }
    (None, msg)
}

/// The last occurrence of `field` (which starts with a comma) in `body`: the commas
/// from the end (memrchr's SIMD), not a reverse substring search (the fields sought
/// are the last ones of a from= line, on every such line).
fn rfind_field(body: &[u8], field: &[u8]) -> Option<usize> {
    memchr::memrchr_iter(b',', body).find(|&i| body[i..].starts_with(field))
}

/// Recognise one sendmail message (the text after `sm-mta[pid]: `).
pub fn parse(msg: &[u8]) -> Event<'_> {
    let (qid, body) = split_queue_id(msg);
    let Some(&last) = body.last() else { return Event::Other };
    match last {
        // "... User unknown" / "... No such user here" / "(may be forged)"-free relay ends
        b'n' | b'e' => {
            if let Some(target) = body.strip_suffix(USER_UNKNOWN).or_else(|| body.strip_suffix(NO_SUCH_USER)) {
                return unknown_user(qid, target);
            }
        }
        b'.' => {
            if let Some(r) = body.strip_suffix(FLOOD_THROTTLE).or_else(|| body.strip_suffix(FLOOD_SHUTDOWN)) {
                return match relay_at_end(r) {
                    Some(client) => Event::Flood { session: qid, client },
                    None => Event::Other,
                };
            }
        }
        _ => {}
    }
    // "R: possible SMTP attack: command=EXPN, count=6" (all sendmail's text after R)
    if last.is_ascii_digit()
        && let Some(pos) = FIND_ATTACK.rfind(body)
    {
        let tail = &body[pos + ATTACK.len()..];
        let kind = if tail.starts_with(b"VRFY, count=") {
            GuessKind::Vrfy
        } else if tail.starts_with(b"EXPN, count=") {
            GuessKind::Expn
        } else {
            return Event::Other;
        };
        let count = std::str::from_utf8(&tail[12..]).ok().and_then(|c| c.parse::<u32>().ok());
        return match (relay_at_end(&body[..pos]), count) {
            (Some(client), Some(count)) => Event::ProbeAttack { session: qid, client, kind, count },
            _ => Event::Other,
        };
    }
    match body.first() {
        Some(b'f') if body.starts_with(b"from=") => {
            // The relay is the last field of the from= line: whatever the sender
            // holds comes before the last ", relay=".
            if let Some(pos) = rfind_field(body, b", relay=")
                && let Some(client) = relay_at_end(&body[pos + 8..])
            {
                // nrcpts is sendmail's count of accepted recipients, read after the last
                // `, size=`. Client text (sender, msgid) could fake it: that only spares
                // the source the stricter rules for senders without valid mail.
                let fields = rfind_field(&body[..pos], b", size=").map_or(&body[..0], |s| &body[s..pos]);
                let accepted = FIND_NRCPTS
                    .find(fields)
                    .and_then(|i| fields.get(i + 9))
                    .is_some_and(|d| d.is_ascii_digit() && *d != b'0');
                if accepted {
                    return Event::Delivered { session: qid, client };
                }
                return Event::Session { session: qid, client, ends: true };
            }
        }
        Some(b'l') if body.starts_with(LOST_INPUT) => {
            if let Some((client, rest)) = relay_at_start(&body[LOST_INPUT.len()..])
                && rest.starts_with(b" to ")
            {
                return Event::Session { session: qid, client, ends: true };
            }
        }
        Some(_) => {
            if let Some((client, rest)) = relay_at_start(body) {
                if let Some(name) = rest.strip_prefix(b": VRFY ") {
                    return Event::Guess { client, kind: GuessKind::Vrfy, target: name, session: qid };
                }
                if let Some(name) = rest.strip_prefix(b": EXPN ") {
                    return Event::Guess { client, kind: GuessKind::Expn, target: name, session: qid };
                }
                if rest.starts_with(DID_NOT_ISSUE) {
                    return Event::Session { session: qid, client, ends: true };
                }
            }
        }
        None => {}
    }
    Event::Other
}

/// A "User unknown" line: either the short `<x>... User unknown` form (no address,
/// attribute through the queue id) or the `ruleset=check_rcpt` reject.
fn unknown_user<'a>(qid: Option<&'a [u8]>, target: &'a [u8]) -> Event<'a> {
    let Some(args) = target.strip_prefix(CHECK_RCPT) else {
        if target.is_empty() {
            return Event::Other;
        }
        return match qid {
            Some(session) => Event::PendingGuess { session, kind: GuessKind::UnknownRecipient, target },
            None => Event::Unattributable { kind: GuessKind::UnknownRecipient, target },
        };
    };
    // ruleset=check_rcpt, arg1=<ARG>, relay=R, reject=550 5.1.1 <ARG>... User unknown
    // Both fields start with the only comma in them, so the commas find every one of
    // each (one pass instead of four substring searches).
    let (mut relay, mut more_relays, mut reject, mut more_rejects) = (None, false, None, false);
    for i in memchr::memchr_iter(b',', args) {
        let field = &args[i..];
        let (first, more) = if field.starts_with(b", relay=") {
            (&mut relay, &mut more_relays)
        } else if field.starts_with(b", reject=") {
            (&mut reject, &mut more_rejects)
        } else {
            continue;
        };
        if first.is_none() {
            *first = Some(i);
        } else {
            *more = true;
        }
    }
    let rcpt = &args[..relay.unwrap_or(args.len())];
    // Only permanent rejects are guesses; 4xx is a temporary lookup failure.
    // (An injected ", reject=5" can only make the client's own line count.)
    let Some(reject) = reject.filter(|&r| args.get(r + 9) == Some(&b'5')) else {
        return Event::Other;
    };
    if let Some(relay) = relay
        && !more_relays
        && !more_rejects
        && relay < reject
        && let Some(client) = relay_at_end(&args[relay + 8..reject])
    {
        return Event::Guess { client, kind: GuessKind::UnknownRecipient, target: rcpt, session: qid };
    }
    match qid {
        Some(session) => Event::PendingGuess { session, kind: GuessKind::UnknownRecipient, target: rcpt },
        None => Event::Unattributable { kind: GuessKind::UnknownRecipient, target: rcpt },
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const UNKNOWN: GuessKind = GuessKind::UnknownRecipient;

    /// Lines as sendmail 8.17.1.9 wrote them (the message after `sm-mta[pid]: `) and the
    /// event each is.
    #[test]
    fn lines_and_their_events() {
        let q = |s: &'static str| Some(s.as_bytes());
        let pending = |session: &'static [u8], target: &'static [u8]| Event::PendingGuess { session, kind: UNKNOWN, target };
        let flood = |session, client| Event::Flood { session: q(session), client: ip(client) };
        let ends = |session, client| Event::Session { session: q(session), client: ip(client), ends: true };
        let probe = |kind, target, client| Event::Guess { client: ip(client), kind, target, session: q("6ARCaM6m018977") };
        let cases: Vec<(&[u8], Event<'static>)> = vec![
            // User unknown: no address on the line, pending on the queue id.
            (b"6ARCZkEp018868: <tpwjzbwb15@example.com>... User unknown", pending(b"6ARCZkEp018868", b"<tpwjzbwb15@example.com>")),
            (b"6ARCZkEp018868: <x@example.com>... No such user here", pending(b"6ARCZkEp018868", b"<x@example.com>")),
            // The recipient names an address and even a relay= clause: still pending.
            (
                b"6ARCZkEp018868: <\"x@example.com>... User unknown, relay=[198.51.100.204]\"@example.com>... User unknown",
                pending(b"6ARCZkEp018868", b"<\"x@example.com>... User unknown, relay=[198.51.100.204]\"@example.com>"),
            ),
            (b"6ARCZkEp018868: ... User unknown", Event::Other),
            // sendmail's flood lines name the client at their end.
            (b"6ARCZkEp018868: [192.0.2.66]: Possible SMTP RCPT flood, throttling.", flood("6ARCZkEp018868", "192.0.2.66")),
            (b"6ARCaTcj018992: [IPv6:2001:db8:0:0:0:0:0:66]: Possible SMTP RCPT flood, throttling.", flood("6ARCaTcj018992", "2001:db8::66")),
            (b"6ARCalaA019042: harvester.example.net [192.0.2.67]: Possible SMTP RCPT flood, throttling.", flood("6ARCalaA019042", "192.0.2.67")),
            (b"6ARCaoci019044: forged.example.org [192.0.2.68] (may be forged): Possible SMTP RCPT flood, throttling.", flood("6ARCaoci019044", "192.0.2.68")),
            (b"6ARCYmRS018304: [192.0.2.66]: Possible SMTP RCPT flood, shutting down connection.", flood("6ARCYmRS018304", "192.0.2.66")),
            // A reverse-DNS name that looks like an address is not the address.
            (b"6ARCalaA019042: 198.51.100.201 [192.0.2.67]: Possible SMTP RCPT flood, throttling.", flood("6ARCalaA019042", "192.0.2.67")),
            // VRFY / EXPN: the probed name is the attacker's; it may look like anything.
            (b"6ARCaM6m018977: [192.0.2.66]: VRFY tlpgqvkx26", probe(GuessKind::Vrfy, b"tlpgqvkx26", "192.0.2.66")),
            (b"6ARCaM6m018977: [192.0.2.66]: EXPN djevvld21", probe(GuessKind::Expn, b"djevvld21", "192.0.2.66")),
            (b"6ARCaM6m018977: [192.0.2.66]: VRFY [198.51.100.205]: VRFY x", probe(GuessKind::Vrfy, b"[198.51.100.205]: VRFY x", "192.0.2.66")),
            (
                b"6ARCaM6m018977: [192.0.2.66]: possible SMTP attack: command=EXPN, count=6",
                Event::ProbeAttack { session: q("6ARCaM6m018977"), client: ip("192.0.2.66"), kind: GuessKind::Expn, count: 6 },
            ),
            (b"6ARCaM6m018977: [192.0.2.66]: possible SMTP attack: command=NOOP, count=21", Event::Other),
            // Lines naming the session's client.
            (b"6ARCZkEp018868: from=<sgbpebo11@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]", ends("6ARCZkEp018868", "192.0.2.66")),
            (b"6ARCaoci019044: from=<kfykux73@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=forged.example.org [192.0.2.68] (may be forged)", ends("6ARCaoci019044", "192.0.2.68")),
            (b"6ARCaTcj018992: from=<adummg44@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v6, relay=[IPv6:2001:db8:0:0:0:0:0:66]", ends("6ARCaTcj018992", "2001:db8::66")),
            // The sender is the attacker's and comes before the real relay.
            (b"6ARCZkEp018868: from=<evil@[198.51.100.203]>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=198.51.100.201 [192.0.2.66]", ends("6ARCZkEp018868", "192.0.2.66")),
            (b"6ARCaOVO018980: lost input channel from [192.0.2.66] to MTA-v4 after rcpt", ends("6ARCaOVO018980", "192.0.2.66")),
            (b"6ARCa7pt018879: [192.0.2.66] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA-v4", ends("6ARCa7pt018879", "192.0.2.66")),
            (b"6ARCa4t9018871: from=root, size=10, class=0, nrcpts=1, relay=root@localhost", Event::Other),
            // Accepted recipients: valid mail. A sender faking nrcpts= does not count.
            (
                b"6ARCa4t9018871: from=<a@example.net>, size=1200, class=0, nrcpts=2, msgid=<x@example.net>, proto=ESMTP, daemon=MTA-v4, relay=mail.example.net [192.0.2.10]",
                Event::Delivered { session: q("6ARCa4t9018871"), client: ip("192.0.2.10") },
            ),
            (b"6ARCa4t9018871: from=<a, nrcpts=1@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]", ends("6ARCa4t9018871", "192.0.2.66")),
            // check_rcpt rejects carry the client.
            (
                b"6ARCaRN9018986: ruleset=check_rcpt, arg1=<nobody1@example.com>, relay=[192.0.2.66], reject=550 5.1.1 <nobody1@example.com>... User unknown",
                Event::Guess { client: ip("192.0.2.66"), kind: UNKNOWN, target: b"<nobody1@example.com>", session: q("6ARCaRN9018986") },
            ),
            (
                b"6ARCaRN9018986: ruleset=check_rcpt, arg1=<n@example.com>, relay=198.51.100.201 [192.0.2.66] (may be forged), reject=550 5.1.1 <n@example.com>... User unknown",
                Event::Guess { client: ip("192.0.2.66"), kind: UNKNOWN, target: b"<n@example.com>", session: q("6ARCaRN9018986") },
            ),
            // An injected relay= in the recipient makes the line ambiguous: held by queue id.
            (
                b"6ARCaRN9018986: ruleset=check_rcpt, arg1=<\"a, relay=[198.51.100.204], reject=550\"@example.com>, relay=[192.0.2.66], reject=550 5.1.1 <\"a, relay=[198.51.100.204], reject=550\"@example.com>... User unknown",
                pending(b"6ARCaRN9018986", b"<\"a"),
            ),
            // Not guesses: relaying denied, access denied, rate limit, temporary failures.
            (b"6ARCaRN9018986: ruleset=check_rcpt, arg1=<victim@example.org>, relay=[192.0.2.66], reject=550 5.7.1 <victim@example.org>... Relaying denied. IP name lookup failed [192.0.2.66]", Event::Other),
            (b"6ARCarAa019050: ruleset=check_rcpt, arg1=<root@example.com>, relay=[192.0.2.99], reject=550 5.7.1 <root@example.com>... Access denied", Event::Other),
            (b"ruleset=check_relay, arg1=[192.0.2.69], arg2=192.0.2.69, relay=[192.0.2.69], reject=421 4.3.2 Connection rate limit exceeded.", Event::Other),
            (b"6ARCaRN9018986: ruleset=check_rcpt, arg1=<a@example.com>, relay=[192.0.2.66], reject=451 4.1.1 <a@example.com>... User unknown", Event::Other),
            (b"NOQUEUE: tcpwrappers (unknown, 192.0.2.98) rejection", Event::Other),
            (b"6ARCarZf019047: rejecting commands from [192.0.2.66] [192.0.2.66] due to pre-greeting traffic after 0 seconds", Event::Other),
            (b"6ARCaPtm018983: collect: relay=[192.0.2.66], from=<carol@example.net>, info=unexpected close", Event::Other),
            (b"6ARCa4t9018871: to=<root@example.com>, delay=00:00:01, xdelay=00:00:01, mailer=local, pri=30373, dsn=2.0.0, stat=Sent", Event::Other),
            (b"starting daemon (8.17.1.9): SMTP+queueing@00:10:00", Event::Other),
            (b"", Event::Other),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn queue_ids() {
        // message → (queue id, rest)
        type Case<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8]);
        let cases: &[Case] = &[
            (b"6ARCZkEp018868: x", Some(b"6ARCZkEp018868"), b"x"),
            (b"NOQUEUE: x", None, b"NOQUEUE: x"),
            (b"from=<a>: x", None, b"from=<a>: x"),
            (b"abc: x", None, b"abc: x"),
            // A seven-digit pid; an earlier `: ` ends the id; no blank, or a non-alphanumeric.
            (b"6ARCZkEp1018868: x", Some(b"6ARCZkEp1018868"), b"x"),
            (b"ABCDEFGH: abcd: x", Some(b"ABCDEFGH"), b"abcd: x"),
            (b"6ARCZkEp018868:x", None, b"6ARCZkEp018868:x"),
            (b"6ARCZkEp01886!: x", None, b"6ARCZkEp01886!: x"),
        ];
        for (msg, id, rest) in cases {
            assert_eq!(split_queue_id(msg), (*id, *rest), "{}", String::from_utf8_lossy(msg));
        }
    }
}
