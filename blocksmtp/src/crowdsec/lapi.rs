//! The few LAPI calls blocksmtp makes, blocking (they run on the link's own thread):
//! the bouncer's decision stream, the machine's login and alert push.
use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::Stream;

/// What went wrong talking to LAPI, as the link needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    /// Connection refused, timeout, TLS failure: retry later.
    #[error("LAPI unreachable: {0}")]
    Unreachable(String),
    /// 401: the machine's token is no longer valid (a restarted LAPI signs with a new
    /// secret): log in again at once.
    #[error("LAPI refused the token (401)")]
    Unauthorized,
    /// 403 and other refusals: a wrong key or password; retrying will not help soon.
    #[error("LAPI answered {status} to {what}: {body}")]
    Status { what: &'static str, status: u16, body: String },
    #[error("LAPI's answer to {what} is not what it should be: {err}")]
    Bad { what: &'static str, err: String },
}

/// An HTTP agent for one LAPI base URL.
#[derive(Clone)]
pub struct Lapi {
    agent: ureq::Agent,
    base: String,
    /// Which CA roots TLS trusts, for certificate errors; whether a CA file was given.
    trust: String,
    ca_file: bool,
}

impl std::fmt::Debug for Lapi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lapi").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Lapi {
    /// `base`: `http://HOST:PORT` or `https://…` (a trailing slash is fine); `ca`: a
    /// PEM file for a private CA.
    pub fn new(base: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        let base = base.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("CrowdSec URL {base:?} must start with http:// or https://");
        }
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .timeout_connect(Some(Duration::from_secs(3)))
            // Status codes are answers we act on, not transport errors.
            .http_status_as_error(false)
            .user_agent(concat!("blocksmtp/", env!("CARGO_PKG_VERSION")));
        // Without a CA file, the host's roots (Debian's bundle, where an admin's own CA goes
        // with update-ca-certificates); ureq's built-in Mozilla roots where there is none.
        let (certs, trust) = match ca {
            Some(ca) => (Some(pem_certs(ca, "the CrowdSec CA file")?), format!("only the CA in --crowdsec-ca-file {}", ca.display())),
            None if base.starts_with("http://") => (None, String::new()),
            None => match pem_certs(Path::new(SYSTEM_ROOTS), "the system's CA bundle") {
                Ok(c) => (Some(c), format!("the system's CA roots ({SYSTEM_ROOTS})")),
                Err(_) => (None, "the built-in public CA roots".to_string()),
            },
        };
        if let Some(certs) = certs {
            let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build();
            cfg = cfg.tls_config(tls);
        }
        Ok(Self { agent: cfg.build().new_agent(), base, trust, ca_file: ca.is_some() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /v1/decisions/stream` with the bouncer key; `startup`: the full set.
    pub fn stream(&self, key: &str, startup: bool) -> Result<Stream, LapiError> {
        let what = "the decision stream";
        let url = self.url(&format!("/v1/decisions/stream?startup={startup}&scopes=ip,range"));
        let resp = self.agent.get(&url).header("X-Api-Key", key).call().map_err(|e| self.unreachable(e))?;
        let body = read(resp, what)?;
        serde_json::from_str(&body).map_err(|e| LapiError::Bad { what, err: e.to_string() })
    }

    /// `POST /v1/watchers/login`: a token and when it expires.
    pub fn login(&self, login: &str, password: &str) -> Result<Token, LapiError> {
        let what = "the machine login";
        #[derive(Serialize)]
        struct Login<'a> {
            machine_id: &'a str,
            password: &'a str,
            scenarios: [&'a str; 1],
        }
        #[derive(Deserialize)]
        struct Answer {
            token: String,
            expire: String,
        }
        let body = serde_json::to_string(&Login { machine_id: login, password, scenarios: [super::SCENARIO] })
            .expect("plain data serialises");
        let resp = self
            .agent
            .post(&self.url("/v1/watchers/login"))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| self.unreachable(e))?;
        let a: Answer = serde_json::from_str(&read(resp, what)?).map_err(|e| LapiError::Bad { what, err: e.to_string() })?;
        // Renew a few minutes before the end LAPI names (one hour by default).
        let left = chrono::DateTime::parse_from_rfc3339(&a.expire)
            .ok()
            .and_then(|t| SystemTime::from(t).duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(600));
        Ok(Token { jwt: a.token, renew_at: Instant::now() + left.saturating_sub(Duration::from_secs(300)).max(Duration::from_secs(30)) })
    }

    /// `POST /v1/alerts` with the machine's token.
    pub fn push(&self, token: &Token, alerts: &[Alert]) -> Result<(), LapiError> {
        let what = "the alert push";
        let body = serde_json::to_string(alerts).expect("plain data serialises");
        let resp = self
            .agent
            .post(&self.url("/v1/alerts"))
            .header("Authorization", &format!("Bearer {}", token.jwt))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| self.unreachable(e))?;
        read(resp, what).map(drop)
    }

    /// A transport error, naming the URL; a TLS failure (most often a certificate whose
    /// chain does not pass) says which roots were trusted and what to do.
    fn unreachable(&self, e: ureq::Error) -> LapiError {
        // ureq hands a handshake's rustls error on inside an io::Error.
        let tls = match &e {
            ureq::Error::Rustls(_) => true,
            ureq::Error::Io(io) => io.get_ref().is_some_and(|i| i.is::<rustls::Error>()),
            _ => false,
        };
        let hint = match (tls, self.ca_file) {
            (true, false) => format!(" (TLS trusting {}: for LAPI's own CA give its PEM file with --crowdsec-ca-file)", self.trust),
            (true, true) => format!(" (TLS trusting {})", self.trust),
            (false, _) => String::new(),
        };
        LapiError::Unreachable(format!("{}: {e}{hint}", self.base))
    }
}

/// Debian's CA bundle (package ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The certificates of a PEM file; `what` names it in errors.
fn pem_certs(path: &Path, what: &str) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} {} is not PEM", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{what} {} holds no certificate", path.display());
    }
    Ok(certs)
}

fn read(resp: ureq::http::Response<ureq::Body>, what: &'static str) -> Result<String, LapiError> {
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let text = body.with_config().limit(64 * 1024 * 1024).read_to_string().map_err(|e| LapiError::Bad { what, err: e.to_string() })?;
    match status {
        200..=299 => Ok(text),
        401 => Err(LapiError::Unauthorized),
        _ => Err(LapiError::Status { what, status, body: text.chars().take(200).collect() }),
    }
}

/// A machine's JWT.
#[derive(Clone)]
pub struct Token {
    jwt: String,
    renew_at: Instant,
}

impl Token {
    pub fn fresh(&self) -> bool {
        Instant::now() < self.renew_at
    }
}

/// One alert as LAPI takes it (the required fields, and the ban decision it carries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub scenario: String,
    pub scenario_hash: String,
    pub scenario_version: String,
    pub message: String,
    pub events_count: u32,
    pub start_at: String,
    pub stop_at: String,
    pub capacity: u32,
    pub leakspeed: String,
    pub simulated: bool,
    pub events: Vec<serde_json::Value>,
    pub source: AlertSource,
    pub decisions: Vec<AlertDecision>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSource {
    pub scope: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertDecision {
    pub origin: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    pub duration: String,
    pub scenario: String,
}

impl Alert {
    /// The alert for one of our bans: `source` banned for `duration`, with the
    /// evidence as the message.
    #[allow(clippy::too_many_arguments, reason = "one per field of the alert, named at its one call")]
    pub fn for_ban(
        source: &crate::addr::SourceAddr,
        duration: Duration,
        guesses: u32,
        first_seen: SystemTime,
        last_seen: SystemTime,
        message: String,
        capacity: u32,
        window: Duration,
    ) -> Self {
        use crate::parse::time::format_rfc3339;
        let net = source.net();
        let single = net.prefix_len() == net.max_prefix_len();
        let (scope, value) = if single { ("Ip", net.addr().to_string()) } else { ("Range", net.to_string()) };
        Alert {
            scenario: super::SCENARIO.into(),
            scenario_hash: String::new(),
            scenario_version: env!("CARGO_PKG_VERSION").into(),
            message,
            events_count: guesses.max(1),
            start_at: format_rfc3339(first_seen),
            stop_at: format_rfc3339(last_seen),
            capacity,
            leakspeed: super::to_go_duration(window),
            simulated: false,
            events: Vec::new(),
            source: AlertSource {
                scope: scope.into(),
                value: value.clone(),
                ip: single.then(|| value.clone()),
                range: (!single).then(|| value.clone()),
            },
            decisions: vec![AlertDecision {
                origin: super::ORIGIN.into(),
                kind: "ban".into(),
                scope: scope.into(),
                value,
                duration: super::to_go_duration(duration),
                scenario: super::SCENARIO.into(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_name_the_url() {
        // A port just freed: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let l = Lapi::new(&format!("http://127.0.0.1:{port}/"), None).unwrap();
        let e = l.stream("key", true).unwrap_err().to_string();
        assert!(e.starts_with("LAPI unreachable: ") && e.contains(&format!("http://127.0.0.1:{port}: ")), "{e}");
        assert!(!e.contains("TLS"), "no TLS hint for a refused connection: {e}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = Lapi::new("https://192.0.2.10:8080", Some(&f)).unwrap_err().to_string();
        assert!(e.contains("the CrowdSec CA file") && e.contains(&f.display().to_string()), "{e}");
        let e = Lapi::new("https://192.0.2.10:8080", Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(format!("{e:#}").contains("reading the CrowdSec CA file"), "{e:#}");
    }
}
