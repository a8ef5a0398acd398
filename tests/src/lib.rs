//! Support for blocksmtp's end-to-end tests and benchmarks: packet fixtures, private
//! network namespaces (documentation addresses only), cleanup that runs on failure.
pub mod bench;
pub mod crowdsec;
pub mod daemon;
pub mod faults;
pub mod guest;
pub mod distributed;
pub mod fleet;
pub mod loggen;
pub mod lab;
pub mod netns;
pub mod packet;

/// Whether we can do what root can (tests that need it skip, saying why, otherwise).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
