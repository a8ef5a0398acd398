//! Syslog file lines: `Nov 27 12:35:47 mx sm-mta[18868]: msg` (traditional BSD
//! timestamp) and `2026-11-27T12:29:10.929159+00:00 mx sm-mta[18868]: msg` (RFC 3339,
//! Debian's rsyslog default). An optional `<PRI>` prefix (raw network syslog) is
//! skipped.
use super::{Frame, time::RawTime};

/// Frame a syslog line, or `None` when it has neither timestamp shape.
pub fn frame(line: &[u8]) -> Option<Frame<'_>> {
    let line = skip_pri(line);
    let (ts, rest) = if line.len() > 16 && line[3] == b' ' && line[6] == b' ' && line[9] == b':' {
        (RawTime::Bsd(&line[..15]), &line[15..])
    } else if line.len() > 20 && line[4] == b'-' && line[10] == b'T' {
        let end = memchr::memchr(b' ', line)?;
        (RawTime::Rfc3339(&line[..end]), &line[end..])
    } else {
        return None;
    };
    let rest = rest.strip_prefix(b" ")?;
    // Host names are short: a plain scan beats a vector search's set-up here.
    let sp = rest.iter().position(|&b| b == b' ')?;
    let (host, rest) = (&rest[..sp], &rest[sp + 1..]);
    if host.is_empty() {
        return None;
    }
    let (tag, pid, msg) = tag_pid_msg(rest)?;
    Some(Frame { time: ts, host, tag, pid, msg: msg.into(), exim_mainlog: false })
}

fn skip_pri(line: &[u8]) -> &[u8] {
    if line.first() == Some(&b'<')
        && let Some(end) = line.iter().take(5).position(|&b| b == b'>')
        && end > 1
        && line[1..end].iter().all(u8::is_ascii_digit)
    {
        return &line[end + 1..];
    }
    line
}

/// `tag[pid]: msg` or `tag: msg`. The tag has no blank, `[` or `:`.
pub(crate) fn tag_pid_msg(s: &[u8]) -> Option<(&[u8], Option<u32>, &[u8])> {
    let end = s.iter().take(64).position(|&b| matches!(b, b'[' | b':' | b' '))?;
    if end == 0 {
        return None;
    }
    let tag = &s[..end];
    match s[end] {
        b'[' => {
            // `[`, one to ten digits, `]:` — read in one pass.
            let mut pid: u64 = 0;
            let mut i = end + 1;
            while i < s.len() && i <= end + 10 && s[i].is_ascii_digit() {
                pid = pid * 10 + u64::from(s[i] - b'0');
                i += 1;
            }
            if i == end + 1 || s.get(i) != Some(&b']') {
                return None;
            }
            let pid = u32::try_from(pid).ok()?;
            let msg = s[i + 1..].strip_prefix(b":")?;
            Some((tag, Some(pid), msg.strip_prefix(b" ").unwrap_or(msg)))
        }
        b':' => {
            let msg = &s[end + 1..];
            Some((tag, None, msg.strip_prefix(b" ").unwrap_or(msg)))
        }
        _ => None,
    }
}

pub(crate) fn parse_pid(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    u32::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsd_and_rfc3339_headers() {
        let f = frame(b"Nov 27 12:35:47 mx sm-mta[18868]: 6ARCZkEp018868: <a@example.com>... User unknown").unwrap();
        assert_eq!(f.time, RawTime::Bsd(b"Nov 27 12:35:47"));
        assert_eq!((f.host, f.tag, f.pid), (&b"mx"[..], &b"sm-mta"[..], Some(18868)));
        assert_eq!(&*f.msg, b"6ARCZkEp018868: <a@example.com>... User unknown");

        let f = frame(b"2026-11-27T12:35:45.787092+00:00 mx bsh-harness: harness: syslog receiver up").unwrap();
        assert_eq!(f.time, RawTime::Rfc3339(b"2026-11-27T12:35:45.787092+00:00"));
        assert_eq!((f.tag, f.pid), (&b"bsh-harness"[..], None));
        assert_eq!(&*f.msg, b"harness: syslog receiver up");

        let f = frame(b"Nov  7 01:02:03 relay1 postfix/smtpd[42]: connect from x[192.0.2.1]").unwrap();
        assert_eq!(f.time, RawTime::Bsd(b"Nov  7 01:02:03"));
        assert_eq!((f.host, f.tag, f.pid), (&b"relay1"[..], &b"postfix/smtpd"[..], Some(42)));

        let f = frame(b"<22>Nov 27 12:35:47 mx sm-mta[1]: x").unwrap();
        assert_eq!(f.tag, b"sm-mta");
        // Ten digits (the most), up to u32's largest.
        assert_eq!(frame(b"Nov 27 12:35:47 mx sm-mta[4294967295]: x").unwrap().pid, Some(u32::MAX));
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            &b""[..],
            b"hello world",
            b"Nov 27 12:35:47",
            b"Nov 27 12:35:47 mx",
            b"Nov 27 12:35:47 mx no-colon-here",
            b"Nov 27 12:35:47 mx sm-mta[abc]: x",
            b"Nov 27 12:35:47 mx sm-mta[1: x",
            // The pid: none, eleven digits, past u32, a non-digit, no colon after it.
            b"Nov 27 12:35:47 mx sm-mta[]: x",
            b"Nov 27 12:35:47 mx sm-mta[12345678901]: x",
            b"Nov 27 12:35:47 mx sm-mta[4294967296]: x",
            b"Nov 27 12:35:47 mx sm-mta[1x]: x",
            b"Nov 27 12:35:47 mx sm-mta[123] x",
            b"2026-11-27 12:00:00 H=[192.0.2.66] rejected RCPT <a@b>: Unknown user",
            b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert!(frame(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
