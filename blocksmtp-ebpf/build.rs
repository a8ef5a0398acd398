//! Rebuild when bpf-linker changes: the linker is an undeclared build input. Only a build
//! for the BPF target links with it: a host `cargo check`/clippy of the workspace (the
//! eBPF crate type-checked only) needs none (tests/tests/workspace_lint.rs).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => panic!("bpf-linker not found on PATH: run `cargo xtask setup`"),
    }
}
