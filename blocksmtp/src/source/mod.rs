//! Log sources. (in progress)
pub mod follow;
pub mod journal;
pub mod stdin;
