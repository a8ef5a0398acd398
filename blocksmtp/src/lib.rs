//! blocksmtp: stops SMTP directory-harvest attacks.
//!
//! The pipeline, one module per stage:
//! log `source` → `parse` → `correlate` → `policy` → `enforce` (→ `dataplane`).
pub mod addr;
pub mod cli;
pub mod config;
pub mod correlate;
pub mod dataplane;
pub mod duration;
pub mod enforce;
pub mod parse;
pub mod policy;
pub mod proctitle;
pub mod reaper;
pub mod replay;
pub mod source;
pub mod whitelist;
