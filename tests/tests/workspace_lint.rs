//! A contributor's first command works before `cargo xtask setup`: `cargo clippy` of the
//! whole workspace, all targets, with `AYA_BUILD_SKIP=1` (no eBPF object built, as
//! aya-template does) and no bpf-linker on PATH, finds nothing (`-D warnings`). The
//! eBPF crate is type-checked for the host there, so its code must hold on both sides.
use std::{path::Path, process::Command};

#[test]
fn clippy_of_the_workspace_without_the_ebpf_toolchain() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    // The toolchain's own cargo, not rustup's proxy: the proxy puts ~/.cargo/bin (where
    // `cargo xtask setup` installs bpf-linker) back on the PATH it passes down.
    let which = Command::new("rustup").args(["which", "cargo"]).output().expect("running rustup which cargo");
    assert!(which.status.success(), "rustup which cargo: {}", String::from_utf8_lossy(&which.stderr));
    let cargo = std::path::PathBuf::from(String::from_utf8_lossy(&which.stdout).trim());
    let toolchain = cargo.parent().expect("cargo's directory");
    assert!(toolchain.join("cargo-clippy").exists(), "clippy is not installed in {}", toolchain.display());
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", toolchain.display());
    assert!(
        !std::env::split_paths(&path).any(|d| d.join("bpf-linker").exists()),
        "bpf-linker is still on the PATH given to cargo: {path}"
    );
    // cargo puts $CARGO_HOME/bin on its build scripts' PATH: a home of our own, sharing
    // the downloaded crates (and the config) but without ~/.cargo/bin.
    let real_home = std::env::var_os("CARGO_HOME").map(std::path::PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cargo")
    });
    // A target directory of its own (the main one's build lock is held by this test run),
    // the home beside it: the same paths each run, so a second run is incremental.
    let target = root.join("target").join("lint-check");
    let home = target.join("cargo-home");
    std::fs::create_dir_all(&home).unwrap();
    for shared in ["registry", "git", "config.toml", "config"] {
        let (from, to) = (real_home.join(shared), home.join(shared));
        if from.exists() && std::fs::symlink_metadata(&to).is_err() {
            std::os::unix::fs::symlink(from, to).unwrap();
        }
    }
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"])
        .env("PATH", &path)
        .env("AYA_BUILD_SKIP", "1")
        .env("CARGO_HOME", &home)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO")
        .output()
        .expect("running cargo clippy");
    assert!(
        out.status.success(),
        "cargo clippy --workspace --all-targets (AYA_BUILD_SKIP=1, no bpf-linker) failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
