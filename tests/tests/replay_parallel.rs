//! Replay's parallel path (lines framed and parsed on several threads, correlated and
//! decided in log order) gives the sequential path's result exactly: the same JSON —
//! bans, reasons, `banned_at`, counts — on generated logs of several shapes, rotated
//! multi-file input (one of them gzip), a log ending without a newline, junk. No
//! kernel, no root; a few seconds.
use std::{net::IpAddr, path::{Path, PathBuf}, time::{Duration, SystemTime}};

use blocksmtp::{detect::DetectArgs, source::file::Input};
use blocksmtp_tests::loggen::{Form, LogGen, Style, distributed_shapes};

fn start() -> i64 {
    // Two days ago: BSD timestamps read as this year's past.
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64 - 2 * 86_400
}

/// The JSON report of replaying `files` with `threads` parsing threads.
fn replay(args: &DetectArgs, files: &[PathBuf], threads: usize) -> serde_json::Value {
    let inputs: Vec<Input> = files.iter().map(|p| Input::File(p.clone())).collect();
    serde_json::to_value(blocksmtp::replay::run_with(args, &inputs, threads).unwrap()).unwrap()
}

/// Both paths agree on `files`; returns the number of bans (so a case can require some).
fn same(name: &str, args: &DetectArgs, files: &[PathBuf]) -> usize {
    let want = replay(args, files, 1);
    for threads in [2, 3] {
        let got = replay(args, files, threads);
        assert_eq!(got, want, "{name}: {threads} threads differ from the sequential path");
    }
    assert!(want["lines"].as_u64().unwrap() > 0, "{name}: nothing read");
    want["bans"].as_array().unwrap().len()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn parallel_replay_equals_sequential() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = DetectArgs::default();

    // The two benchmark shapes, large enough for many 1 MiB blocks.
    let mut g = LogGen::new(Style::Bsd, 3, start());
    g.harvest_heavy_mix(60_000, 300);
    let heavy = g.finish();
    assert!(same("harvest-heavy", &args, &[write(d, "heavy.log", &heavy)]) > 10);
    let mut g = LogGen::new(Style::Bsd, 4, start());
    g.bench_mix(40_000, 20);
    assert!(same("clean-heavy", &args, &[write(d, "clean.log", &g.finish())]) >= 20);

    // Other line shapes: RFC 3339 and journald, Postfix and exim, junk, VRFY probes.
    for style in [Style::Rfc3339, Style::Journald] {
        let mut g = LogGen::new(style, 5, start());
        for i in 0..400u32 {
            let ip: IpAddr = format!("203.0.113.{}", i % 200 + 1).parse().unwrap();
            match i % 5 {
                0 => g.sendmail_harvest(ip, 6, 0.5, i % 2 == 0),
                1 => g.postfix_harvest(ip, None, 6, 0.5),
                2 => g.sendmail_vrfy(ip, 8, 0.2),
                3 => g.postfix_legit(ip),
                _ => g.sendmail_legit(ip, 2, 1),
            }
            g.noise(3);
            if i % 100 == 0 {
                g.junk();
            }
            g.advance(5.0);
        }
        assert!(same(&format!("{style:?}"), &args, &[write(d, &format!("{style:?}.log"), &g.finish())]) > 0);
    }
    let mut g = LogGen::new(Style::Bsd, 6, start());
    for i in 0..2000u32 {
        let ip: IpAddr = format!("198.51.100.{}", i % 250 + 1).parse().unwrap();
        if i % 3 == 0 { g.exim_harvest(ip, "x.example.net", 6, 0.3) } else { g.exim_legit(ip) }
        g.advance(2.0);
    }
    assert!(same("exim", &args, &[write(d, "exim.log", &g.finish())]) > 0);

    // The distributed campaigns with their innocents (every evidence rule).
    for (name, _, s) in distributed_shapes(9) {
        for form in Form::ALL {
            let log = write(d, &format!("{name}-{}.log", form.name()), &s.render(form, 7).log);
            same(&format!("{name} ({})", form.name()), &args, &[log]);
        }
    }

    // Rotated files, one gzip-compressed, oldest first by modification time, the
    // newest ending without a newline (each file's last line stays its own line).
    let cut = |data: &[u8], at: usize| data[..at].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let (a, rest) = heavy.split_at(cut(&heavy, heavy.len() / 3));
    let (b, c) = rest.split_at(cut(rest, rest.len() / 2));
    let c = c.strip_suffix(b"\n").unwrap();
    let plain2 = write(d, "mail.log.2", a);
    let gz = std::process::Command::new("gzip").arg("-f").arg(&plain2).status().unwrap();
    assert!(gz.success());
    let files = [d.join("mail.log.2.gz"), write(d, "mail.log.1", b), write(d, "mail.log", c)];
    let now = SystemTime::now();
    for (i, f) in files.iter().enumerate() {
        let t = now - Duration::from_secs(3600 * (3 - i as u64));
        std::fs::File::options().write(true).open(f).unwrap().set_modified(t).unwrap();
    }
    let n = same("rotated", &args, &files);
    assert!(n > 10);
    // A line cut in two by the rotation boundary is two lines, not one: the files'
    // total is the whole log's line count.
    let whole = replay(&args, &[d.join("heavy.log")], 1);
    let rotated = replay(&args, &files, 2);
    assert_eq!(rotated["lines"], whole["lines"]);
    assert_eq!(rotated["bans"], whole["bans"], "rotation at line boundaries changes nothing");

    // Ending without a newline, and a file that is one unterminated line.
    let last = write(d, "nonl.log", heavy.strip_suffix(b"\n").unwrap());
    same("no final newline", &args, &[last]);
    same("one unterminated line", &args, &[write(d, "one.log", b"Nov 27 12:35:47 mx sm-mta[1]: 6ARCZkEp000001: [192.0.2.66]: VRFY root")]);
}
