//! Distributed harvests through replay (no kernel, no root): every innocent of the
//! generator stays unbanned, alone and beside each campaign shape, in sendmail and
//! Postfix form; each campaign shape is caught by the evidence beyond one address,
//! which per-address counting cannot do. Timing-free; a few seconds.
use std::path::Path;

use blocksmtp::{detect::DetectArgs, source::file::Input};
use blocksmtp_tests::{
    distributed::{Ban, Score, score},
    loggen::{Form, Rendered, Scenario, distributed_shapes, innocent_scenarios},
};

fn replay(dir: &Path, s: &Scenario, form: Form, per_address_only: bool) -> (Rendered, Score) {
    let r = s.render(form, 7);
    let log = dir.join(format!("{}-{}.log", s.name, form.name()));
    std::fs::write(&log, &r.log).unwrap();
    let mut args = DetectArgs { per_address_only, ..DetectArgs::default() };
    if !s.whitelist.is_empty() {
        let wl = dir.join(format!("{}.wl", s.name));
        std::fs::write(&wl, s.whitelist.join("\n")).unwrap();
        args.white_list = Some(wl);
    }
    let report = blocksmtp::replay::run(&args, &[Input::File(log)]).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    let bans: Vec<Ban> = json["bans"].as_array().unwrap().iter().map(|b| Ban::from_replay(b).unwrap()).collect();
    let sc = score(s, &r, &bans);
    (r, sc)
}

#[test]
fn innocents_are_never_banned() {
    let dir = tempfile::tempdir().unwrap();
    for (name, s) in innocent_scenarios(11) {
        for form in Form::ALL {
            let (r, sc) = replay(dir.path(), &s, form, false);
            assert!(sc.innocents_banned.is_empty(), "{name} ({}): banned {:?}", form.name(), sc.innocents_banned);
            assert_eq!(sc.bans, 0, "{name} ({})", form.name());
            if name != "background" {
                assert!(!r.innocent_guesses.is_empty(), "{name}: the innocent made its mistakes");
            }
        }
    }
}

#[test]
fn campaign_shapes_are_caught_and_innocents_spared() {
    let dir = tempfile::tempdir().unwrap();
    for (name, one_network, s) in distributed_shapes(11) {
        for form in Form::ALL {
            let (_, new) = replay(dir.path(), &s, form, false);
            let (_, old) = replay(dir.path(), &s, form, true);
            let what = format!("{name} ({}): new {new:?} / per-address {old:?}", form.name());
            assert!(new.innocents_banned.is_empty(), "{what}");
            assert!(old.innocents_banned.is_empty(), "{what}");
            // Per-address counting sees none of it.
            assert_eq!(old.covered, 0, "{what}");
            assert!(new.covered_share() >= 0.5, "{what}");
            let bound = if one_network { 0.2 } else { 0.85 };
            assert!(new.answered_share() <= bound, "{what}");
        }
    }
}
