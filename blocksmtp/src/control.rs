//! The control socket: `blocksmtp status | list | ban | unban | reload` talk to the
//! running daemon over a root-only Unix socket, one JSON request and one JSON reply per
//! line. The client side ([`request`], [`client_main`]) and the daemon's server
//! ([`bind`], [`serve`]) are both here.
//!
//! The server is bounded: at most [`MAX_CONNECTIONS`] connections are served at once
//! (more are answered "busy" and closed at once, so a flood cannot exhaust the daemon's
//! file descriptors), a client has [`IDLE_TIMEOUT`] to send its request, and accept
//! errors (EMFILE) back off instead of spinning, with their warning rate-limited.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{Semaphore, mpsc, oneshot},
};

use crate::logging::RateLimit;

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/blocksmtp/control.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    List,
    /// `source`: an address or IPv6 prefix; `secs`: none = the daemon's --ban-time.
    Ban { source: String, secs: Option<u64> },
    Unban { source: String },
    /// Re-read the config file and the whitelist; the reply says whether they were taken.
    Reload,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        Self { ok: true, error: None, data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null) }
    }

    pub fn err(msg: impl std::fmt::Display) -> Self {
        Self { ok: false, error: Some(msg.to_string()), data: serde_json::Value::Null }
    }
}

/// `blocksmtp status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub mode: String,
    pub uptime_secs: u64,
    /// (interface, attachment) for the xdp mode; JSON: `{"eth0": "xdp-native"}`.
    #[serde(with = "pairs_as_object")]
    pub interfaces: Vec<(String, String)>,
    pub sources: Vec<SourceStatus>,
    pub lines: u64,
    pub skipped: u64,
    pub guesses: u64,
    pub active_bans: usize,
    pub bans_total: u64,
    pub unbans_total: u64,
    pub reaped_total: u64,
    /// Packet counters of the dataplane, by verdict (xdp mode); JSON: `{"drop": 12, …}`.
    #[serde(default, with = "pairs_as_object")]
    pub packets: Vec<(String, u64)>,
    /// Bans decided but not (yet) in force: the enforcer failed; retried with backoff.
    #[serde(default)]
    pub pending_bans: usize,
    /// Repairs made after the kernel's state was found to differ (chain re-created,
    /// interface re-attached, …).
    #[serde(default)]
    pub repairs_total: u64,
    /// The xdp mode's attachments as the kernel has them now.
    #[serde(default)]
    pub attachments: Vec<InterfaceStatus>,
    /// The CrowdSec LAPI link, when configured.
    #[serde(default)]
    pub crowdsec: Option<crate::crowdsec::CrowdsecStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub iface: String,
    /// `xdp-native`, `xdp-generic`, `tc`, or none: not attached (not protected).
    pub attached: Option<String>,
    /// Since when (RFC 3339).
    pub since: String,
    pub detail: String,
}

/// `[(name, value)]` as a JSON object, in order (a reader wants `packets.drop`, not
/// `packets[3][1]`); the older `[[name, value]]` form is still read.
mod pairs_as_object {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeMap as _};

    pub fn serialize<S: Serializer, V: Serialize>(pairs: &[(String, V)], s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(pairs.len()))?;
        for (k, v) in pairs {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }

    struct PairsVisitor<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for PairsVisitor<V> {
        type Value = Vec<(String, V)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or an array of [name, value] pairs")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(kv) = m.next_entry()? {
                out.push(kv);
            }
            Ok(out)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(kv) = s.next_element()? {
                out.push(kv);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<Vec<(String, V)>, D::Error> {
        d.deserialize_any(PairsVisitor(std::marker::PhantomData))
    }
}

/// The reply to `ban` / `unban`: what was done, to what, for how long.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BanReply {
    /// `banned` or `unbanned`.
    pub action: String,
    /// The address or IPv6 prefix, as the daemon reads it (`2001:db8::/64`).
    pub source: String,
    /// Seconds the ban lasts (`ban` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<u64>,
    /// The same in words, for people.
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    /// Byte offset in the current file, where it applies.
    pub position: Option<u64>,
    pub lines: u64,
    pub open: bool,
    /// Whether the source says who wrote each line: the journal does (journald's _UID,
    /// _EXE, _COMM; only the MTA's processes count); a syslog file or a pipe does not
    /// (any local program may log with the MTA's tag).
    #[serde(default)]
    pub trusted: bool,
    /// How the source's lines are vouched for, in a few words.
    #[serde(default)]
    pub trust: String,
}

pub const TRUST_JOURNAL: &str = "journald's _UID/_EXE/_COMM: only the MTA's processes count";
pub const TRUST_FILE: &str =
    "untrusted: any local program can log with the MTA's tag (see README.Debian: rsyslog, or journal mode)";

/// One row of `blocksmtp list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BanRow {
    pub source: String,
    pub reason: String,
    pub guesses: u32,
    pub expires_in_secs: u64,
    pub dropped: Option<u64>,
    pub manual: bool,
    /// Where the ban came from: `detected` (this host's detection), `manual`
    /// (`blocksmtp ban`) or `crowdsec/<origin>` (a LAPI decision).
    pub origin: String,
    /// Decided but not in force: the enforcer failed and the ban is being retried.
    #[serde(default)]
    pub pending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters_are_objects_and_old_pairs_still_read() {
        let st = Status {
            version: "0.1.0".into(),
            pid: 1,
            mode: "xdp".into(),
            uptime_secs: 2,
            interfaces: vec![("vs0".into(), "xdp-native".into())],
            sources: vec![],
            lines: 0,
            skipped: 0,
            guesses: 0,
            active_bans: 0,
            bans_total: 0,
            unbans_total: 0,
            reaped_total: 0,
            packets: vec![("pass".into(), 3), ("drop".into(), 12)],
            pending_bans: 0,
            repairs_total: 0,
            attachments: vec![],
            crowdsec: None,
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["interfaces"]["vs0"], "xdp-native", "{v}");
        assert_eq!(v["packets"]["drop"], 12, "{v}");
        let back: Status = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back.packets, st.packets, "order kept");
        let mut old = serde_json::to_value(&st).unwrap();
        old["packets"] = serde_json::json!([["drop", 5]]);
        old["interfaces"] = serde_json::json!([["vs0", "tc"]]);
        let back: Status = serde_json::from_value(old).unwrap();
        assert_eq!((back.packets, back.interfaces), (vec![("drop".to_string(), 5)], vec![("vs0".to_string(), "tc".to_string())]));
    }
}

/// Send one request to the daemon and wait for its reply.
pub fn request(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            anyhow::anyhow!("no blocksmtp daemon is listening on {} (is `blocksmtp run` running?)", socket.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("permission denied on {}: the control socket is root-only", socket.display())
        }
        _ => anyhow::Error::new(e).context(format!("connecting to {}", socket.display())),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes()).context("sending the request")?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).context("reading the reply")?;
    if reply.is_empty() {
        bail!("the daemon closed the connection without a reply (not root?)");
    }
    serde_json::from_str(&reply).with_context(|| format!("malformed reply {reply:?}"))
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run a client command; prints the result. Exit code 0 on success, 1 when the daemon
/// refused, 2 when it could not be reached.
pub fn client_main(args: &ClientArgs, req: Request) -> std::process::ExitCode {
    if let Request::Ban { secs: Some(0), .. } = req {
        eprintln!("blocksmtp ban: --for 0 would ban for no time: give a duration (30s, 10m, 1h), or `blocksmtp unban` to lift a ban");
        return std::process::ExitCode::from(2);
    }
    let resp = match request(&args.control_socket, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blocksmtp: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp).unwrap_or_default());
    } else if let Some(e) = &resp.error {
        eprintln!("blocksmtp: {e}");
    } else {
        print_human(&req, &resp.data);
    }
    if resp.ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) }
}

fn print_human(req: &Request, data: &serde_json::Value) {
    match req {
        Request::Status => match serde_json::from_value::<Status>(data.clone()) {
            Ok(s) => {
                println!("blocksmtp {} (pid {}), up {}", s.version, s.pid, crate::duration::format_duration(Duration::from_secs(s.uptime_secs)));
                println!("mode: {}", s.mode);
                if s.attachments.is_empty() {
                    for (i, a) in &s.interfaces {
                        println!("  {i}: {a}");
                    }
                }
                for a in &s.attachments {
                    match &a.attached {
                        Some(how) => println!("  {}: {how} since {}", a.iface, a.since),
                        None => println!("  {}: NOT ATTACHED since {}: {}", a.iface, a.since, a.detail),
                    }
                }
                println!("sources:");
                for src in &s.sources {
                    let pos = src.position.map(|p| format!(" at byte {p}")).unwrap_or_default();
                    println!("  {}{pos}, {} lines{}", src.name, src.lines, if src.open { "" } else { " (waiting for it)" });
                    if !src.trust.is_empty() {
                        println!("    {}", src.trust);
                    }
                }
                println!("lines: {} read, {} skipped; guesses: {}", s.lines, s.skipped, s.guesses);
                println!("bans: {} active, {} set, {} lifted; stuck sessions reaped: {}", s.active_bans, s.bans_total, s.unbans_total, s.reaped_total);
                if s.pending_bans > 0 {
                    println!("PENDING: {} ban(s) decided but not in force (the enforcer failed; retrying)", s.pending_bans);
                }
                if s.repairs_total > 0 {
                    println!("repairs: {} (kernel state found different and restored; see the log)", s.repairs_total);
                }
                if !s.packets.is_empty() {
                    let line: Vec<String> = s.packets.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
                    println!("packets: {}", if line.is_empty() { "none yet".to_string() } else { line.join(" ") });
                }
            }
            Err(_) => println!("{data}"),
        },
        Request::List => match serde_json::from_value::<Vec<BanRow>>(data.clone()) {
            Ok(rows) if rows.is_empty() => println!("no active bans"),
            Ok(rows) => {
                // Columns as wide as their widest cell: an IPv6 prefix or `6d23h59m59s` is
                // never cut or run into the next column.
                let cells: Vec<[String; 5]> = rows
                    .into_iter()
                    .map(|r| {
                        let reason = if r.manual && r.reason.is_empty() { "manual".to_string() } else { r.reason };
                        let reason = if r.origin.starts_with("crowdsec/") { format!("{}: {reason}", r.origin) } else { reason };
                        let reason = if r.pending { format!("PENDING (not in force yet; retrying): {reason}") } else { reason };
                        [
                            r.source,
                            r.guesses.to_string(),
                            crate::duration::format_duration(Duration::from_secs(r.expires_in_secs)),
                            r.dropped.map_or("-".to_string(), |d| d.to_string()),
                            reason,
                        ]
                    })
                    .collect();
                let head = ["SOURCE", "GUESSES", "EXPIRES IN", "DROPPED", "REASON"];
                let mut w = head.map(str::len);
                for row in &cells {
                    for (w, c) in w.iter_mut().zip(row) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                let print = |c: [&str; 5]| {
                    println!("{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}", c[0], c[1], c[2], c[3], c[4], w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3]);
                };
                print(head);
                for row in &cells {
                    print([&row[0], &row[1], &row[2], &row[3], &row[4]]);
                }
            }
            Err(_) => println!("{data}"),
        },
        Request::Reload => println!("{}", data.as_str().map_or_else(|| data.to_string(), str::to_string)),
        Request::Ban { .. } | Request::Unban { .. } => match serde_json::from_value::<BanReply>(data.clone()) {
            Ok(r) => println!("{}", r.message),
            Err(_) => println!("{}", data.as_str().map_or_else(|| data.to_string(), str::to_string)),
        },
    }
}

/// A request from a client and where its reply goes.
pub type ControlMsg = (Request, oneshot::Sender<Response>);

/// Connections served at once; more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request line.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind the root-only control socket at `path` (a stale socket of a crashed daemon is
/// replaced; a live daemon's is not).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a crashed daemon: remove it, unless a live daemon answers on it.
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("another blocksmtp daemon is listening on {}", path.display());
        }
        let _ = std::fs::remove_file(path);
    }
    // Created with no permission for others from the start (umask), then 0600.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serve the control socket until the task is aborted; requests go to the daemon's loop
/// through `tx`.
pub async fn serve(l: UnixListener, tx: mpsc::Sender<ControlMsg>) {
    let me = unsafe { libc::geteuid() };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    let mut accept_warn = RateLimit::new(Duration::from_secs(60));
    let mut busy_warn = RateLimit::new(Duration::from_secs(60));
    loop {
        let stream = match l.accept().await {
            Ok((s, _)) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                // EMFILE and friends: the pending connection stays queued, so retrying at
                // once would spin. Wait, doubling up to a second.
                if let Some(n) = accept_warn.hit() {
                    log::warn!("control socket: accept failed: {e}{}", RateLimit::suffix(n));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(n) = busy_warn.hit() {
                log::warn!("control socket: {MAX_CONNECTIONS} connections open; refusing more{}", RateLimit::suffix(n));
            }
            let _ = stream.try_write(b"{\"ok\":false,\"error\":\"busy: too many control connections\"}\n");
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // Only root (or the daemon's own user) may talk to the daemon.
            let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
            let (r, mut w) = stream.into_split();
            if uid != 0 && uid != me {
                let _ = w.write_all(b"{\"ok\":false,\"error\":\"permission denied: root only\"}\n").await;
                return;
            }
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r).take(64 * 1024);
            match tokio::time::timeout(IDLE_TIMEOUT, r.read_line(&mut line)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    let _ = w.write_all(b"{\"ok\":false,\"error\":\"timed out waiting for the request\"}\n").await;
                    return;
                }
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let (otx, orx) = oneshot::channel();
                    if tx.send((req, otx)).await.is_err() {
                        return;
                    }
                    orx.await.unwrap_or_else(|_| Response::err("the daemon is stopping"))
                }
                Err(e) => Response::err(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}
