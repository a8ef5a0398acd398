//! `--mode iptables`: see the module owner.
