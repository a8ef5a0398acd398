//! Prometheus metrics (`--metrics-listen 127.0.0.1:9325`): counters the daemon bumps
//! as it works, served as text on `GET /metrics`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::detect::DetectorStats;

/// Upper bounds (seconds) of the detection-to-ban latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

#[derive(Default)]
pub struct Metrics {
    active: AtomicU64,
    bans: Mutex<BTreeMap<String, u64>>,
    unbans: Mutex<BTreeMap<String, u64>>,
    ban_failures: AtomicU64,
    pending: AtomicU64,
    repairs: AtomicU64,
    detached: AtomicU64,
    reaped: AtomicU64,
    sessions_reset: AtomicU64,
    crowdsec: Mutex<Option<crate::crowdsec::link::LinkStatus>>,
    /// Per source: lines, skipped lines, unix time of the last line (0: none yet).
    lines: Mutex<BTreeMap<String, (u64, u64, f64)>>,
    /// Entries each ban map (v4, v6) holds (xdp mode); 0: no ban map.
    ban_capacity: AtomicU64,
    packets: Mutex<Vec<(&'static str, u64)>>,
    detector: Mutex<Option<DetectorStats>>,
    latency: Mutex<Histogram>,
    /// (interface, how it is attached now; None: detached).
    attachments: Mutex<Vec<(String, Option<&'static str>)>>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn line(&self, source: &str, skipped: bool) {
        let mut l = self.lines.lock().expect("metrics lock");
        let e = match l.get_mut(source) {
            Some(e) => e,
            None => l.entry(source.to_string()).or_default(),
        };
        e.0 += 1;
        if skipped {
            e.1 += 1;
        }
        e.2 = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    }

    /// The ban maps' size (xdp mode), for the fill level.
    pub fn set_ban_capacity(&self, entries: u64) {
        self.ban_capacity.store(entries, Relaxed);
    }

    /// A ban was set; `reason`: the MTA whose log proved it, or "manual".
    pub fn banned(&self, reason: &str, detection_to_ban: Duration) {
        *self.bans.lock().expect("metrics lock").entry(reason.to_string()).or_default() += 1;
        if reason != "manual" {
            let s = detection_to_ban.as_secs_f64();
            let mut h = self.latency.lock().expect("metrics lock");
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }

    pub fn unbanned(&self, reason: &str) {
        *self.unbans.lock().expect("metrics lock").entry(reason.to_string()).or_default() += 1;
    }

    pub fn ban_failed(&self) {
        self.ban_failures.fetch_add(1, Relaxed);
    }

    /// Bans decided but not in force (being retried).
    pub fn set_pending(&self, n: u64) {
        self.pending.store(n, Relaxed);
    }

    /// Repairs of the kernel's state (chain, rules, jumps, attachments).
    pub fn repaired(&self, n: u64) {
        self.repairs.fetch_add(n, Relaxed);
    }

    /// Interfaces meant to be protected but not attached.
    pub fn set_detached(&self, n: u64) {
        self.detached.store(n, Relaxed);
    }

    pub fn reaped(&self) {
        self.reaped.fetch_add(1, Relaxed);
    }

    /// The CrowdSec link's counters, as of the last refresh.
    pub fn set_crowdsec(&self, st: Option<crate::crowdsec::link::LinkStatus>) {
        *self.crowdsec.lock().expect("metrics lock") = st;
    }

    /// A banned source's TCP session reset (SOCK_DESTROY).
    pub fn session_reset(&self) {
        self.sessions_reset.fetch_add(1, Relaxed);
    }

    pub fn set_active(&self, n: u64) {
        self.active.store(n, Relaxed);
    }

    pub fn set_packets(&self, p: Vec<(&'static str, u64)>) {
        *self.packets.lock().expect("metrics lock") = p;
    }

    pub fn set_attachments(&self, a: Vec<(String, Option<&'static str>)>) {
        *self.attachments.lock().expect("metrics lock") = a;
    }

    pub fn set_detector(&self, s: DetectorStats) {
        *self.detector.lock().expect("metrics lock") = Some(s);
    }

    pub fn bans_total(&self) -> u64 {
        self.bans.lock().expect("metrics lock").values().sum()
    }

    pub fn unbans_total(&self) -> u64 {
        self.unbans.lock().expect("metrics lock").values().sum()
    }

    pub fn reaped_total(&self) -> u64 {
        self.reaped.load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut o, "blocksmtp_build_info", "gauge", "The running blocksmtp: its version (always 1).");
        let _ = writeln!(o, "blocksmtp_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        head(&mut o, "blocksmtp_bans_active", "gauge", "Bans in force.");
        let active = self.active.load(Relaxed);
        let _ = writeln!(o, "blocksmtp_bans_active {active}");
        let cap = self.ban_capacity.load(Relaxed);
        if cap > 0 {
            head(&mut o, "blocksmtp_ban_map_capacity", "gauge", "Entries each ban map (IPv4, IPv6) holds; a full map refuses new bans.");
            let _ = writeln!(o, "blocksmtp_ban_map_capacity {cap}");
            head(
                &mut o,
                "blocksmtp_ban_map_fill_ratio",
                "gauge",
                "Bans in force over one map's capacity: each map is at most this full (exactly, when the bans are of one family).",
            );
            let _ = writeln!(o, "blocksmtp_ban_map_fill_ratio {}", active as f64 / cap as f64);
        }
        head(&mut o, "blocksmtp_bans_total", "counter", "Bans set, by reason (the MTA whose log proved the harvest, or manual).");
        for (k, v) in self.bans.lock().expect("metrics lock").iter() {
            let _ = writeln!(o, "blocksmtp_bans_total{{reason=\"{}\"}} {v}", esc(k));
        }
        head(&mut o, "blocksmtp_unbans_total", "counter", "Bans lifted, by reason (expired, manual).");
        for (k, v) in self.unbans.lock().expect("metrics lock").iter() {
            let _ = writeln!(o, "blocksmtp_unbans_total{{reason=\"{}\"}} {v}", esc(k));
        }
        head(&mut o, "blocksmtp_ban_failures_total", "counter", "Bans the enforcer refused (e.g. a full map).");
        let _ = writeln!(o, "blocksmtp_ban_failures_total {}", self.ban_failures.load(Relaxed));
        head(&mut o, "blocksmtp_bans_pending", "gauge", "Bans decided but not in force: the enforcer failed; retried with backoff.");
        let _ = writeln!(o, "blocksmtp_bans_pending {}", self.pending.load(Relaxed));
        head(&mut o, "blocksmtp_enforcer_repairs_total", "counter", "Kernel state found different and repaired (chain, rules, jumps, attachments).");
        let _ = writeln!(o, "blocksmtp_enforcer_repairs_total {}", self.repairs.load(Relaxed));
        head(&mut o, "blocksmtp_interfaces_detached", "gauge", "Interfaces to protect that have no program attached (xdp mode).");
        let _ = writeln!(o, "blocksmtp_interfaces_detached {}", self.detached.load(Relaxed));
        if let Some(cs) = self.crowdsec.lock().expect("metrics lock").as_ref() {
            head(&mut o, "blocksmtp_crowdsec_up", "gauge", "Whether the last call to CrowdSec's LAPI succeeded.");
            let _ = writeln!(o, "blocksmtp_crowdsec_up {}", u8::from(cs.up));
            for (name, help, v) in [
                ("blocksmtp_crowdsec_decisions_pulled_total", "Decisions (new and deleted) pulled from LAPI.", cs.pulled_total),
                ("blocksmtp_crowdsec_alerts_pushed_total", "Alerts of our own bans pushed to LAPI.", cs.pushed_total),
                ("blocksmtp_crowdsec_failures_total", "Failed calls to LAPI.", cs.failed_total),
                ("blocksmtp_crowdsec_alerts_dropped_total", "Alerts dropped from a full queue.", cs.dropped_total),
            ] {
                head(&mut o, name, "counter", help);
                let _ = writeln!(o, "{name} {v}");
            }
            head(&mut o, "blocksmtp_crowdsec_alerts_queued", "gauge", "Alerts waiting for LAPI.");
            let _ = writeln!(o, "blocksmtp_crowdsec_alerts_queued {}", cs.queued);
        }
        head(&mut o, "blocksmtp_packets_total", "counter", "Packets seen by the XDP/TC program, by verdict (summed over CPUs).");
        for (k, v) in self.packets.lock().expect("metrics lock").iter() {
            let _ = writeln!(o, "blocksmtp_packets_total{{verdict=\"{k}\"}} {v}");
        }
        let attachments = self.attachments.lock().expect("metrics lock");
        if !attachments.is_empty() {
            head(&mut o, "blocksmtp_interface_attached", "gauge", "1 while the program is attached to the interface, 0 while detached (an error).");
            for (i, how) in attachments.iter() {
                let _ = writeln!(o, "blocksmtp_interface_attached{{interface=\"{}\",attach=\"{}\"}} {}", esc(i), how.unwrap_or("none"), u8::from(how.is_some()));
            }
        }
        drop(attachments);
        head(&mut o, "blocksmtp_lines_total", "counter", "Log lines read, by source.");
        let lines = self.lines.lock().expect("metrics lock");
        for (k, (n, _, _)) in lines.iter() {
            let _ = writeln!(o, "blocksmtp_lines_total{{source=\"{}\"}} {n}", esc(k));
        }
        head(&mut o, "blocksmtp_lines_skipped_total", "counter", "Log lines of no known shape, by source.");
        for (k, (_, s, _)) in lines.iter() {
            let _ = writeln!(o, "blocksmtp_lines_skipped_total{{source=\"{}\"}} {s}", esc(k));
        }
        head(
            &mut o,
            "blocksmtp_source_last_line_timestamp_seconds",
            "gauge",
            "When each source last gave a line (unix time): a source gone silent shows here.",
        );
        for (k, (_, _, t)) in lines.iter() {
            let _ = writeln!(o, "blocksmtp_source_last_line_timestamp_seconds{{source=\"{}\"}} {t}", esc(k));
        }
        drop(lines);
        if let Some(d) = *self.detector.lock().expect("metrics lock") {
            head(&mut o, "blocksmtp_guess_lines_total", "counter", "Lines that are evidence of guessing, by kind.");
            for (kind, n) in [
                ("unknown_recipient", d.lines.unknown_recipient),
                ("probe", d.lines.probe),
                ("flood", d.lines.flood),
                ("probe_attack", d.lines.probe_attack),
                ("unattributable", d.lines.unattributable),
            ] {
                let _ = writeln!(o, "blocksmtp_guess_lines_total{{kind=\"{kind}\"}} {n}");
            }
            head(&mut o, "blocksmtp_guesses_total", "counter", "Guess lines (unknown recipients, VRFY/EXPN probes), by MTA.");
            for (mta, n) in d.lines.guesses_per_mta() {
                let _ = writeln!(o, "blocksmtp_guesses_total{{mta=\"{mta}\"}} {n}");
            }
            head(&mut o, "blocksmtp_guesses_whitelisted_total", "counter", "Guesses ignored because the client is whitelisted.");
            let _ = writeln!(o, "blocksmtp_guesses_whitelisted_total {}", d.lines.whitelisted);
        }
        head(&mut o, "blocksmtp_detection_to_ban_seconds", "histogram", "From reading the line that proves a harvest to the ban in force.");
        let h = self.latency.lock().expect("metrics lock");
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(o, "blocksmtp_detection_to_ban_seconds_bucket{{le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(o, "blocksmtp_detection_to_ban_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "blocksmtp_detection_to_ban_seconds_sum {}", h.sum);
        let _ = writeln!(o, "blocksmtp_detection_to_ban_seconds_count {}", h.count);
        drop(h);
        head(&mut o, "blocksmtp_reaper_kills_total", "counter", "Stuck sendmail sessions signalled by the reaper.");
        let _ = writeln!(o, "blocksmtp_reaper_kills_total {}", self.reaped.load(Relaxed));
        head(&mut o, "blocksmtp_sessions_reset_total", "counter", "Banned sources' TCP sessions reset at the ban.");
        let _ = writeln!(o, "blocksmtp_sessions_reset_total {}", self.sessions_reset.load(Relaxed));
        o
    }
}

/// Label values come from file names and MTA names; keep the exposition valid.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serve `GET /metrics` on `addr` until the task is aborted.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-listen {addr}"))?;
    log::info!("metrics on http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            let m = m.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (bounded in size and time).
                let head = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        match s.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if head.is_err() {
                    return;
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /metrics ") || req.starts_with("GET / ") {
                    ("200 OK", m.render())
                } else {
                    ("404 Not Found", "not found: try /metrics\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_fill_level_and_last_line_time() {
        let m = Metrics::default();
        let r = m.render();
        assert!(r.contains(&format!("blocksmtp_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))), "{r}");
        assert!(!r.contains("blocksmtp_ban_map_fill_ratio"), "no ban map, no fill level: {r}");
        m.set_ban_capacity(1000);
        m.set_active(250);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        m.line("/var/log/mail.log", false);
        let r = m.render();
        assert!(r.contains("blocksmtp_ban_map_capacity 1000\n") && r.contains("blocksmtp_ban_map_fill_ratio 0.25\n"), "{r}");
        let t: f64 = r
            .lines()
            .find_map(|l| l.strip_prefix("blocksmtp_source_last_line_timestamp_seconds{source=\"/var/log/mail.log\"} "))
            .unwrap_or_else(|| panic!("{r}"))
            .parse()
            .unwrap();
        assert!(t >= before.floor(), "{t} {before}");
    }
}
