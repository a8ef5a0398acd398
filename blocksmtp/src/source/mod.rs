//! Log sources: where lines come from.
//!
//! `file` reads whole files (plain, gzip, stdin) for `replay`; `follow` tails live
//! files through rotations; `journal` reads journald; `stdin` reads a pipe.
pub mod file;
pub mod follow;
pub mod journal;
pub mod stdin;
