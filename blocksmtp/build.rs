//! Builds the eBPF object (blocksmtp-ebpf) and leaves it in OUT_DIR, where
//! `src/dataplane` embeds it: the daemon binary is self-contained.
use std::{path::Path, process::Command};

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).parent().expect("workspace root");
    let ebpf = root.join("blocksmtp-ebpf");
    // aya-build watches the eBPF crate; the shared types live next door.
    println!("cargo:rerun-if-changed={}", root.join("blocksmtp-common/src").display());

    // `AYA_BUILD_SKIP=1 cargo check` / `cargo clippy` (as aya-template does): no eBPF
    // toolchain needed; empty objects stand in, and a daemon built so says it cannot
    // load the dataplane.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out = std::env::var("OUT_DIR").expect("OUT_DIR");
        for name in ["blocksmtp", "baseline", "hash"] {
            std::fs::write(Path::new(&out).join(name), b"").expect("writing the stand-in eBPF object");
        }
        println!("cargo:warning=AYA_BUILD_SKIP=1: the eBPF object is not built; this binary cannot load the dataplane");
        return;
    }
    if let Some(missing) = missing_toolchain_piece() {
        panic!(
            "cannot build the eBPF object: {missing}\n  fix: run `cargo xtask setup` (installs what is missing, idempotent)\n  \
             or, to only check or lint: AYA_BUILD_SKIP=1 cargo check --workspace"
        );
    }
    let package = aya_build::Package {
        name: "blocksmtp-ebpf",
        root_dir: ebpf.to_str().expect("UTF-8 path"),
        ..Default::default()
    };
    // The workspace's release profile is for the host binary (fat LTO, one codegen
    // unit); the nested cargo that builds the eBPF object inherits this environment,
    // and configuration overrides the manifest: the object is built with cargo's
    // defaults (and its own package override), as it always was.
    // SAFETY: a build script is single-threaded here; nothing reads the environment
    // concurrently.
    unsafe {
        std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "false");
        std::env::set_var("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16");
    }
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        panic!("building the eBPF object failed: {e:#}");
    }
}

/// What `cargo xtask setup` would install, if anything is missing.
fn missing_toolchain_piece() -> Option<String> {
    if which::which("bpf-linker").is_err() {
        return Some("bpf-linker is not on PATH".into());
    }
    let sysroot = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output();
    match sysroot {
        Ok(out) if out.status.success() => {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
            (!src.exists()).then(|| format!("the nightly toolchain has no rust-src ({} is missing)", src.display()))
        }
        _ => Some("no nightly Rust toolchain (`rustup run nightly rustc` failed)".into()),
    }
}
