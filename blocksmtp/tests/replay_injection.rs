//! Injection table: for each attacker-controlled field, a harvest from 192.0.2.66
//! whose text names another address (198.51.100.x). Only the real client may be
//! banned.
mod common;

use common::*;

const REAL: &str = "192.0.2.66";

/// `n` copies of a line template; `{i}` is replaced by the copy number, `{s}` by
/// the second (so times advance).
fn lines(n: usize, template: &str) -> String {
    (0..n).map(|i| template.replace("{i}", &i.to_string()).replace("{s}", &format!("{:02}", 10 + i)) + "\n").collect()
}

const TS: &str = "2026-11-27T12:35:{s}.000000+00:00 mx";

struct Case {
    field: &'static str,
    log: String,
    /// Whether the real client must be banned (false: the line is unattributable by
    /// design, e.g. an exim HELO that writes a second ` [ip] `).
    banned: bool,
}

fn cases() -> Vec<Case> {
    let sm = |body: &str| format!("{TS} sm-mta[18868]: 6ARCZkEp018868: {body}");
    let from = |sender: &str, relay: &str| {
        format!("2026-11-27T12:36:00.000000+00:00 mx sm-mta[18868]: 6ARCZkEp018868: from=<{sender}>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay={relay}\n")
    };
    let pf = |client: &str, rcpt: &str, sender: &str, helo: &str| {
        format!("{TS} postfix/smtpd[4242]: NOQUEUE: reject: RCPT from {client}: 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{helo}>")
    };
    let ex = |host: &str, sender: &str, rcpt: &str| {
        format!("2026-11-27 12:35:{{s}} H={host} I=[192.0.2.25]:25 F=<{sender}> rejected RCPT <{rcpt}>: Unknown user")
    };
    vec![
        Case {
            field: "sendmail recipient with a bracketed address",
            log: lines(6, &sm("<\"[198.51.100.200]\"@example.com>... User unknown")) + &from("a@example.net", "[192.0.2.66]"),
            banned: true,
        },
        Case {
            field: "sendmail recipient embedding '... User unknown, relay=[…]'",
            log: lines(6, &sm("<\"x@example.com>... User unknown, relay=[198.51.100.204]\"{i}@example.com>... User unknown"))
                + &from("a@example.net", "[192.0.2.66]"),
            banned: true,
        },
        Case {
            field: "sendmail reverse-DNS name that is an address",
            log: lines(3, &sm("<u{i}@example.com>... User unknown"))
                + &lines(1, &sm("198.51.100.201 [192.0.2.66]: Possible SMTP RCPT flood, throttling."))
                + &lines(3, &sm("<v{i}@example.com>... User unknown"))
                + &from("a@example.net", "198.51.100.201 [192.0.2.66] (may be forged)"),
            banned: true,
        },
        Case {
            field: "sendmail reverse-DNS name with brackets",
            log: lines(6, &sm("<u{i}@example.com>... User unknown")) + &from("a@example.net", "[198.51.100.202] [192.0.2.66]"),
            banned: true,
        },
        Case {
            field: "sendmail sender with an address literal and a relay= clause",
            log: lines(6, &sm("<u{i}@example.com>... User unknown"))
                + &from("\"x, relay=[198.51.100.206]\"@[198.51.100.203]", "[192.0.2.66]"),
            banned: true,
        },
        Case {
            field: "sendmail check_rcpt recipient with an injected relay=",
            log: lines(6, &sm("ruleset=check_rcpt, arg1=<\"a{i}, relay=[198.51.100.204], reject=550\"@example.com>, relay=[192.0.2.66], reject=550 5.1.1 <\"a{i}, relay=[198.51.100.204], reject=550\"@example.com>... User unknown"))
                + &from("a@example.net", "[192.0.2.66]"),
            banned: true,
        },
        Case {
            field: "sendmail VRFY argument with an address",
            log: lines(6, &sm("[192.0.2.66]: VRFY [198.51.100.205]: VRFY x{i}")),
            banned: true,
        },
        Case {
            field: "sendmail lost input line after guesses",
            log: lines(6, &sm("<[198.51.100.209]{i}@example.com>... User unknown"))
                + &lines(1, &sm("lost input channel from [192.0.2.66] to MTA-v4 after rcpt")),
            banned: true,
        },
        Case {
            field: "postfix reverse-DNS name that is an address",
            log: lines(6, &pf("198.51.100.201[192.0.2.66]", "u{i}@example.com", "a@example.net", "x")),
            banned: true,
        },
        Case {
            field: "postfix recipient, sender and HELO with addresses",
            log: lines(6, &pf("unknown[192.0.2.66]", "\"[198.51.100.200]\"{i}@example.com", "evil@[198.51.100.203]", "[198.51.100.210]")),
            banned: true,
        },
        Case {
            field: "postfix recipient faking a client part",
            log: lines(6, &pf("unknown[192.0.2.66]", "x{i}: RCPT from unknown[198.51.100.211]: 550 5.1.1 <y", "a@example.net", "x")),
            banned: true,
        },
        Case {
            field: "exim HELO with a bracketed address inside",
            log: lines(6, &ex("host.example.net (helo [198.51.100.210]) [192.0.2.66]:54321", "a@example.net", "u{i}@example.com")),
            banned: true,
        },
        Case {
            field: "exim address-literal HELO, sender and recipient",
            log: lines(6, &ex("([198.51.100.210]) [192.0.2.66]:54321", "evil@[198.51.100.203]", "\"[198.51.100.200]\"{i}@example.com")),
            banned: true,
        },
        Case {
            field: "exim reverse-DNS name that is an address",
            log: lines(6, &ex("198.51.100.201 [192.0.2.66]:54321", "a@example.net", "u{i}@example.com")),
            banned: true,
        },
        Case {
            field: "exim junk HELO writing a second host address",
            log: lines(6, &ex("(x) [198.51.100.212]:1 (y) [192.0.2.66]:54321", "a@example.net", "u{i}@example.com")),
            banned: false,
        },
        Case {
            field: "exim sender writing a second host address",
            log: lines(6, &ex("(x) [192.0.2.66]:54321", "\"a [198.51.100.213] b\"@example.net", "u{i}@example.com")),
            banned: false,
        },
        Case {
            field: "another program imitating sendmail",
            log: lines(6, &format!("{TS} cron[1]: 6ARCZkEp018868: [198.51.100.207]: VRFY x{{i}}"))
                + &lines(6, &format!("{TS} sm-mta[1]: 6ARCZkEp000001: [192.0.2.66]: VRFY x{{i}}")),
            banned: true,
        },
    ]
}

#[test]
fn only_the_real_client_is_banned() {
    let mut failures = Vec::new();
    for case in cases() {
        let r = replay_log(case.log.as_bytes(), &[]);
        let got = sources(&r);
        let want: Vec<String> = if case.banned { vec![REAL.to_string()] } else { vec![] };
        if got != want {
            failures.push(format!("{}: banned {got:?}, want {want:?}\n{}", case.field, case.log));
        }
        assert!(!got.iter().any(|s| s.starts_with("198.51.100.")), "{}: decoy banned", case.field);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
