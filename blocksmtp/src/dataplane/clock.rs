//! CLOCK_BOOTTIME, the clock of `bpf_ktime_get_boot_ns`: bans are timed on it so they
//! keep running through suspend and need no userspace action to lift.
use std::time::{Duration, SystemTime};

pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // CLOCK_BOOTTIME cannot fail on Linux ≥ 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time at which CLOCK_BOOTTIME reads `boot_ns`.
pub fn boottime_to_wall(boot_ns: u64) -> SystemTime {
    let now_boot = boottime_ns();
    let now = SystemTime::now();
    if boot_ns >= now_boot {
        now + Duration::from_nanos(boot_ns - now_boot)
    } else {
        now - Duration::from_nanos(now_boot - boot_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips_within_a_millisecond() {
        let t = boottime_ns() + 3_600_000_000_000;
        let wall = boottime_to_wall(t);
        let d = wall.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(3599) && d <= Duration::from_secs(3600), "{d:?}");
    }
}
