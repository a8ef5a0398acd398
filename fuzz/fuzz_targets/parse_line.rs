//! Fuzz the line parser and the detection engine with arbitrary bytes.
//!
//! Run for a bounded time (what CI calls; needs `cargo install cargo-fuzz` and a
//! nightly toolchain):
//!
//!     fuzz/run.sh 60
//!
//! which is, from `fuzz/`, with the seeds of `fuzz/seeds/` (real sendmail 8.17,
//! Postfix, exim and journald lines):
//!
//!     mkdir -p corpus/parse_line
//!     cargo +nightly fuzz run parse_line corpus/parse_line seeds -- -max_total_time=60
//!
//! (`cargo +nightly fuzz run parse_line -- -max_total_time=60` works too, without
//! the seeds.)
//!
//! Checks, beyond "no panic, no hang": a client address read from a syslog or exim
//! line is written in that line (IPv4: its dotted quad), so the parser never invents
//! an address.
#![no_main]

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use blocksmtp::{
    parse::{Event, MailerFilter, Parsed, with_parsed},
    detect::{Clock, DetectArgs, Detector},
};
use libfuzzer_sys::fuzz_target;

fn check_client(line: &[u8], client: IpAddr) {
    if line.first() == Some(&b'{') {
        return; // journald: JSON escapes may spell the address differently
    }
    if let IpAddr::V4(v4) = client {
        let text = v4.to_string();
        assert!(
            line.windows(text.len()).any(|w| w == text.as_bytes()),
            "client {text} not in line {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // One line, through both filters.
    let filters = [MailerFilter::default(), MailerFilter::new(&["x".to_string()], Some("mx"))];
    for f in &filters {
        with_parsed(data, f, |p| {
            if let Parsed::Mail { event, .. } = p {
                match event {
                    Event::Guess { client, .. }
                    | Event::Session { client, .. }
                    | Event::Delivered { client, .. }
                    | Event::Flood { client, .. }
                    | Event::ProbeAttack { client, .. } => check_client(data, client),
                    _ => {}
                }
            }
        });
    }
    // Many lines through the whole engine (correlation, policy), with log times.
    let args = DetectArgs { max_unknown: 2, ..DetectArgs::default() };
    let mut d = Detector::new(&args).expect("default args").with_clock(Clock::Log);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for line in data.split(|&b| b == b'\n') {
        for ban in d.feed(line, now) {
            // One guess at a harvest-dictionary name during a surge is enough.
            assert!(ban.guesses >= 2 || ban.rule == blocksmtp::policy::Evidence::Dictionary);
            assert!(ban.first_seen <= ban.last_seen);
        }
    }
    let s = d.stats();
    assert_eq!(s.lines.lines, data.split(|&b| b == b'\n').count() as u64);
    assert_eq!(s.lines.lines, s.lines.skipped + s.lines.foreign + s.lines.mail);
});
