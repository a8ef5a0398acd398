//! `journalctl -o json` export: one JSON object per line. Fields used: `MESSAGE`
//! (a string, or an array of bytes when it is not UTF-8), `SYSLOG_IDENTIFIER`
//! (falling back to `_COMM`), `_HOSTNAME`, `_PID` (or `SYSLOG_PID`) and
//! `__REALTIME_TIMESTAMP` (µs since the epoch, as a string); and the fields journald
//! itself records about the sending process, which a client cannot forge (`_UID`,
//! `_EXE`, `_COMM`, `_SYSTEMD_UNIT`): [`super::JournalTrust`] judges by them whether a
//! line really came from the MTA (any local user can log `sm-mta: …` with logger).
use std::borrow::Cow;

use serde::Deserialize;

use super::{Frame, syslog::parse_pid, time::RawTime};

#[derive(Deserialize)]
#[serde(untagged)]
enum Message<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    Bytes(Vec<u8>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Num<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    Int(u64),
}

impl Num<'_> {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Num::Text(s) => s.parse().ok(),
            Num::Int(n) => Some(*n),
        }
    }
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(rename = "MESSAGE", borrow, default)]
    message: Option<Message<'a>>,
    #[serde(rename = "SYSLOG_IDENTIFIER", borrow, default)]
    identifier: Option<Cow<'a, str>>,
    #[serde(rename = "_COMM", borrow, default)]
    comm: Option<Cow<'a, str>>,
    #[serde(rename = "_HOSTNAME", borrow, default)]
    hostname: Option<Cow<'a, str>>,
    #[serde(rename = "_PID", borrow, default)]
    pid: Option<Num<'a>>,
    #[serde(rename = "SYSLOG_PID", borrow, default)]
    syslog_pid: Option<Num<'a>>,
    #[serde(rename = "__REALTIME_TIMESTAMP", borrow, default)]
    realtime: Option<Num<'a>>,
    #[serde(rename = "_UID", borrow, default)]
    uid: Option<Num<'a>>,
    #[serde(rename = "_EXE", borrow, default)]
    exe: Option<Cow<'a, str>>,
    #[serde(rename = "_SYSTEMD_UNIT", borrow, default)]
    unit: Option<Cow<'a, str>>,
}

/// A journald entry framed as a log line. Owned where JSON escapes forced a copy.
pub struct JournalFrame<'a> {
    pub host: Cow<'a, [u8]>,
    pub tag: Cow<'a, [u8]>,
    pub pid: Option<u32>,
    pub time: RawTime<'static>,
    pub msg: Cow<'a, [u8]>,
    /// Who sent it, as journald recorded it (absent in entries journald did not receive
    /// itself, e.g. hand-written JSON).
    pub origin: Origin<'a>,
}

/// journald's trusted fields of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    pub uid: Option<u32>,
    pub exe: Option<Cow<'a, str>>,
    pub comm: Option<Cow<'a, str>>,
    pub unit: Option<Cow<'a, str>>,
}

fn bytes(c: Cow<'_, str>) -> Cow<'_, [u8]> {
    match c {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

/// Parse one JSON line; `None` when it is not a journald entry with a message.
pub fn parse(line: &[u8]) -> Option<JournalFrame<'_>> {
    let e: Entry<'_> = serde_json::from_slice(line).ok()?;
    let msg = match e.message? {
        Message::Text(s) => bytes(s),
        Message::Bytes(b) => Cow::Owned(b),
    };
    let origin = Origin {
        uid: e.uid.as_ref().and_then(Num::as_u64).and_then(|n| u32::try_from(n).ok()),
        exe: e.exe,
        comm: e.comm.clone(),
        unit: e.unit,
    };
    let tag = e.identifier.or(e.comm).map(bytes).unwrap_or(Cow::Borrowed(b""));
    let pid = e
        .syslog_pid
        .as_ref()
        .or(e.pid.as_ref())
        .and_then(|n| match n {
            Num::Text(s) => parse_pid(s.as_bytes()),
            Num::Int(n) => u32::try_from(*n).ok(),
        });
    let time = e.realtime.as_ref().and_then(Num::as_u64).map_or(RawTime::None, RawTime::UnixMicros);
    Some(JournalFrame {
        host: e.hostname.map(bytes).unwrap_or(Cow::Borrowed(b"")),
        tag,
        pid,
        time,
        msg,
        origin,
    })
}

impl<'a> JournalFrame<'a> {
    /// View as a [`Frame`] borrowing from this entry.
    pub fn as_frame(&self) -> Frame<'_> {
        Frame {
            time: self.time,
            host: &self.host,
            tag: &self.tag,
            pid: self.pid,
            msg: Cow::Borrowed(&self.msg),
            exim_mainlog: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_message() {
        let l = br#"{"__REALTIME_TIMESTAMP":"1795782947342721","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"sm-mta","_PID":"18868","MESSAGE":"6ARCZkEp018868: <tpwjzbwb15@example.com>... User unknown","PRIORITY":"6"}"#;
        let j = parse(l).unwrap();
        let f = j.as_frame();
        assert_eq!((f.host, f.tag, f.pid), (&b"mx"[..], &b"sm-mta"[..], Some(18868)));
        assert_eq!(f.time, RawTime::UnixMicros(1_795_782_947_342_721));
        assert_eq!(&*f.msg, b"6ARCZkEp018868: <tpwjzbwb15@example.com>... User unknown");
    }

    #[test]
    fn byte_array_message_and_escapes() {
        // "ok\xff" as journald writes a non-UTF-8 message.
        let l = br#"{"MESSAGE":[111,107,255],"SYSLOG_IDENTIFIER":"postfix/smtpd","SYSLOG_PID":"7","_PID":"8"}"#;
        let j = parse(l).unwrap();
        assert_eq!(&*j.msg, b"ok\xff");
        assert_eq!(j.pid, Some(7));
        assert_eq!(j.time, RawTime::None);
        let l = br#"{"MESSAGE":"a\"b\u0000c","_COMM":"sendmail"}"#;
        let j = parse(l).unwrap();
        assert_eq!(&*j.msg, b"a\"b\0c");
        assert_eq!(&*j.tag, b"sendmail");
    }

    #[test]
    fn trusted_fields() {
        let l = br#"{"MESSAGE":"x","SYSLOG_IDENTIFIER":"sm-mta","_UID":"0","_EXE":"/usr/lib/sm.bin/sendmail","_COMM":"sendmail","_SYSTEMD_UNIT":"sendmail.service"}"#;
        let o = parse(l).unwrap().origin;
        assert_eq!(o.uid, Some(0));
        assert_eq!(o.exe.as_deref(), Some("/usr/lib/sm.bin/sendmail"));
        assert_eq!(o.comm.as_deref(), Some("sendmail"));
        assert_eq!(o.unit.as_deref(), Some("sendmail.service"));
        assert_eq!(parse(br#"{"MESSAGE":"x"}"#).unwrap().origin, Origin::default());
    }

    #[test]
    fn refuses_non_entries() {
        assert!(parse(b"{}").is_none());
        assert!(parse(b"{\"MESSAGE\":null}").is_none());
        assert!(parse(b"{\"MESSAGE\":\"x\"").is_none());
        assert!(parse(b"[1,2,3]").is_none());
        assert!(parse(b"{\"MESSAGE\":\"\xff\"}").is_none());
    }
}
