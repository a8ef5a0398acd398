//! The CrowdSec link against a real LAPI (Debian's crowdsec, private to the test, on
//! the loopback of its own network namespace): pulls cscli's Ip and Range decisions
//! and their deletion, pushes alerts that LAPI stores as ban decisions, logs in again
//! after a LAPI restart (new signing secret), queues while LAPI is down and
//! resynchronises with a full pull when it is back.
use std::time::{Duration, Instant, SystemTime};

use blocksmtp::crowdsec::{
    CrowdsecArgs,
    lapi::{Alert, Lapi as Client},
    link::{Link, LinkConfig, Pulled},
    read_bouncer_key, read_machine_file,
};
use blocksmtp_tests::{crowdsec::Lapi, netns::Netns};

const LISTEN: &str = "127.0.0.1:8080";

fn next(link: &mut Link, timeout: Duration) -> Option<Pulled> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        match link.pulled.try_recv() {
            Ok(p) => return Some(p),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    None
}

/// Pulls until `f` accepts one (changes of nothing arrive every interval).
fn wait_pulled(link: &mut Link, timeout: Duration, mut f: impl FnMut(&Pulled) -> bool) -> Pulled {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(p) = next(link, Duration::from_millis(500))
            && f(&p)
        {
            return p;
        }
    }
    panic!("no such pull within {timeout:?}; link: {:?}", link.status());
}

fn values(v: &[blocksmtp::crowdsec::RawDecision]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|d| format!("{}:{}", d.scope, d.value)).collect();
    v.sort();
    v
}

fn alert(ip: &str) -> Alert {
    let src: blocksmtp::addr::SourceAddr = ip.parse().unwrap();
    let now = SystemTime::now();
    Alert::for_ban(&src, Duration::from_secs(3600), 5, now, now, format!("{ip}: 5 unknown recipients in 1m (sendmail)"), 5, Duration::from_secs(600))
}

#[test]
fn pull_push_relogin_outage_and_resync() {
    if !blocksmtp_tests::is_root() {
        panic!("needs root (network namespaces)");
    }
    let ns = Netns::new("lapi").unwrap();
    let mut lapi = Lapi::start(Some(&ns), LISTEN).unwrap();
    let key_file = lapi.dir.path().join("bouncer.key");
    let machine_file = lapi.dir.path().join("machine.yaml");
    lapi.add_bouncer("mx1", &key_file).unwrap();
    lapi.add_machine("mx1", "mx1-secret-pw", &machine_file).unwrap();
    lapi.cscli(&["decisions", "add", "--ip", "192.0.2.9", "--duration", "1h"]).unwrap();
    lapi.cscli(&["decisions", "add", "--range", "198.51.100.0/24", "--duration", "30m"]).unwrap();

    let key = read_bouncer_key(&key_file).unwrap();
    let creds = read_machine_file(&machine_file).unwrap();
    let url = creds.url.clone().unwrap();
    // The link's thread must live in the LAPI's namespace: start it from a thread there.
    let mut link = ns
        .run_in(move || {
            let c = Client::new(&url, None).unwrap();
            Link::start(LinkConfig {
                pull: Some((c.clone(), key)),
                push: Some((c, creds)),
                interval: Duration::from_millis(500),
                queue_file: None,
            })
            .unwrap()
        })
        .unwrap();

    // The first pull is the full set.
    let Some(Pulled::Sync(all)) = next(&mut link, Duration::from_secs(10)) else { panic!("no sync: {:?}", link.status()) };
    assert_eq!(values(&all), ["Ip:192.0.2.9", "Range:198.51.100.0/24"]);
    let args = CrowdsecArgs::default();
    let d: Vec<_> = all.iter().map(|r| r.to_decision(64, &args).unwrap()).collect();
    assert!(d.iter().all(|d| d.origin == "cscli" && d.remaining > Duration::from_secs(1700)), "{d:?}");

    // A deletion arrives as a change.
    lapi.cscli(&["decisions", "delete", "--ip", "192.0.2.9"]).unwrap();
    let p = wait_pulled(&mut link, Duration::from_secs(5), |p| matches!(p, Pulled::Changes { deleted, .. } if !deleted.is_empty()));
    let Pulled::Changes { deleted, .. } = p else { unreachable!() };
    assert_eq!(values(&deleted), ["Ip:192.0.2.9"]);

    // A pushed alert becomes a ban decision of ours, and comes back through the pull.
    link.push(alert("192.0.2.66"));
    let p = wait_pulled(&mut link, Duration::from_secs(5), |p| matches!(p, Pulled::Changes { new, .. } if !new.is_empty()));
    let Pulled::Changes { new, .. } = p else { unreachable!() };
    assert_eq!(values(&new), ["Ip:192.0.2.66"]);
    assert_eq!((new[0].origin.as_str(), new[0].scenario.as_str()), ("blocksmtp", "blocksmtp/smtp-harvest"));
    assert!(lapi.decisions().unwrap().iter().any(|d| d["value"] == "192.0.2.66" && d["origin"] == "blocksmtp"));

    // A restarted LAPI signs with a new secret: the next push logs in again by itself.
    lapi.stop();
    lapi.spawn().unwrap();
    link.push(alert("192.0.2.67"));
    let start = Instant::now();
    while !lapi.decisions().unwrap().iter().any(|d| d["value"] == "192.0.2.67") {
        assert!(start.elapsed() < Duration::from_secs(15), "no push after a LAPI restart: {:?}", link.status());
        std::thread::sleep(Duration::from_millis(200));
    }

    // LAPI down: the link says so, alerts wait in the queue ...
    lapi.stop();
    link.push(alert("192.0.2.68"));
    let start = Instant::now();
    while link.status().up || link.status().queued == 0 || !link.status().resync {
        assert!(start.elapsed() < Duration::from_secs(15), "link never saw LAPI down: {:?}", link.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = link.status();
    assert!(st.last_error.as_deref().unwrap_or("").contains("unreachable"), "{st:?}");
    while next(&mut link, Duration::from_millis(50)).is_some() {}
    // ... a decision is made meanwhile ...
    lapi.spawn().unwrap();
    lapi.cscli(&["decisions", "add", "--ip", "203.0.113.7", "--duration", "1h"]).unwrap();
    // ... and once LAPI is back the queue drains and the pull resynchronises in full.
    let p = wait_pulled(&mut link, Duration::from_secs(15), |p| matches!(p, Pulled::Sync(_)));
    let Pulled::Sync(all) = p else { unreachable!() };
    assert!(values(&all).contains(&"Ip:203.0.113.7".to_string()), "{:?}", values(&all));
    assert!(!values(&all).contains(&"Ip:192.0.2.9".to_string()), "the deleted decision is not in the full set");
    let start = Instant::now();
    while !lapi.decisions().unwrap().iter().any(|d| d["value"] == "192.0.2.68") {
        assert!(start.elapsed() < Duration::from_secs(10), "queued alert not sent within 10 s: {:?}", link.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = link.status();
    assert!(st.up && st.queued == 0 && st.pushed_total == 3, "{st:?}");
    assert_eq!(lapi.alerts("blocksmtp/smtp-harvest").unwrap().len(), 3, "each alert pushed once");
}
