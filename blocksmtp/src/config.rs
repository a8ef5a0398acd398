//! The TOML config file: every long option of `blocksmtp run`, as `key = value`.
//!
//! A key is an option's long name (`max-unknown`, or `max_unknown`); the command line
//! wins over the file. Values go through the same parsers as the command line, so a bad
//! value gets the same check, reported as `FILE:LINE: key …`. Unknown keys are errors.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use clap::{ArgAction, ArgMatches, Command, parser::ValueSource};
use toml_edit::{Document, Item, Value};

/// Where the config is read from when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/blocksmtp/blocksmtp.toml";

/// Options that make no sense in the file itself.
const NOT_IN_FILE: &[&str] = &["config", "help"];

/// Arguments to add to `run`'s command line from `path`: one `--key=value` per value,
/// for keys the command line did not set. `run_cmd` is the `run` subcommand's
/// definition and `matches` what the command line gave it.
pub fn overlay(run_cmd: &Command, matches: &ArgMatches, path: &Path) -> anyhow::Result<Vec<OsString>> {
    overlay_with_origins(run_cmd, matches, path).map(|(args, _)| args)
}

/// [`overlay`], and where each option taken from the file was set: long name →
/// `FILE:LINE`, for errors found once every value is parsed (`window = 0`).
pub fn overlay_with_origins(
    run_cmd: &Command,
    matches: &ArgMatches,
    path: &Path,
) -> anyhow::Result<(Vec<OsString>, std::collections::BTreeMap<String, String>)> {
    let mut origins = std::collections::BTreeMap::new();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let doc = Document::parse(text.clone()).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(&text, s.start));
        anyhow!("{}:{line}: {}", path.display(), e.message())
    })?;
    let mut out = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let line = item.span().or_else(|| doc.as_table().key(key).and_then(|k| k.span())).map_or(0, |s| line_of(&text, s.start));
        let at = || format!("{}:{line}: key `{key}`", path.display());
        let norm = key.replace('_', "-");
        let arg = run_cmd
            .get_arguments()
            .find(|a| {
                a.get_long() == Some(norm.as_str())
                    || a.get_all_aliases().is_some_and(|al| al.contains(&norm.as_str()))
            })
            .filter(|a| !NOT_IN_FILE.contains(&a.get_id().as_str()))
            .ok_or_else(|| anyhow!("{}: unknown option (see `blocksmtp config` for every key)", at()))?;
        let id = arg.get_id().as_str();
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            continue;
        }
        let long = arg.get_long().expect("config keys are long options");
        let takes_value = !matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count);
        let values = values_of(item).map_err(|e| anyhow!("{}: {e}", at()))?;
        let mut args = Vec::new();
        for v in values {
            if takes_value {
                args.push(OsString::from(format!("--{long}={v}")));
            } else {
                match v.as_str() {
                    "true" => args.push(OsString::from(format!("--{long}"))),
                    "false" => {}
                    _ => bail!("{}: expected true or false, found {v}", at()),
                }
            }
        }
        // Check this key alone, so an error names it.
        if let Err(e) = run_cmd.clone().no_binary_name(true).try_get_matches_from(&args) {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid value").trim_start_matches("error: ");
            bail!("{}: {first}", at());
        }
        out.extend(args);
        origins.insert(long.to_string(), format!("{}:{line}", path.display()));
    }
    Ok((out, origins))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

fn values_of(item: &Item) -> anyhow::Result<Vec<String>> {
    match item {
        Item::Value(Value::Array(a)) => a.iter().map(scalar).collect(),
        Item::Value(v) => Ok(vec![scalar(v)?]),
        Item::Table(_) | Item::ArrayOfTables(_) => bail!("expected a value, found a table"),
        Item::None => Ok(vec![]),
    }
}

fn scalar(v: &Value) -> anyhow::Result<String> {
    Ok(match v {
        Value::String(s) => s.value().clone(),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        Value::Boolean(b) => b.value().to_string(),
        Value::Datetime(d) => d.value().to_string(),
        Value::Array(_) | Value::InlineTable(_) => bail!("expected a single value, found a nested array or table"),
    })
}

/// The config path to read: `--config` if given (it must exist), else the default
/// path if it exists.
pub fn config_path(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match explicit {
        Some(p) if p.exists() => Ok(Some(p.to_path_buf())),
        Some(p) => bail!("config file {} does not exist", p.display()),
        None if Path::new(DEFAULT_CONFIG).exists() => Ok(Some(PathBuf::from(DEFAULT_CONFIG))),
        None => Ok(None),
    }
}

/// A config file listing every option of `run_cmd`, commented out at its default.
pub fn template(run_cmd: &Command) -> String {
    let mut out = String::from(
        "# blocksmtp configuration: every option of `blocksmtp run`, at its default.\n\
         # Uncomment to change. The command line wins over this file.\n",
    );
    for arg in run_cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&id) || arg.is_hide_set() {
            continue;
        }
        out.push('\n');
        if let Some(help) = arg.get_help() {
            for l in help.to_string().lines() {
                out.push_str(&format!("# {l}\n"));
            }
        }
        if let Some(al) = arg.get_visible_aliases() {
            out.push_str(&format!("# (old name: --{})\n", al.join(", --")));
        }
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| toml_literal(&v.to_string_lossy())).collect();
        let multi = matches!(arg.get_action(), ArgAction::Append);
        let value = match (arg.get_action(), defaults.as_slice()) {
            (ArgAction::SetTrue, _) => "false".to_string(),
            (_, []) if multi => "[]".to_string(),
            (_, []) => match example_value(run_cmd, arg) {
                // The package's whitelist file is there: keep it on in a regenerated
                // config (`blocksmtp config > /etc/blocksmtp/blocksmtp.toml`).
                Some(v) if long == "white-list" && Path::new(PACKAGE_WHITELIST).exists() => {
                    out.push_str(&format!("# (on: {PACKAGE_WHITELIST} exists)\n{long} = {v}\n"));
                    continue;
                }
                Some(v) => format!("{v}   # not set; for example"),
                None => {
                    let name = arg.get_value_names().and_then(|v| v.first()).map_or("VALUE".to_string(), |v| v.to_string());
                    out.push_str(&format!("# {long}: not set (takes {name})\n"));
                    continue;
                }
            },
            (_, d) if multi => format!("[{}]", d.join(", ")),
            (_, d) => d.join(", "),
        };
        out.push_str(&format!("# {long} = {value}\n"));
    }
    out
}

/// The whitelist file the Debian package ships.
pub const PACKAGE_WHITELIST: &str = "/etc/blocksmtp/whitelist";

/// An example value for an option that has no default, as a TOML literal, that the
/// option's own parser accepts (so the line works when uncommented).
fn example_value(run_cmd: &Command, arg: &clap::Arg) -> Option<String> {
    let long = arg.get_long()?;
    let name = arg.get_value_names().and_then(|v| v.first()).map(|v| v.to_string()).unwrap_or_default();
    let candidates: &[&str] = match (long, name.as_str()) {
        ("white-list", _) => &[PACKAGE_WHITELIST],
        (_, "ADDR:PORT") => &["127.0.0.1:9325"],
        (_, "N") => &["1"],
        (_, "NAME" | "HOST") => &["mx"],
        (_, "IP") => &["192.0.2.25"],
        (_, "IFACE") => &["eth0"],
        (_, "DUR") => &["1h"],
        (_, "FILE" | "PATH") => &["/etc/blocksmtp/FILE"],
        _ => &[],
    };
    candidates
        .iter()
        .find(|v| run_cmd.clone().no_binary_name(true).try_get_matches_from([format!("--{long}={v}")]).is_ok())
        .map(|v| toml_literal(v))
}

fn toml_literal(s: &str) -> String {
    if s.parse::<i64>().is_ok() || s == "true" || s == "false" {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, Command};

    use super::*;

    fn cmd() -> Command {
        Command::new("run")
            .no_binary_name(true)
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("window").long("window").default_value("10m").value_parser(|s: &str| {
                s.strip_suffix('m').and_then(|n| n.parse::<u64>().ok()).ok_or("use e.g. 10m")
            }))
            .arg(Arg::new("log").long("log").visible_alias("syslog-msgs-file").action(ArgAction::Append))
            .arg(Arg::new("keep_bans").long("keep-bans").action(ArgAction::SetTrue))
            .arg(Arg::new("max_unknown").long("max-unknown").value_parser(clap::value_parser!(u32)).default_value("5"))
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn run_overlay(cli: &[&str], text: &str) -> anyhow::Result<Vec<String>> {
        let c = cmd();
        let m = c.clone().try_get_matches_from(cli).unwrap();
        let f = file(text);
        overlay(&c, &m, f.path()).map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn keys_become_options_and_the_command_line_wins() {
        let args = run_overlay(
            &["--max-unknown", "9"],
            "max_unknown = 3\nwindow = \"5m\"\nsyslog-msgs-file = [\"/a\", \"/b\"]\nkeep-bans = true\n",
        )
        .unwrap();
        assert_eq!(args, vec!["--window=5m", "--log=/a", "--log=/b", "--keep-bans"], "old names map to the current option");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = run_overlay(&[], "# comment\n\nwindow = \"5x\"\n").unwrap_err().to_string();
        assert!(e.contains(":3: key `window`") && e.contains("5x"), "{e}");
        let e = run_overlay(&[], "window = \"5m\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains(":2: key `bogus`: unknown option"), "{e}");
        let e = run_overlay(&[], "max-unknown = -1\n").unwrap_err().to_string();
        assert!(e.contains(":1: key `max-unknown`"), "{e}");
        let e = run_overlay(&[], "window = [\n").unwrap_err().to_string();
        assert!(e.contains(":1") || e.contains(":2"), "{e}");
        let e = run_overlay(&[], "[section]\nx = 1\n").unwrap_err().to_string();
        assert!(e.contains("key `section`"), "{e}");
    }

    #[test]
    fn template_lists_every_option_at_its_default() {
        let t = template(&cmd());
        assert!(t.contains("# window = \"10m\""), "{t}");
        assert!(t.contains("# max-unknown = 5"), "{t}");
        assert!(t.contains("# log = []"), "{t}");
        assert!(t.contains("# keep-bans = false"), "{t}");
        assert!(t.contains("old name: --syslog-msgs-file"), "{t}");
        assert!(!t.contains("config ="), "{t}");
    }

    /// Every example line of the real template is valid when uncommented: the file
    /// made of them is accepted by the overlay (the same check as the daemon's).
    #[test]
    fn uncommented_examples_are_valid() {
        use clap::CommandFactory as _;
        let cli = crate::cli::Cli::command();
        let run = cli.find_subcommand("run").unwrap().clone();
        let t = template(&run);
        assert!(!t.contains("(not set)"), "{t}");
        assert!(t.contains("# metrics-listen = \"127.0.0.1:9325\"   # not set; for example\n"), "{t}");
        assert!(t.contains("# debug = 1   # not set; for example\n"), "{t}");
        let uncommented: String = t
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
            .map(|l| format!("{l}\n"))
            .collect();
        // `journal` and `stdin` alone are contradictory only for the daemon, not for the file.
        let m = run.clone().no_binary_name(true).try_get_matches_from(Vec::<String>::new()).unwrap();
        let f = file(&uncommented);
        let args = overlay(&run, &m, f.path()).unwrap_or_else(|e| panic!("{e:#}\n{uncommented}"));
        assert!(args.iter().any(|a| a == "--metrics-listen=127.0.0.1:9325"), "{args:?}");
    }
}
