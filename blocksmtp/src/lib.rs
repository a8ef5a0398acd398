//! blocksmtp: stops SMTP directory-harvest attacks.
//!
//! The pipeline, one module per stage:
//! log `source` → `parse` → `correlate` → `policy` → `enforce` (→ `dataplane`),
//! driven by `daemon` (`blocksmtp run`) or `replay` (a dry run over files).
pub mod addr;
pub mod cli;
pub mod config;
pub mod control;
pub mod crowdsec;
pub mod correlate;
pub mod daemon;
pub mod detect;
pub mod dataplane;
pub mod duration;
pub mod enforce;
pub mod logging;
pub mod metrics;
pub mod parse;
pub mod policy;
pub mod proctitle;
pub mod reaper;
pub mod replay;
pub mod source;
pub mod whitelist;
