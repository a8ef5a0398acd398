//! `source::follow` under rotation during a burst of writes, several files at once,
//! and write-to-delivery latency.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use blocksmtp::source::follow::{FollowOptions, Follower};

const N: u64 = 20_000;
const PER_GENERATION: u64 = 2_000;

fn append(p: &Path) -> File {
    OpenOptions::new().create(true).append(true).open(p).unwrap()
}

fn line(i: u64) -> String {
    format!("L{i:08} sm-mta[1234]: 6ARCaTcj001234: <x{i}@example.com>... User unknown\n")
}

fn number(l: &[u8]) -> u64 {
    std::str::from_utf8(&l[1..9]).unwrap().parse().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Rotation {
    /// rename to .1, keep writing a few lines to the old handle, then create anew.
    RenameCreate,
    /// unlink, then create anew.
    DeleteRecreate,
    /// copy to .1 and truncate in place (the writer appends through O_APPEND).
    CopyTruncate,
}

/// Writer: N numbered lines in small fast batches, rotating every PER_GENERATION.
fn writer(path: PathBuf, how: Rotation, received: Arc<AtomicU64>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut w = append(&path);
        let rotated = path.with_extension("1");
        let mut i = 0;
        while i < N {
            if i > 0 && i % PER_GENERATION == 0 {
                match how {
                    Rotation::RenameCreate => {
                        std::fs::rename(&path, &rotated).unwrap();
                        // The writer has not reopened yet: 5 more lines go to the old file.
                        for _ in 0..5 {
                            w.write_all(line(i).as_bytes()).unwrap();
                            i += 1;
                        }
                        w = append(&path);
                    }
                    Rotation::DeleteRecreate => {
                        std::fs::remove_file(&path).unwrap();
                        w = append(&path);
                    }
                    Rotation::CopyTruncate => {
                        // What is guaranteed: a follower that has caught up when the file is
                        // truncated, and sees the truncation before the file regrows past
                        // its old length, loses nothing. So: wait for it to catch up,
                        // truncate, write one line, wait for that line, then full speed.
                        wait_for(&received, i);
                        std::fs::copy(&path, &rotated).unwrap();
                        OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
                        w.write_all(line(i).as_bytes()).unwrap();
                        i += 1;
                        wait_for(&received, i);
                        continue;
                    }
                }
            }
            w.write_all(line(i).as_bytes()).unwrap();
            if i % 50 == 49 {
                thread::sleep(Duration::from_micros(200));
            }
            i += 1;
        }
    })
}

fn wait_for(received: &AtomicU64, n: u64) {
    let end = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < end, "follower stuck at {} of {n}", received.load(Ordering::SeqCst));
        thread::sleep(Duration::from_micros(100));
    }
}

async fn run(how: Rotation) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("maillog");
    File::create(&path).unwrap();
    let mut f = Follower::new(vec![path.clone()], FollowOptions::default()).unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let wt = writer(path.clone(), how, received.clone());
    let mut seen = vec![0u32; N as usize];
    let mut last: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut count = 0;
    while count < N {
        let l = tokio::time::timeout_at(deadline.into(), f.next())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = (0..N).filter(|i| seen[*i as usize] == 0).take(10).collect();
                panic!("{how:?}: timed out after {count} lines; first missing {missing:?}; {:?}", f.positions())
            })
            .unwrap();
        assert_eq!(&*l.source, path.as_path());
        let n = number(&l.line);
        assert_eq!(l.line, line(n).trim_end().as_bytes());
        seen[n as usize] += 1;
        if let Some(p) = last {
            assert!(n > p, "{how:?}: line {n} after {p}: out of order");
        }
        last = Some(n);
        count += 1;
        received.store(count, Ordering::SeqCst);
    }
    wt.join().unwrap();
    let dup: Vec<_> = (0..N).filter(|i| seen[*i as usize] > 1).take(10).collect();
    let missing: Vec<_> = (0..N).filter(|i| seen[*i as usize] == 0).take(10).collect();
    assert!(dup.is_empty() && missing.is_empty(), "{how:?}: duplicated {dup:?}, missing {missing:?}");
    // Nothing more arrives.
    assert!(tokio::time::timeout(Duration::from_millis(300), f.next()).await.is_err());
    let pos = &f.positions()[0];
    assert_eq!(pos.lines, N);
    assert_eq!(pos.rotations, N / PER_GENERATION - 1, "{how:?}: {pos:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_create_during_burst() {
    run(Rotation::RenameCreate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_recreate_during_burst() {
    run(Rotation::DeleteRecreate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_during_burst() {
    run(Rotation::CopyTruncate).await;
}

/// Lines written to the old file after a rename, before the writer reopens, are
/// delivered before the new file's lines.
#[tokio::test]
async fn rename_then_late_writes_to_old_file() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("maillog");
    let mut old = append(&path);
    let mut f = Follower::new(vec![path.clone()], FollowOptions::default()).unwrap();
    old.write_all(b"a\n").unwrap();
    std::fs::rename(&path, path.with_extension("1")).unwrap();
    old.write_all(b"b\nc").unwrap();
    let mut new = append(&path);
    let got = |l: blocksmtp::source::LogLine| String::from_utf8(l.line).unwrap();
    let next = async |f: &mut Follower| got(tokio::time::timeout(Duration::from_secs(5), f.next()).await.unwrap().unwrap());
    assert_eq!(next(&mut f).await, "a");
    assert_eq!(next(&mut f).await, "b");
    old.write_all(b"\n").unwrap();
    new.write_all(b"d\n").unwrap();
    assert_eq!(next(&mut f).await, "c");
    assert_eq!(next(&mut f).await, "d");
    assert_eq!(f.positions()[0].draining, 1);
}

#[tokio::test]
async fn several_files_tagged_by_source() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("mail.log");
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let b = sub.join("other.log");
    File::create(&a).unwrap();
    File::create(&b).unwrap();
    let mut f = Follower::new(vec![a.clone(), b.clone()], FollowOptions::default()).unwrap();
    append(&a).write_all(b"from a\n").unwrap();
    append(&b).write_all(b"from b\n").unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let l = tokio::time::timeout(Duration::from_secs(5), f.next()).await.unwrap().unwrap();
        got.push((l.source.to_path_buf(), String::from_utf8(l.line).unwrap()));
    }
    got.sort();
    assert_eq!(got, vec![(a, "from a".to_string()), (b, "from b".to_string())]);
}

/// Write-to-delivery latency: a writer thread writes a line every 2 ms; the time from
/// each write to its delivery is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency() {
    const M: usize = 500;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("maillog");
    File::create(&path).unwrap();
    let mut f = Follower::new(vec![path.clone()], FollowOptions::default()).unwrap();
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; M]));
    let s2 = sent.clone();
    let wt = thread::spawn(move || {
        let mut w = append(&path);
        for i in 0..M {
            let l = line(i as u64);
            s2.lock().unwrap()[i] = Some(Instant::now());
            w.write_all(l.as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
    });
    let mut lat = Vec::with_capacity(M);
    for _ in 0..M {
        let l = tokio::time::timeout(Duration::from_secs(10), f.next()).await.unwrap().unwrap();
        let at = Instant::now();
        let i = number(&l.line) as usize;
        lat.push(at - sent.lock().unwrap()[i].unwrap());
    }
    wt.join().unwrap();
    lat.sort();
    let (p50, p99, max) = (lat[M / 2], lat[M * 99 / 100], lat[M - 1]);
    eprintln!("follow latency over {M} lines: median {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(p50 < Duration::from_millis(5), "median latency {p50:?}");
}
