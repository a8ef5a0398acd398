//! `cargo xtask …`: build chain, tests, benchmarks, packaging for blocksmtp.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod copyright;
mod deb;
mod debcache;
mod setup;

#[derive(Parser)]
#[command(name = "xtask", about = "blocksmtp's build, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker, bpffs). Idempotent.
    Setup {
        /// Also install the Debian packages the tests use.
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the eBPF object (runs setup first when something is missing).
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// Build everything and run the daemon: `cargo xtask run -- run --log /var/log/mail.log`.
    Run {
        #[arg(long)]
        debug: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test (unit, fixtures, end to end as root), installing what they need,
    /// then fuzz the log-line parser for a bounded time.
    Test {
        /// Seconds of fuzzing after the tests (0 skips it; at most 60 in CI).
        #[arg(long, default_value_t = 45)]
        fuzz_seconds: u32,
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// See it work: a real sendmail in a namespace, a harvester cut off, a legitimate
    /// sender served; everything removed afterwards (needs root).
    Demo,
    /// Build the Debian package (target/debian/blocksmtp_VERSION_ARCH.deb) from the release build.
    Deb {
        /// Package target/release/blocksmtp as it is, without running cargo build.
        #[arg(long)]
        no_build: bool,
    },
    /// Regenerate packaging/copyright from Cargo.lock (installs cargo-about).
    Copyright,
    /// Benchmarks: print figures and ratios against peers measured in the same run.
    Bench {
        /// Smaller sizes, for a quick look.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup { test_deps } => setup::setup(test_deps),
        Task::BuildEbpf { release } => build_ebpf(release),
        Task::Run { debug, args } => {
            ensure_setup()?;
            let profile = if debug { "debug" } else { "release" };
            let mut build = cargo();
            build.args(["build", "-p", "blocksmtp"]);
            if !debug {
                build.arg("--release");
            }
            cmd(&mut build)?;
            let bin = target_dir().join(profile).join("blocksmtp");
            let status = Command::new(&bin).args(&args).status().with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                bail!("blocksmtp exited with {status}");
            }
            Ok(())
        }
        Task::Test { fuzz_seconds, args } => {
            setup::setup(true)?;
            // The package test installs and purges this .deb (tests/tests/deb_package.rs).
            let deb = deb::run(false)?;
            let mut t = cargo();
            t.args(["test", "--workspace", "--no-fail-fast"]).args(&args).env("BLOCKSMTP_DEB", &deb);
            cmd(&mut t)?;
            if fuzz_seconds > 0 {
                fuzz(fuzz_seconds)?;
            }
            Ok(())
        }
        Task::Demo => {
            ensure_setup()?;
            let mut changed = Vec::new();
            setup::debian_packages(&["iproute2", "sendmail", "util-linux"], &mut changed)?;
            cmd(cargo().args(["build", "--quiet", "-p", "blocksmtp", "-p", "blocksmtp-tests", "--bin", "blocksmtp", "--bin", "demo"]))?;
            cmd(&mut Command::new(target_dir().join("debug").join("demo")))
        }
        Task::Deb { no_build } => deb::run(no_build).map(|_| ()),
        Task::Copyright => copyright::run(),
        Task::Bench { quick } => {
            ensure_setup()?;
            let mut changed = Vec::new();
            // bench-fleet runs a private LAPI and the packaged firewall bouncer; neither may
            // register with or start anything on the host (see setup.rs).
            setup::crowdsec_offline();
            setup::firewall_bouncer_offline();
            let fresh_bouncer = !setup::installed("crowdsec-firewall-bouncer");
            setup::debian_packages(
                &["iproute2", "iptables", "ipset", "nftables", "fail2ban", "time", "hyperfine", "crowdsec", "crowdsec-firewall-bouncer"],
                &mut changed,
            )?;
            if fresh_bouncer {
                setup::firewall_bouncer_disabled();
            }
            for bench in [
                "bench-dataplane",
                "bench-replay",
                "bench-latency",
                "bench-traffic",
                "bench-churn",
                "bench-memory",
                "bench-startup",
                "bench-guesses",
                "bench-distributed",
                "bench-fleet",
            ] {
                let mut b = cargo();
                b.args(["run", "--release", "-p", "blocksmtp-tests", "--bin", bench, "--"]);
                if quick {
                    b.arg("--quick");
                }
                cmd(&mut b)?;
            }
            Ok(())
        }
    }
}

/// cargo-fuzz on the line parser (fuzz/run.sh), bounded in time.
fn fuzz(seconds: u32) -> anyhow::Result<()> {
    if Command::new("cargo").args(["fuzz", "--version"]).output().map(|o| !o.status.success()).unwrap_or(true) {
        println!("test: installing cargo-fuzz");
        cmd(Command::new("cargo").args(["install", "--locked", "cargo-fuzz", "--version", "^0.13"]))?;
    }
    println!("test: fuzzing the log-line parser for {seconds} s");
    cmd(Command::new("sh").arg(workspace_root().join("fuzz/run.sh")).arg(seconds.to_string()))
        .context("the fuzzer found a crash (see fuzz/artifacts/parse_line/)")
}

fn ensure_setup() -> anyhow::Result<()> {
    if !setup::ready() {
        setup::setup(false)?;
    }
    Ok(())
}

fn build_ebpf(release: bool) -> anyhow::Result<()> {
    ensure_setup()?;
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "build", "-p", "blocksmtp-ebpf", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .current_dir(workspace_root())
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    if release {
        c.arg("--release");
    }
    cmd(&mut c)?;
    let obj = target_dir().join("bpfel-unknown-none").join(if release { "release" } else { "debug" }).join("blocksmtp");
    println!("eBPF object: {}", obj.display());
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Run a command, inheriting stdio; fail naming it.
pub fn cmd(c: &mut Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("cannot run {:?}", c.get_program()))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

/// Run a command and return its stdout; fail with its stderr.
pub fn cmd_output(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("cannot run {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
