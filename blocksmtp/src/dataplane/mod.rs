//! The eBPF dataplane. (in progress)
