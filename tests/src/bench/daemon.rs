//! `blocksmtp run` under measurement: `crate::daemon::Daemon` with the release binary,
//! info-level logging ([`Launch::bench`]), launch timing, in-process control calls and
//! direct access to its pinned maps.
use std::{
    ops::{Deref, DerefMut},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use blocksmtp::{control::Request, dataplane::PinDir};
use blocksmtp_common::{BanKeyV4, BanValue, map_names};

pub use crate::daemon::append;
use crate::daemon::{Daemon, Launch};

/// A [`Daemon`] (every field and method of it through `Deref`) with the benchmarks' settings.
pub struct BenchDaemon(Daemon);

impl Deref for BenchDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl DerefMut for BenchDaemon {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

impl BenchDaemon {
    /// Files and arguments for a daemon of `bin` in `ns`; nothing runs until `launch` or `start`.
    pub fn new(bin: &Path, ns: Option<&str>, args: &[&str]) -> anyhow::Result<Self> {
        Ok(Self(Daemon::prepare(ns, None, args, Launch::bench(bin))?))
    }

    /// Launch and wait until the control socket answers; the time that took.
    pub fn start(&mut self) -> anyhow::Result<Duration> {
        let t = self.0.launch()?;
        let timeout = self.0.settings.ready_timeout;
        self.0.wait_ready(t, Duration::from_millis(20), timeout)
    }

    /// `status`'s data, asked in-process (no CLI process per poll).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.0.request(&Request::Status)
    }

    /// Append lines to the followed log in one write.
    pub fn append(&self, lines: &[String]) -> anyhow::Result<()> {
        self.0.write_log(lines)
    }

    /// The pinned IPv4 ban map (valid once the daemon has started once).
    pub fn bans_v4(&self) -> anyhow::Result<HashMap<MapData, BanKeyV4, BanValue>> {
        let path = PinDir::new(&self.pins).map(map_names::BANS_V4);
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(HashMap::try_from(Map::HashMap(data))?)
    }

    /// Remove the pinned links (the programs detach), keeping the pinned maps.
    pub fn unpin_links(&self) -> anyhow::Result<()> {
        let links = PinDir::new(&self.pins).links();
        for e in std::fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        Ok(())
    }
}
