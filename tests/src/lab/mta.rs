//! Real Postfix 3.7 and Exim 4.96 (Debian's packages) beside the host's sendmail.
//!
//! The packages conflict with sendmail, so they are never installed: `apt-get
//! download` fetches them once into a cache, `dpkg-deb -x` unpacks them, and each MTA
//! runs in a private mount namespace inside the server's network namespace where
//! read-only overlays lay the unpacked tree over /usr and /etc (with the lab's own
//! configuration and users on top), and a writable overlay over /var keeps its spool,
//! mailboxes and logs in the lab's directory. Nothing on the host is written.
//!
//! Postfix logs through its own postlogd to a file (`maillog_file`), Exim to its
//! `mainlog`: both are what a daemon under test follows ([`PrivateMta::log_path`]).
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ProcInfo, TempDir, processes_in_mnt_ns};
use crate::netns::Netns;

/// Where the unpacked packages are kept between runs.
pub const CACHE: &str = "/var/cache/blocksmtp-tests/mta-root";
const PACKAGES: &[&str] = &["postfix", "exim4-daemon-light", "exim4-base", "exim4-config", "libidn12"];

/// Users the lab's MTAs know (uids unused on a Debian host).
const POSTFIX_UID: u32 = 9901;
const POSTDROP_GID: u32 = 9902;
const EXIM_UID: u32 = 9904;
const ALICE_UID: u32 = 9905;
/// The one valid mailbox.
pub const VALID_USER: &str = "alice";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postfix,
    Exim,
}

/// The unpacked packages, fetched and unpacked on first use (crate::debcache); a tree
/// is complete once it has its `.complete` stamp.
pub fn root() -> anyhow::Result<PathBuf> {
    let stamp = |t: &Path| t.join(".complete").exists();
    let u = crate::debcache::unpacked(Path::new(CACHE), PACKAGES, stamp, |tmp| Ok(fs::write(tmp.join(".complete"), "")?))?;
    Ok(u.tree)
}

/// One running MTA; stopped, with every process of its mount namespace, on drop.
pub struct PrivateMta {
    pub kind: Kind,
    dir: Option<TempDir>,
    mnt_ns: String,
    leader: i32,
}

fn write(p: &Path, s: &str) -> anyhow::Result<()> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(p, s).with_context(|| format!("writing {}", p.display()))
}

fn chown(p: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))
}

impl PrivateMta {
    /// Start `kind` in `server` (which carries 192.0.2.25 and 2001:db8::25, as
    /// `Topology`'s server does), listening on port 25 of both; returns once both
    /// listeners give a banner.
    pub fn start(server: &Netns, kind: Kind) -> anyhow::Result<Self> {
        let root = root()?;
        let dir = TempDir::new(match kind {
            Kind::Postfix => "blocksmtp-postfix",
            Kind::Exim => "blocksmtp-exim",
        })?;
        let d = dir.path().to_path_buf();
        // /etc on top of the package's and the host's: users and the MTA's config.
        let etc = d.join("etc");
        let mut passwd = fs::read_to_string("/etc/passwd")?;
        let mut group = fs::read_to_string("/etc/group")?;
        passwd.push_str(&format!(
            "postfix:x:{POSTFIX_UID}:{POSTFIX_UID}::/var/spool/postfix:/usr/sbin/nologin\n\
             Debian-exim:x:{EXIM_UID}:{EXIM_UID}::/var/spool/exim4:/usr/sbin/nologin\n\
             {VALID_USER}:x:{ALICE_UID}:{ALICE_UID}::/var/mail:/usr/sbin/nologin\n"
        ));
        group.push_str(&format!(
            "postfix:x:{POSTFIX_UID}:\npostdrop:x:{POSTDROP_GID}:\nDebian-exim:x:{EXIM_UID}:\n{VALID_USER}:x:{ALICE_UID}:\n"
        ));
        write(&etc.join("passwd"), &passwd)?;
        write(&etc.join("group"), &group)?;
        write(&etc.join("mailname"), "mx.example.com\n")?;
        write(
            &etc.join("hosts"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n192.0.2.25\tmx.example.com mx\n2001:db8::25\tmx.example.com mx\n",
        )?;
        write(&etc.join("hostname"), "mx\n")?;
        // No resolver in the lab: lookups fail at once instead of timing out.
        write(&etc.join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")?;
        let var_up = d.join("var-up");
        for sub in ["var-up/mail", "var-up/log", "var-work", "etc-up", "etc-work", "spool", "lib", "log"] {
            fs::create_dir_all(d.join(sub))?;
        }
        fs::set_permissions(var_up.join("mail"), fs::Permissions::from_mode(0o1777))?;
        let run = match kind {
            Kind::Postfix => {
                let pf = etc.join("postfix");
                fs::create_dir_all(&pf)?;
                fs::copy(root.join("usr/share/postfix/master.cf.dist"), pf.join("master.cf"))?;
                write(
                    &pf.join("main.cf"),
                    &format!(
                        "compatibility_level = 3.6\nmyhostname = mx.example.com\nmydomain = example.com\n\
                         mydestination = example.com, mx.example.com, localhost\n\
                         inet_interfaces = 192.0.2.25, 2001:db8::25\ninet_protocols = all\nmynetworks = 127.0.0.0/8\n\
                         queue_directory = {d}/spool\ndata_directory = {d}/lib\n\
                         maillog_file = {d}/log/mail.log\nmaillog_file_prefixes = {d}\n\
                         mail_spool_directory = /var/mail\nalias_maps =\nalias_database =\n\
                         local_recipient_maps = unix:passwd.byname\nsmtpd_banner = $myhostname ESMTP\nbiff = no\n\
                         smtpd_delay_reject = yes\ndisable_dns_lookups = yes\nsmtp_dns_support_level = disabled\n",
                        d = d.display()
                    ),
                )?;
                chown(&d.join("lib"), POSTFIX_UID, POSTFIX_UID)?;
                "postconf -c /etc/postfix -F '*/*/chroot = n'\n\
                 postfix -c /etc/postfix post-install create-missing >/dev/null 2>&1\n\
                 postfix -c /etc/postfix start\n"
                    .to_string()
            }
            Kind::Exim => {
                write(
                    &etc.join("exim4/update-exim4.conf.conf"),
                    "dc_eximconfig_configtype='internet'\ndc_other_hostnames='example.com'\n\
                     dc_local_interfaces='192.0.2.25 ; 2001:db8::25'\ndc_readhost=''\ndc_relay_domains=''\n\
                     dc_minimaldns='true'\ndc_relay_nets=''\ndc_smarthost=''\nCFILEMODE='644'\n\
                     dc_use_split_config='false'\ndc_hide_mailname=''\ndc_mailname_in_oh='true'\n\
                     dc_localdelivery='mail_spool'\n",
                )?;
                for sub in ["spool/exim4", "log/exim4", "lib/exim4"] {
                    let p = var_up.join(sub);
                    fs::create_dir_all(&p)?;
                    chown(&p, EXIM_UID, EXIM_UID)?;
                }
                format!("update-exim4.conf\nexim4 -bd -q30m -oP {}/exim.pid\n", d.display())
            }
        };
        let script = d.join("start.sh");
        write(
            &script,
            &format!(
                "set -e\n\
                 mount -t overlay overlay -o lowerdir={root}/usr:/usr /usr\n\
                 mount -t overlay overlay -o lowerdir={d}/etc:{root}/etc:/etc,upperdir={d}/etc-up,workdir={d}/etc-work /etc\n\
                 mount -t overlay overlay -o lowerdir=/var,upperdir={d}/var-up,workdir={d}/var-work /var\n\
                 hostname mx\n\
                 {run}",
                root = root.display(),
                d = d.display()
            ),
        )?;
        let log = fs::File::create(d.join("start.log"))?;
        super::become_subreaper();
        let st = Command::new("ip")
            .args(["netns", "exec", &server.name, "unshare", "--mount", "--uts", "--propagation", "private", "sh"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("running the MTA's start script")?;
        let mut me = Self { kind, dir: Some(dir), mnt_ns: String::new(), leader: 0 };
        if !st.success() {
            bail!("{kind:?} did not start ({st}): {}\n{}", me.start_log(), me.log());
        }
        // The daemon detached; find it by its pid file and take its mount namespace.
        let pidfile = match kind {
            Kind::Postfix => d.join("spool/pid/master.pid"),
            Kind::Exim => d.join("exim.pid"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while me.leader == 0 && Instant::now() < deadline {
            match fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()) {
                Some(pid) => me.leader = pid,
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if me.leader == 0 {
            bail!("{kind:?}: no pid file {} within 20 s: {}\n{}", pidfile.display(), me.start_log(), me.log());
        }
        me.mnt_ns = fs::read_link(format!("/proc/{}/ns/mnt", me.leader))
            .with_context(|| format!("{kind:?} (pid {}) exited at once: {}", me.leader, me.log()))?
            .display()
            .to_string();
        for (src, dst) in [("192.0.2.25", "192.0.2.25:25"), ("2001:db8::25", "[2001:db8::25]:25")] {
            let (src, dst) = (src.parse()?, dst.parse()?);
            let ok = server.run_in(move || {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(20) {
                    if let Ok(mut s) = super::smtp::Session::open(src, dst, super::smtp::Timeouts::default())
                        && s.read_reply().is_ok_and(|r| r.code == 220)
                    {
                        let _ = s.command("QUIT");
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                false
            })?;
            if !ok {
                bail!("{kind:?} not answering on {dst}: {}\n{}", me.start_log(), me.log());
            }
        }
        Ok(me)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("live").path()
    }

    fn start_log(&self) -> String {
        fs::read_to_string(self.dir().join("start.log")).unwrap_or_default()
    }

    /// The log the MTA writes (Postfix's maillog_file, Exim's mainlog).
    pub fn log_path(&self) -> PathBuf {
        match self.kind {
            Kind::Postfix => self.dir().join("log/mail.log"),
            Kind::Exim => self.dir().join("var-up/log/exim4/mainlog"),
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Wait until the log holds `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().lines().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The valid user's mailbox.
    pub fn mailbox(&self) -> PathBuf {
        self.dir().join("var-up/mail").join(VALID_USER)
    }

    /// Every process of the MTA (its mount namespace).
    pub fn processes(&self) -> Vec<ProcInfo> {
        processes_in_mnt_ns(&self.mnt_ns)
    }

    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.mnt_ns.is_empty() {
            return Ok(());
        }
        let mut left = Vec::new();
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            for p in self.processes() {
                unsafe { libc::kill(p.pid, sig) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                for p in self.processes() {
                    super::reap(p.pid);
                }
                left = self.processes();
                if left.is_empty() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if left.is_empty() {
                break;
            }
        }
        super::reap_adopted_zombies(self.leader);
        self.mnt_ns.clear();
        if let Some(d) = self.dir.take()
            && std::env::var_os("BLOCKSMTP_LAB_KEEP").is_some()
        {
            eprintln!("mail lab: keeping {}", d.keep().display());
        }
        if !left.is_empty() {
            bail!("{:?} processes survived SIGKILL: {left:?}", self.kind);
        }
        Ok(())
    }
}

impl Drop for PrivateMta {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("mail lab: {e:#}");
        }
    }
}
