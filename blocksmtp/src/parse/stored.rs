//! A parsed mail line kept past its line: the frame fields and [`Event`] that detection
//! needs, their bytes copied into an arena (one per block of lines). Replay frames and
//! parses blocks on several threads and hands these to the in-order stage, which reads
//! them back as the borrowed [`Event`] the sequential path would have made.
use std::net::IpAddr;

use super::{Event, Frame, GuessKind, Mta, RawTime};

/// Bytes in an arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn put(arena: &mut Vec<u8>, b: &[u8]) -> Self {
        let start = arena.len() as u32;
        arena.extend_from_slice(b);
        Self { start, len: b.len() as u32 }
    }

    fn get(self, arena: &[u8]) -> &[u8] {
        &arena[self.start as usize..(self.start + self.len) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Time {
    Bsd(Span),
    Rfc3339(Span),
    Exim(Span),
    UnixMicros(u64),
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Guess { client: IpAddr, kind: GuessKind, target: Span, session: Option<Span> },
    PendingGuess { session: Span, kind: GuessKind, target: Span },
    Session { session: Option<Span>, client: IpAddr, ends: bool },
    Delivered { session: Option<Span>, client: IpAddr },
    Flood { session: Option<Span>, client: IpAddr },
    ProbeAttack { session: Option<Span>, client: IpAddr, kind: GuessKind, count: u32 },
    Unattributable { kind: GuessKind, target: Span },
    Other,
}

/// One mail line's frame fields and event, stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    host: Span,
    pid: Option<u32>,
    time: Time,
    pub mta: Mta,
    event: Ev,
}

/// The borrowed form of a [`StoredEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded<'a> {
    pub host: &'a [u8],
    pub pid: Option<u32>,
    pub time: RawTime<'a>,
    pub mta: Mta,
    pub event: Event<'a>,
}

impl StoredEvent {
    /// Copy what detection reads of `frame` and `event` into `arena`.
    pub fn store(frame: &Frame<'_>, mta: Mta, event: &Event<'_>, arena: &mut Vec<u8>) -> Self {
        let mut put = |b: &[u8]| Span::put(arena, b);
        let host = put(frame.host);
        let time = match frame.time {
            RawTime::Bsd(b) => Time::Bsd(put(b)),
            RawTime::Rfc3339(b) => Time::Rfc3339(put(b)),
            RawTime::Exim(b) => Time::Exim(put(b)),
            RawTime::UnixMicros(u) => Time::UnixMicros(u),
            RawTime::None => Time::None,
        };
        let event = match *event {
            Event::Guess { client, kind, target, session } => {
                Ev::Guess { client, kind, target: put(target), session: session.map(&mut put) }
            }
            Event::PendingGuess { session, kind, target } => {
                Ev::PendingGuess { session: put(session), kind, target: put(target) }
            }
            Event::Session { session, client, ends } => Ev::Session { session: session.map(&mut put), client, ends },
            Event::Delivered { session, client } => Ev::Delivered { session: session.map(&mut put), client },
            Event::Flood { session, client } => Ev::Flood { session: session.map(&mut put), client },
            Event::ProbeAttack { session, client, kind, count } => {
                Ev::ProbeAttack { session: session.map(&mut put), client, kind, count }
            }
            Event::Unattributable { kind, target } => Ev::Unattributable { kind, target: put(target) },
            Event::Other => Ev::Other,
        };
        Self { host, pid: frame.pid, time, mta, event }
    }

    /// The event as parsed, borrowing `arena` (the one given to [`Self::store`]).
    pub fn load<'a>(&self, arena: &'a [u8]) -> Loaded<'a> {
        let get = |s: Span| s.get(arena);
        let time = match self.time {
            Time::Bsd(s) => RawTime::Bsd(get(s)),
            Time::Rfc3339(s) => RawTime::Rfc3339(get(s)),
            Time::Exim(s) => RawTime::Exim(get(s)),
            Time::UnixMicros(u) => RawTime::UnixMicros(u),
            Time::None => RawTime::None,
        };
        let event = match self.event {
            Ev::Guess { client, kind, target, session } => {
                Event::Guess { client, kind, target: get(target), session: session.map(get) }
            }
            Ev::PendingGuess { session, kind, target } => {
                Event::PendingGuess { session: get(session), kind, target: get(target) }
            }
            Ev::Session { session, client, ends } => Event::Session { session: session.map(get), client, ends },
            Ev::Delivered { session, client } => Event::Delivered { session: session.map(get), client },
            Ev::Flood { session, client } => Event::Flood { session: session.map(get), client },
            Ev::ProbeAttack { session, client, kind, count } => {
                Event::ProbeAttack { session: session.map(get), client, kind, count }
            }
            Ev::Unattributable { kind, target } => Event::Unattributable { kind, target: get(target) },
            Ev::Other => Event::Other,
        };
        Loaded { host: get(self.host), pid: self.pid, time, mta: self.mta, event }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{MailerFilter, Parsed, with_parsed};

    #[test]
    fn every_event_comes_back_as_parsed() {
        let lines: &[&[u8]] = &[
            b"Nov 27 12:35:47 mx sm-mta[18868]: 6ARCZkEp018868: <a@example.com>... User unknown",
            b"Nov 27 12:35:47 mx sm-mta[18868]: 6ARCZkEp018868: from=<a@example.net>, size=0, class=0, nrcpts=0, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]",
            b"Nov 27 12:35:47 mx sm-mta[18868]: 6ARCZkEp018868: from=<a@example.net>, size=10, class=0, nrcpts=1, proto=SMTP, daemon=MTA-v4, relay=[192.0.2.66]",
            b"Nov 27 12:35:47 mx sm-mta[18868]: 6ARCZkEp018868: [192.0.2.66]: Possible SMTP RCPT flood, throttling.",
            b"Nov 27 12:35:47 mx sm-mta[18977]: 6ARCaM6m018977: [192.0.2.66]: possible SMTP attack: command=EXPN, count=6",
            b"2026-11-27T12:35:47.1+00:00 mx sm-mta[18977]: 6ARCaM6m018977: [192.0.2.66]: VRFY root",
            b"2026-11-27 12:00:00 H=[192.0.2.66] F=<> rejected RCPT <a@example.com>: Unknown user",
            br#"{"MESSAGE":"<a\u0040example.com>... User unknown","SYSLOG_IDENTIFIER":"sm-mta","_PID":"18868","_HOSTNAME":"mx","__REALTIME_TIMESTAMP":"1795782947342721"}"#,
            b"Nov 27 12:35:47 mx sm-mta[1]: <a@example.com>... User unknown",
            b"Nov 27 12:35:47 mx sm-mta[1]: alias database rebuilt",
        ];
        let f = MailerFilter::default();
        let mut arena = Vec::new();
        let mut kept = Vec::new();
        for l in lines {
            with_parsed(l, &f, |p| {
                let Parsed::Mail { frame, mta, event } = p else { panic!("{}", String::from_utf8_lossy(l)) };
                let s = StoredEvent::store(frame, mta, &event, &mut arena);
                let want = Loaded { host: frame.host, pid: frame.pid, time: frame.time, mta, event: event.clone() };
                kept.push((s, format!("{want:?}")));
            });
        }
        for (s, want) in kept {
            assert_eq!(format!("{:?}", s.load(&arena)), want);
        }
    }
}
