//! `--mode xdp`: the eBPF dataplane as an enforcer.
