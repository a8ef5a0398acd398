//! A real CrowdSec Local API (Debian's crowdsec package), private to one test: its own
//! config, sqlite database and listen address, optionally inside a network namespace.
//! Stopped (and its files removed) on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

pub struct Lapi {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// `http://HOST:PORT` (`https://` with TLS), as machine files carry it.
    pub url: String,
    ns: Option<String>,
    /// The CA cscli trusts (TLS only).
    ca: Option<PathBuf>,
}

/// Whether Debian's crowdsec is installed (xtask's test setup installs it).
pub fn available() -> bool {
    Path::new("/usr/bin/crowdsec").exists() && Path::new("/usr/bin/cscli").exists() && Path::new("/etc/crowdsec/config.yaml").exists()
}

impl Lapi {
    /// Start LAPI listening on `listen` (`ADDR:PORT`), in `ns` if given.
    pub fn start(ns: Option<&Netns>, listen: &str) -> anyhow::Result<Self> {
        Self::start_with(ns, listen, None)
    }

    /// Like `start`, serving https with `pki`'s server certificate (`api.server.tls`).
    pub fn start_tls(ns: Option<&Netns>, listen: &str, pki: &TestPki) -> anyhow::Result<Self> {
        Self::start_with(ns, listen, Some(pki))
    }

    fn start_with(ns: Option<&Netns>, listen: &str, tls: Option<&TestPki>) -> anyhow::Result<Self> {
        if !available() {
            bail!("Debian's crowdsec package is not installed (cargo xtask setup --test-deps installs it)");
        }
        let dir = tempfile::Builder::new().prefix("blocksmtp-lapi-").tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("data"))?;
        let mut cfg = std::fs::read_to_string("/etc/crowdsec/config.yaml")?;
        for (from, to) in [
            ("daemonize: true", "daemonize: false".to_string()),
            ("log_media: file", "log_media: stdout".to_string()),
            ("db_path: /var/lib/crowdsec/data/crowdsec.db", format!("db_path: {}/data/crowdsec.db", d.display())),
            ("data_dir: /var/lib/crowdsec/data/", format!("data_dir: {}/data/", d.display())),
            ("listen_uri: 127.0.0.1:8080", format!("listen_uri: {listen}")),
            (
                "credentials_path: /etc/crowdsec/local_api_credentials.yaml",
                format!("credentials_path: {}/local_api_credentials.yaml", d.display()),
            ),
            ("prometheus:\n  enabled: true", "prometheus:\n  enabled: false".to_string()),
            (
                "#    tls:\n#      cert_file: /etc/crowdsec/ssl/cert.pem\n#      key_file: /etc/crowdsec/ssl/key.pem",
                match tls {
                    Some(t) => format!("    tls:\n      cert_file: {}\n      key_file: {}", t.cert.display(), t.key.display()),
                    None => "#    tls: (off)".to_string(),
                },
            ),
        ] {
            if !cfg.contains(from) {
                bail!("/etc/crowdsec/config.yaml has no {from:?}: not the crowdsec 1.4 layout this test knows");
            }
            cfg = cfg.replace(from, &to);
        }
        let config = d.join("config.yaml");
        std::fs::write(&config, cfg)?;
        let url = format!("{}://{listen}", if tls.is_some() { "https" } else { "http" });
        std::fs::write(d.join("local_api_credentials.yaml"), format!("url: {url}\n"))?;
        let ns = ns.map(|n| n.name.clone());
        let mut l = Self { child: None, config, url, ns, dir, ca: tls.map(|t| t.ca.clone()) };
        l.spawn()?;
        // cscli's own machine, so `cscli decisions add/list` work against this LAPI.
        let url = l.url.clone();
        l.cscli(&["machines", "add", "cli", "--auto", "--force", "-f", &l.path("local_api_credentials.yaml"), "--url", &url])?;
        Ok(l)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, prog]);
                c
            }
            None => Command::new(prog),
        };
        // cscli (Go) trusts the test's CA through the standard variable.
        if let Some(ca) = &self.ca {
            c.env("SSL_CERT_FILE", ca);
        }
        c
    }

    /// (Re)start the LAPI process and wait until it answers.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        // Only this start's lines count (a restart appends to the same log).
        let seen = self.log().len();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("lapi.log"))?;
        let child = self
            .command("crowdsec")
            .args(["-c", &self.config.display().to_string(), "-no-cs", "-no-capi", "-info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting crowdsec")?;
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.log().get(seen..).is_some_and(|l| l.contains("CrowdSec Local API listening")) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!("crowdsec exited ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("LAPI did not start within 30 s:\n{}", self.log())
    }

    /// Stop the LAPI process (the database stays, as a restarted LAPI would find it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            crate::wait_or_kill(&mut c, Duration::from_secs(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lapi.log")).unwrap_or_default()
    }

    /// `cscli -c CONFIG ARGS…`, failing with its output if it fails.
    pub fn cscli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.command("cscli").arg("-c").arg(&self.config).args(args).output().context("running cscli")?;
        if !out.status.success() {
            bail!("cscli {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    }

    /// A bouncer key (`cscli bouncers add NAME -o raw`) written root-only to `file`.
    pub fn add_bouncer(&self, name: &str, file: &Path) -> anyhow::Result<String> {
        let out = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        let key = String::from_utf8(out.stdout)?.trim().to_string();
        write_secret(file, &format!("{key}\n"))?;
        Ok(key)
    }

    /// A machine (`cscli machines add NAME --password P -f FILE`), its file made root-only.
    pub fn add_machine(&self, name: &str, password: &str, file: &Path) -> anyhow::Result<()> {
        self.cscli(&["machines", "add", name, "--password", password, "-f", &file.display().to_string(), "--force"])?;
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(())
    }

    /// Every active decision of every origin, as JSON alerts hold them.
    pub fn decisions(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.cscli(&["decisions", "list", "-a", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok(v.as_array()
            .map(|alerts| alerts.iter().flat_map(|a| a["decisions"].as_array().cloned().unwrap_or_default()).collect())
            .unwrap_or_default())
    }

    /// Alerts of `scenario` (count pushes: LAPI keeps one active decision per address).
    pub fn alerts(&self, scenario: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.cscli(&["alerts", "list", "-a", "-o", "json", "--scenario", scenario])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

/// A private CA, a server certificate it signed for 127.0.0.1 (and its key), and a second
/// CA that signed nothing of LAPI's: made with the openssl CLI in `dir`.
pub struct TestPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub other_ca: PathBuf,
}

impl TestPki {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl (Debian package openssl)")?;
            if !out.status.success() {
                bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        for (name, cn) in [("ca", "blocksmtp test CA"), ("other-ca", "blocksmtp other test CA")] {
            let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={cn}"));
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            a.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(&a)?;
        }
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        openssl(&a)?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(&[
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2", "-days", "2", "-extfile",
            "server.ext", "-out", "server.pem",
        ])?;
        Ok(Self { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key"), other_ca: dir.join("other-ca.pem") })
    }
}

pub fn write_secret(file: &Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file)?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}
