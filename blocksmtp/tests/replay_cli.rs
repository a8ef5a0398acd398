//! `blocksmtp replay` arguments and errors: exit 2, messages naming the culprit.
mod common;

use common::*;

fn fails_with(args: &[&str], needle: &str) {
    let out = replay_raw(args, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(out.stdout.is_empty(), "no report on error");
}

#[test]
fn unreadable_input_names_the_file() {
    let dir = Dir::new();
    let ok = dir.write("ok.log", b"");
    let missing = dir.0.path().join("missing.log");
    fails_with(&[ok.to_str().unwrap(), missing.to_str().unwrap()], missing.to_str().unwrap());
    fails_with(&[dir.0.path().to_str().unwrap()], dir.0.path().to_str().unwrap());
    // Corrupt gzip: the error names the file too.
    let mut gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&b"Nov 27 12:00:00 mx sm-mta[1]: x\n".repeat(1000)).unwrap();
        e.finish().unwrap()
    };
    let n = gz.len();
    gz.truncate(n / 2);
    let bad = dir.write("mail.log.2.gz", &gz);
    fails_with(&[bad.to_str().unwrap()], "mail.log.2.gz");
}

#[test]
fn bad_whitelist_names_file_and_line() {
    let dir = Dir::new();
    let wl = dir.write("white-list", b"# ok\n192.0.2.1\nnot-an-address\n");
    let log = dir.write("mail.log", b"");
    fails_with(
        &["--white-list", wl.to_str().unwrap(), log.to_str().unwrap()],
        &format!("{}:3:", wl.display()),
    );
    fails_with(&["--white-list", "/nonexistent/wl", log.to_str().unwrap()], "/nonexistent/wl");
}

#[test]
fn bad_flags() {
    let dir = Dir::new();
    let log = dir.write("mail.log", b"");
    let l = log.to_str().unwrap();
    fails_with(&["--window", "ten", l], "\"ten\"");
    fails_with(&["--ban-time", "1x", l], "\"1x\"");
    fails_with(&["--max-unknown", "0", l], "max-unknown");
    fails_with(&["--ban-time", "2h", "--ban-time-max", "1h", l], "--ban-time-max");
    fails_with(&["--v6-prefix", "200", l], "v6-prefix");
    fails_with(&[], "FILE");
}

#[test]
fn empty_input_is_fine() {
    let dir = Dir::new();
    let log = dir.write("mail.log", b"");
    let r = replay_json(&[log.to_str().unwrap()], None);
    assert_eq!((r["lines"].as_u64(), r["skipped"].as_u64(), r["guesses"].as_u64()), (Some(0), Some(0), Some(0)));
    assert!(r["bans"].as_array().unwrap().is_empty());
}
