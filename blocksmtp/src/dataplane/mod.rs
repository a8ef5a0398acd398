//! The eBPF dataplane: load the programs, configure them, hold the ban maps.
//!
//! Bans are kernel map entries with an expiry on CLOCK_BOOTTIME: the program ignores an
//! expired entry on its own, so a ban lifts on time even with the daemon dead. The daemon
//! only sweeps expired entries to free space. With a pin directory, maps and links live in
//! bpffs and survive restarts (see `pin` and `attach`).
//!
//! Prefix bans (an IPv4 network shorter than /32, an IPv6 network shorter than
//! `--v6-prefix`) live in the `BANNET_V4` / `BANNET_V6` LPM tries beside the address
//! maps, IPv6 ones longer than /48 in `BANNET_V6L` (each class with its own hint; IPv4
//! bans longer than /24 share `BANNET_V4` but have a hint of their own); the
//! program looks there only while a config bit says a trie holds entries, and only for
//! an address without a ban of its own.
//!
//! Full maps: each ban map holds `MAX_BANS` (1,048,576) entries. When one is full a new
//! ban first triggers a sweep of expired entries; if the map is still full the ban is
//! refused with an error naming the map (existing bans are never evicted to make room:
//! an attacker must not be able to flush the ban list by provoking bans).
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashSet},
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use blocksmtp_common::{
    AllowValue, BAN_FLAG_LEN_SHIFT, BAN_FLAG_MANUAL, CONFIG_ALLOW_V4, CONFIG_ALLOW_V6, CONFIG_BANNET_V4, CONFIG_BANNET_V6,
    CONFIG_BANNET_V6L, BanKeyV4, BanKeyV6, BanValue, Config, STAT_COUNT, V4_SHORT_MAX, V6_SHORT_MAX, Verdict, map_names,
    program_names, v6_key,
};
use ipnet::IpNet;

use crate::addr::SourceAddr;

pub mod attach;
mod batch;
pub mod clock;
pub mod hint;
pub mod netlink;
pub mod pin;
pub mod reconcile;

pub use attach::{AttachMode, Attached};
pub use pin::{DEFAULT_PIN_ROOT, PinDir};
pub use reconcile::AttachmentStatus;

/// The compiled eBPF object, embedded at build time (blocksmtp/build.rs).
/// A binary built with `AYA_BUILD_SKIP=1` (for `cargo check`/clippy) carries an empty
/// stand-in: say so rather than fail parsing it.
fn object_built() -> anyhow::Result<()> {
    if EBPF_OBJECT.is_empty() {
        anyhow::bail!("this blocksmtp was built with AYA_BUILD_SKIP=1 and holds no eBPF object: rebuild it after `cargo xtask setup` (or use --mode iptables)");
    }
    Ok(())
}

pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blocksmtp"));

/// The benchmark's baseline: one XDP hash lookup, nothing else (blocksmtp-ebpf/src/bin/baseline.rs).
#[cfg(feature = "bench")]
pub static BASELINE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline"));

/// The benchmark's other prefix-ban design: per-length hash maps (blocksmtp-ebpf/src/bin/hash.rs).
#[cfg(feature = "bench")]
pub static HASH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hash"));

/// What the programs enforce.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Protected TCP destination ports (≤ 8).
    pub ports: Vec<u16>,
    /// Only packets to these destinations are dropped (one per family at most).
    pub mailer_ips: Vec<IpAddr>,
    /// IPv6 sources are banned per prefix of this length.
    pub v6_prefix: u8,
    /// Report rare events (a ban's first dropped packet) through aya-log (`--debug 3`).
    pub log_events: bool,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self { ports: vec![25], mailer_ips: Vec::new(), v6_prefix: 64, log_events: false }
    }
}

impl DataplaneConfig {
    pub fn to_kernel(&self) -> anyhow::Result<Config> {
        if self.ports.is_empty() {
            bail!("no port to protect");
        }
        if self.ports.len() > blocksmtp_common::MAX_PORTS {
            bail!("at most {} ports can be protected, {} given", blocksmtp_common::MAX_PORTS, self.ports.len());
        }
        if self.v6_prefix == 0 || self.v6_prefix > 128 {
            bail!("--v6-prefix must be 1..=128, not {}", self.v6_prefix);
        }
        let mut cfg = Config::new(&self.ports, self.v6_prefix);
        let (mut v4, mut v6) = (0, 0);
        for ip in &self.mailer_ips {
            match ip {
                IpAddr::V4(a) => {
                    v4 += 1;
                    cfg = cfg.with_mailer_v4(a.octets());
                }
                IpAddr::V6(a) => {
                    v6 += 1;
                    cfg = cfg.with_mailer_v6(a.octets());
                }
            }
        }
        if v4 > 1 || v6 > 1 {
            bail!("--mailer-ip: at most one IPv4 and one IPv6 address");
        }
        if self.log_events {
            cfg.flags |= blocksmtp_common::CONFIG_LOG;
        }
        Ok(cfg)
    }
}

/// Per-verdict packet counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub by_verdict: Vec<(&'static str, u64)>,
    pub inspected: u64,
    pub passed: u64,
    pub dropped: u64,
    pub allow_listed: u64,
}

impl Stats {
    pub fn count(&self, v: Verdict) -> u64 {
        self.by_verdict.get(v as usize).map_or(0, |(_, n)| *n)
    }
}

/// A ban as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBan {
    pub source: SourceAddr,
    pub expires_boot_ns: u64,
    pub dropped: u64,
    pub manual: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum BanKey {
    V4(BanKeyV4Ord),
    V6([u8; 16]),
    /// A prefix ban: network and length, in `BANNET_V4` / `BANNET_V6` (`BANNET_V6L` past /48).
    Net4([u8; 4], u8),
    Net6([u8; 16], u8),
}

impl BanKey {
    /// Index into `Dataplane::entries`: one per map (2 and up: prefix bans).
    const fn family(&self) -> usize {
        match self {
            BanKey::V4(_) => 0,
            BanKey::V6(_) => 1,
            BanKey::Net4(..) => 2,
            BanKey::Net6(_, len) if *len <= V6_SHORT_MAX => 3,
            BanKey::Net6(..) => 4,
        }
    }
}

/// Config bits that say what the maps hold (set from their contents, not from the
/// configuration): kept across a reconfiguration and over a pinned load until read.
const HELD_FLAGS: u8 = CONFIG_ALLOW_V4 | CONFIG_ALLOW_V6 | CONFIG_BANNET_V4 | CONFIG_BANNET_V6 | CONFIG_BANNET_V6L;

/// Which hint map a prefix ban's bits are in (an index into `Dataplane::hints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HintMap {
    /// `BANNET_HINT24`: IPv4, and IPv6 up to /48.
    Short,
    /// `BANNET_HINT6L`: IPv6 longer than /48.
    Long,
    /// `BANNET_HINT4L`: IPv4 longer than /24.
    LongV4,
}

/// The hint bits a prefix ban on `net` sets (see `hint`); for the benchmark's other design too.
pub fn hint_block(net: &IpNet) -> hint::Block {
    match net.trunc() {
        IpNet::V4(n) => hint::Block::v4(n.network().octets(), n.prefix_len()),
        IpNet::V6(n) => hint::Block::v6(n.network().octets(), n.prefix_len()),
    }
}

/// The hint bits a prefix ban sets, and in which map; none for an address ban.
fn hint_block_of(key: &BanKey) -> Option<(HintMap, hint::Block)> {
    match *key {
        BanKey::Net4(a, len) if len <= V4_SHORT_MAX => Some((HintMap::Short, hint::Block::v4(a, len))),
        BanKey::Net4(a, len) => Some((HintMap::LongV4, hint::Block::v4_long(a, len))),
        BanKey::Net6(a, len) if len <= V6_SHORT_MAX => Some((HintMap::Short, hint::Block::v6(a, len))),
        BanKey::Net6(a, len) => Some((HintMap::Long, hint::Block::v6_long(a, len))),
        _ => None,
    }
}

/// A prefix ban's value carries its length (the trie answers with the longest match).
fn len_of(v: &BanValue) -> u8 {
    (v.flags >> BAN_FLAG_LEN_SHIFT) as u8
}

/// BanKeyV4 with an order, for the expiry heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BanKeyV4Ord([u8; 4]);

/// A hint map in the kernel, and its mirror: prefix bans per block of hint bits, and the
/// bitmap as written.
struct HintState {
    map: Array<MapData, u64>,
    mirror: hint::Hint,
    name: &'static str,
}

pub struct Dataplane {
    ebpf: Ebpf,
    config: Config,
    bans_v4: HashMap<MapData, BanKeyV4, BanValue>,
    bans_v6: HashMap<MapData, BanKeyV6, BanValue>,
    allow_v4: LpmTrie<MapData, [u8; 4], AllowValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowValue>,
    bannet_v4: LpmTrie<MapData, [u8; 4], BanValue>,
    bannet_v6: LpmTrie<MapData, [u8; 16], BanValue>,
    /// IPv6 prefix bans longer than /48 (`BANNET_V6L`).
    bannet_v6l: LpmTrie<MapData, [u8; 16], BanValue>,
    /// The three hint maps, by `HintMap`.
    hints: [HintState; 3],
    /// IPv4 prefix bans longer than /24 that also count their /24's block in
    /// `BANNET_HINT24`: programs of earlier builds read that bit for them (and walk
    /// `BANNET_V4` as this build's do). From a pinned load until this build's programs
    /// run on every link (`attach`), then `None`; `None` from the start unpinned.
    v4_compat: Option<HashSet<([u8; 4], u8)>>,
    /// IPv6 prefix bans longer than /48 that pins of a build before the split hold in
    /// `BANNET_V6`, with their drop counts when found: copied into `BANNET_V6L` at load,
    /// deleted from `BANNET_V6` once this build's programs run on every link (`attach`).
    /// Until then they count as `BANNET_V6` entries (its config bit, its hint bits).
    legacy_v6: Vec<([u8; 16], u8, u64)>,
    stats: PerCpuArray<MapData, u64>,
    config_map: Array<MapData, Config>,
    /// (expiry, key) for every ban set or found, one heap per family so an IPv4 entry
    /// costs 16 bytes; entries may be stale (a ban extended or lifted since), so a sweep
    /// re-checks the map before deleting.
    expiry_v4: BinaryHeap<Reverse<(u64, [u8; 4])>>,
    expiry_v6: BinaryHeap<Reverse<(u64, [u8; 16])>>,
    expiry_net: BinaryHeap<Reverse<(u64, BanKey)>>,
    pins: Option<PinDir>,
    /// Every interface asked for, attached or not (see `reconcile`).
    ifaces: Vec<reconcile::Attachment>,
    /// Entries in BANS_V4 / BANS_V6 / BANNET_V4 / BANNET_V6 / BANNET_V6L (expired ones
    /// until swept), kept as they change so counting costs nothing at a million bans.
    entries: [usize; 5],
    /// Pinned maps were found and reused at load.
    pub restored: bool,
    /// The task forwarding the programs' aya-log records into our log.
    log_task: Option<tokio::task::JoinHandle<()>>,
}

/// aya-log's records from the programs, re-logged at debug level under our own target
/// (the daemon shows them at `--debug 3`, the level that turns them on).
struct ForwardLog;

impl log::Log for ForwardLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        log::debug!(target: "blocksmtp::dataplane::ebpf", "dataplane: {}", record.args());
    }

    fn flush(&self) {}
}

/// Read the programs' log ring buffer in a task of the running tokio runtime (aya-log
/// 0.3 leaves the polling to us). Without a runtime (tests, tools) nothing reads it:
/// the program's reservations then fail and it logs nothing.
fn start_log_task(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let logger = match aya_log::EbpfLogger::init_with_logger(ebpf, ForwardLog) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("the dataplane's log events cannot be read: {e}");
            return None;
        }
    };
    let _guard = handle.enter();
    // SAFETY: the fd is the logger's ring buffer map, owned by the logger, which the
    // AsyncFd owns until the task ends: it stays open and the same.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("the dataplane's log events cannot be read: {e}");
            return None;
        }
    };
    Some(handle.spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    log::warn!("reading the dataplane's log events: {e}");
                    return;
                }
            }
        }
    }))
}

impl Dataplane {
    /// Load the programs with fresh, unpinned maps (tests, benchmarks, replay tools).
    pub fn load_unpinned(cfg: &DataplaneConfig) -> anyhow::Result<Self> {
        attach::check_kernel()?;
        object_built()?;
        let ebpf = EbpfLoader::new().load(EBPF_OBJECT).context("loading the eBPF object")?;
        let mut dp = Self::finish_load(ebpf, cfg, None, false)?;
        // Tests and benchmarks run both programs (BPF_PROG_TEST_RUN) without attaching.
        dp.load_programs()?;
        Ok(dp)
    }

    /// Load with maps pinned under `pins`, reusing pinned maps of the same layout
    /// (their bans survive) and refusing mismatched ones.
    pub fn load_pinned(cfg: &DataplaneConfig, pins: PinDir) -> anyhow::Result<Self> {
        // Before the verifier can fail on an old kernel with something obscure.
        attach::check_kernel()?;
        object_built()?;
        pins.create()?;
        let restored = pin::validate_pinned(&pins)?;
        let load = || -> anyhow::Result<Self> {
            let mut loader = EbpfLoader::new();
            let paths: Vec<(&str, PathBuf)> = map_names::ALL.iter().map(|n| (*n, pins.map(n))).collect();
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
            let ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object with pinned maps")?;
            Self::finish_load(ebpf, cfg, Some(pins.clone()), restored)
        };
        load().inspect_err(|_| {
            // A first start that failed leaves nothing behind; earlier bans stay pinned.
            if !restored {
                let _ = pins.remove_all();
            }
        })
    }

    fn finish_load(mut ebpf: Ebpf, cfg: &DataplaneConfig, pins: Option<PinDir>, restored: bool) -> anyhow::Result<Self> {
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T> {
            let map = ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
            T::try_from(map).with_context(|| format!("map {name}"))
        }
        let mut config = cfg.to_kernel()?;
        let mut config_map: Array<MapData, Config> = take(&mut ebpf, map_names::CONFIG)?;
        let previous = config_map.get(&0, 0).ok().filter(|c| c.v6_prefix_len != 0);
        // Until the maps are read, keep the pinned config's word on which of them hold
        // entries: the programs still attached (an earlier run's) read this config too,
        // and a bit cleared meanwhile would have them skip a trie that holds bans.
        if let Some(prev) = previous {
            config.flags |= prev.flags & HELD_FLAGS;
        }
        let mut dp = Self {
            bans_v4: take(&mut ebpf, map_names::BANS_V4)?,
            bans_v6: take(&mut ebpf, map_names::BANS_V6)?,
            allow_v4: take(&mut ebpf, map_names::ALLOW_V4)?,
            allow_v6: take(&mut ebpf, map_names::ALLOW_V6)?,
            bannet_v4: take(&mut ebpf, map_names::BANNET_V4)?,
            bannet_v6: take(&mut ebpf, map_names::BANNET_V6)?,
            bannet_v6l: take(&mut ebpf, map_names::BANNET_V6_LONG)?,
            hints: [
                HintState { map: take(&mut ebpf, map_names::BANNET_HINT)?, mirror: hint::Hint::default(), name: map_names::BANNET_HINT },
                HintState { map: take(&mut ebpf, map_names::BANNET_HINT_LONG)?, mirror: hint::Hint::long(), name: map_names::BANNET_HINT_LONG },
                HintState {
                    map: take(&mut ebpf, map_names::BANNET_HINT_V4_LONG)?,
                    mirror: hint::Hint::v4_long(),
                    name: map_names::BANNET_HINT_V4_LONG,
                },
            ],
            v4_compat: pins.is_some().then(HashSet::new),
            legacy_v6: Vec::new(),
            stats: take(&mut ebpf, map_names::STATS)?,
            config_map: {
                config_map.set(0, config, 0).context("writing the config map")?;
                config_map
            },
            ebpf,
            config,
            expiry_v4: BinaryHeap::new(),
            expiry_v6: BinaryHeap::new(),
            expiry_net: BinaryHeap::new(),
            pins,
            ifaces: Vec::new(),
            entries: [0; 5],
            restored,
            log_task: None,
        };
        // The programs are loaded (verified) by `attach`, each when first attached.
        dp.log_task = start_log_task(&mut dp.ebpf);
        if let Some(prev) = previous
            && prev.v6_prefix_len != config.v6_prefix_len
        {
            dp.rekey_v6(prev.v6_prefix_len)?;
        }
        dp.split_legacy_v6()?;
        dp.rebuild_expiry_index()?;
        Ok(dp)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Apply a new configuration (SIGHUP); IPv6 bans are re-keyed if the prefix changed.
    pub fn reconfigure(&mut self, cfg: &DataplaneConfig) -> anyhow::Result<()> {
        let mut new = cfg.to_kernel()?;
        new.flags |= self.config.flags & HELD_FLAGS;
        let old_len = self.config.v6_prefix_len;
        self.config_map.set(0, new, 0).context("writing the config map")?;
        self.config = new;
        if old_len != new.v6_prefix_len {
            self.rekey_v6(old_len)?;
            self.rebuild_expiry_index()?;
        }
        Ok(())
    }

    /// Attach to each interface (see `attach::attach`). The interfaces are remembered:
    /// `reconcile` re-attaches them when the kernel loses an attachment.
    pub fn attach(&mut self, interfaces: &[String], mode: AttachMode) -> anyhow::Result<Vec<(String, Attached)>> {
        let links_dir = self.pins.as_ref().map(|p| p.links());
        let mut out = Vec::new();
        for iface in interfaces {
            let held = attach::attach(&mut self.ebpf, iface, mode, links_dir.as_deref())?;
            log::info!("{iface}: attached as {} ({})", held.how, held.why);
            out.push((iface.clone(), held.how));
            self.ifaces.retain(|a| &a.iface != iface);
            self.ifaces.push(reconcile::Attachment::new(iface, mode, held));
        }
        // Pinned links on interfaces no longer asked for would keep enforcing silently.
        if let Some(dir) = &links_dir {
            for (iface, how) in attach::pinned_interfaces(dir) {
                if !interfaces.contains(&iface) {
                    log::info!("{iface}: detaching the {how} attachment of an earlier run (interface not configured now)");
                    attach::detach_pinned(dir, &iface)?;
                }
            }
        }
        // The links now run this build's programs: what only an earlier release's programs
        // read goes (the long IPv6 prefix bans' copies in BANNET_V6, the long IPv4 ones'
        // /24 bits, retired maps).
        self.finish_split_v6()?;
        self.finish_v4_compat()?;
        if let Some(pins) = &self.pins {
            for name in pins.remove_retired()? {
                log::info!("unpinned {name}, a map of an earlier release (its data is rebuilt in this one's maps)");
            }
        }
        Ok(out)
    }

    /// The interfaces attached now, and how.
    pub fn attachments(&self) -> Vec<(String, Attached)> {
        self.ifaces.iter().filter_map(|a| Some((a.iface.clone(), a.attached()?))).collect()
    }

    /// Detach and, unless `keep_bans`, remove every pin (maps and links).
    /// With `keep_bans`, pinned programs keep enforcing the pinned bans until the next start.
    pub fn shutdown(mut self, keep_bans: bool) -> anyhow::Result<()> {
        let ifaces = std::mem::take(&mut self.ifaces);
        let links_dir = self.pins.as_ref().map(|p| p.links());
        if keep_bans && self.pins.is_some() {
            // Links stay pinned, tc filters stay in place with their records.
            return Ok(());
        }
        let mut first_err = None;
        for a in ifaces {
            if let Some(held) = a.held
                && let Err(e) = held.detach(links_dir.as_deref(), &a.iface)
            {
                log::error!("{}: detaching: {e:#}", a.iface);
                first_err.get_or_insert(e);
            }
        }
        if let (Some(pins), false) = (&self.pins, keep_bans) {
            pins.remove_all()?;
        }
        first_err.map_or(Ok(()), Err)
    }

    // ---- bans ---------------------------------------------------------------------

    fn key_of(&self, source: &SourceAddr) -> anyhow::Result<BanKey> {
        match source.net() {
            IpNet::V4(n) if n.prefix_len() == 32 => Ok(BanKey::V4(BanKeyV4Ord(n.addr().octets()))),
            IpNet::V4(n) => Ok(BanKey::Net4(n.network().octets(), n.prefix_len())),
            // Wider than the per-source unit: a prefix ban in the trie.
            IpNet::V6(n) if n.prefix_len() < self.config.v6_prefix_len => Ok(BanKey::Net6(n.network().octets(), n.prefix_len())),
            IpNet::V6(n) => Ok(BanKey::V6(v6_key(&n.network().octets(), &self.config.v6_mask).prefix)),
        }
    }

    fn source_of(&self, key: &BanKey) -> SourceAddr {
        match key {
            BanKey::V4(k) => SourceAddr::from_ip(IpAddr::from(k.0), 128),
            BanKey::V6(p) => SourceAddr::from_ip(IpAddr::V6(Ipv6Addr::from(*p)), self.config.v6_prefix_len),
            BanKey::Net4(a, len) => SourceAddr::prefix_of(IpAddr::from(*a), *len, 128),
            BanKey::Net6(a, len) => SourceAddr::prefix_of(IpAddr::V6(Ipv6Addr::from(*a)), 32, *len),
        }
    }

    fn get(&self, key: &BanKey) -> anyhow::Result<Option<BanValue>> {
        let r = match key {
            BanKey::V4(k) => self.bans_v4.get(&BanKeyV4 { addr: k.0 }, 0),
            BanKey::V6(p) => self.bans_v6.get(&BanKeyV6 { prefix: *p }, 0),
            // A trie lookup finds the longest entry covering the key: it must be this one.
            BanKey::Net4(a, len) => self.bannet_v4.get(&Key::new(u32::from(*len), *a), 0).and_then(|v| {
                if len_of(&v) == *len { Ok(v) } else { Err(MapError::KeyNotFound) }
            }),
            BanKey::Net6(a, len) => self.trie6(*len).get(&Key::new(u32::from(*len), *a), 0).and_then(|v| {
                if len_of(&v) == *len { Ok(v) } else { Err(MapError::KeyNotFound) }
            }),
        };
        match r {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn put(&mut self, key: &BanKey, mut value: BanValue) -> Result<(), MapError> {
        match key {
            BanKey::V4(k) => self.bans_v4.insert(BanKeyV4 { addr: k.0 }, value, 0),
            BanKey::V6(p) => self.bans_v6.insert(BanKeyV6 { prefix: *p }, value, 0),
            BanKey::Net4(a, len) => {
                value.flags = (value.flags & 0xff) | (u32::from(*len) << BAN_FLAG_LEN_SHIFT);
                self.bannet_v4.insert(&Key::new(u32::from(*len), *a), value, 0)
            }
            BanKey::Net6(a, len) => {
                value.flags = (value.flags & 0xff) | (u32::from(*len) << BAN_FLAG_LEN_SHIFT);
                self.trie6_mut(*len).insert(&Key::new(u32::from(*len), *a), value, 0)
            }
        }
    }

    /// The trie of an IPv6 prefix ban of length `len`.
    fn trie6(&self, len: u8) -> &LpmTrie<MapData, [u8; 16], BanValue> {
        if len <= V6_SHORT_MAX { &self.bannet_v6 } else { &self.bannet_v6l }
    }

    fn trie6_mut(&mut self, len: u8) -> &mut LpmTrie<MapData, [u8; 16], BanValue> {
        if len <= V6_SHORT_MAX { &mut self.bannet_v6 } else { &mut self.bannet_v6l }
    }

    /// Count a prefix ban's hint bits (`add`) or uncount them; write changed words.
    fn hint(&mut self, key: &BanKey, add: bool) -> anyhow::Result<()> {
        let Some((map, block)) = hint_block_of(key) else { return Ok(()) };
        // While older programs may run, a long IPv4 ban holds their /24 bit too: up with
        // its own, down after it (counted once per ban).
        let compat = match (*key, map, self.v4_compat.as_mut()) {
            (BanKey::Net4(a, len), HintMap::LongV4, Some(set)) => {
                let counted = if add { set.insert((a, len)) } else { set.remove(&(a, len)) };
                counted.then(|| hint::Block::v4(a, len))
            }
            _ => None,
        };
        if add && let Some(b) = compat {
            self.hint_block(HintMap::Short, b, true)?;
        }
        self.hint_block(map, block, add)?;
        if !add && let Some(b) = compat {
            self.hint_block(HintMap::Short, b, false)?;
        }
        Ok(())
    }

    /// This build's programs run on every link: the long IPv4 bans' /24 bits in
    /// `BANNET_HINT24` go (each word written once), unless a ban up to /24 needs them.
    fn finish_v4_compat(&mut self) -> anyhow::Result<()> {
        let Some(compat) = self.v4_compat.take() else { return Ok(()) };
        let mut changed = std::collections::BTreeMap::new();
        for (a, len) in &compat {
            changed.extend(self.hints[HintMap::Short as usize].mirror.remove(hint::Block::v4(*a, *len)));
        }
        let words: Vec<(u32, u64)> = changed.into_iter().collect();
        if let Err(e) = self.write_hint(HintMap::Short, &words) {
            // Bits left set only cost walks; the mirror says they are clear, so the next
            // write of a word or the next start settles it.
            log::warn!("clearing the long IPv4 prefix bans' /24 hint bits: {e:#}");
        }
        Ok(())
    }

    fn hint_block(&mut self, map: HintMap, block: hint::Block, add: bool) -> anyhow::Result<()> {
        let mirror = &mut self.hints[map as usize].mirror;
        let changed = if add { mirror.add(block) } else { mirror.remove(block) };
        self.write_hint(map, &changed)
    }

    /// Write hint words: each once, in batches when there are many (a /8 is 1,024 words).
    fn write_hint(&mut self, map: HintMap, words: &[(u32, u64)]) -> anyhow::Result<()> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let HintState { map: hint_map, name, .. } = &mut self.hints[map as usize];
        if words.len() > 4 {
            let (keys, values): (Vec<u32>, Vec<u64>) = words.iter().copied().unzip();
            let fd = aya::maps::IterableMap::map(hint_map).fd().as_fd().as_raw_fd();
            match batch::update(fd, &keys, &values) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(anyhow::Error::new(e).context(format!("writing the prefix-ban hint map {name} (BPF_MAP_UPDATE_BATCH)"))),
            }
        }
        for (w, v) in words {
            hint_map.set(*w, *v, 0).with_context(|| format!("writing the prefix-ban hint map {name}"))?;
        }
        Ok(())
    }

    /// The hints' user-side memory (all three maps): blocks counted, bytes of bitmap chunks in use.
    pub fn hint_footprint(&self) -> (usize, usize) {
        self.hints.iter().map(|h| h.mirror.footprint()).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// Whether a kernel hint bit for `ip` is set: a clean packet from `ip` pays a
    /// prefix-ban trie lookup (tests and benchmarks; the kernel map is the truth).
    pub fn hint_set_for(&self, ip: IpAddr) -> anyhow::Result<bool> {
        let (short, long) = self.hint_bits_for(ip)?;
        Ok(short || long)
    }

    /// The kernel's hint bits for `ip`: `BANNET_HINT24`'s (a walk of `BANNET_V4` or
    /// `BANNET_V6`), and the long class's: `BANNET_HINT4L`'s (a walk of `BANNET_V4`),
    /// `BANNET_HINT6L`'s (a walk of `BANNET_V6L`).
    pub fn hint_bits_for(&self, ip: IpAddr) -> anyhow::Result<(bool, bool)> {
        let read = |map: HintMap, bit: u32| -> anyhow::Result<bool> {
            let h = &self.hints[map as usize];
            let w = h.map.get(&(bit / 64), 0).with_context(|| format!("reading the prefix-ban hint map {}", h.name))?;
            Ok(w & 1 << (bit % 64) != 0)
        };
        match ip {
            IpAddr::V4(a) => Ok((
                read(HintMap::Short, blocksmtp_common::hint_bit_v4(u32::from(a) >> 8))?,
                read(HintMap::LongV4, blocksmtp_common::hint_bit_v4l(u32::from(a) >> 4))?,
            )),
            IpAddr::V6(a) => Ok((
                read(HintMap::Short, blocksmtp_common::hint_bit_v6((u128::from(a) >> 80) as u64))?,
                read(HintMap::Long, blocksmtp_common::hint_bit_v6l((u128::from(a) >> 72) as u64))?,
            )),
        }
    }

    /// Tell the program whether a prefix-ban trie is worth a lookup.
    fn sync_prefix_flags(&mut self) -> anyhow::Result<()> {
        let mut cfg = self.config;
        cfg.flags &= !(CONFIG_BANNET_V4 | CONFIG_BANNET_V6 | CONFIG_BANNET_V6L);
        if self.entries[2] > 0 {
            cfg.flags |= CONFIG_BANNET_V4;
        }
        if self.entries[3] > 0 {
            cfg.flags |= CONFIG_BANNET_V6;
        }
        if self.entries[4] > 0 {
            cfg.flags |= CONFIG_BANNET_V6L;
        }
        if cfg != self.config {
            self.config_map.set(0, cfg, 0).context("writing the config map")?;
            self.config = cfg;
        }
        Ok(())
    }

    fn delete(&mut self, key: &BanKey) -> anyhow::Result<bool> {
        let r = match key {
            BanKey::V4(k) => self.bans_v4.remove(&BanKeyV4 { addr: k.0 }),
            BanKey::V6(p) => self.bans_v6.remove(&BanKeyV6 { prefix: *p }),
            BanKey::Net4(a, len) => self.bannet_v4.remove(&Key::new(u32::from(*len), *a)),
            BanKey::Net6(a, len) => self.trie6_mut(*len).remove(&Key::new(u32::from(*len), *a)),
        };
        match r {
            Ok(()) => {
                self.entries[key.family()] = self.entries[key.family()].saturating_sub(1);
                if key.family() >= 2 {
                    self.hint(key, false)?;
                    // Lifted during an upgrade: the copy the old programs read goes too.
                    if let BanKey::Net6(a, len) = *key
                        && let Some(i) = self.legacy_v6.iter().position(|l| (l.0, l.1) == (a, len))
                    {
                        self.remove_legacy_v6(a, len)?;
                        self.legacy_v6.swap_remove(i);
                    }
                    self.sync_prefix_flags()?;
                }
                Ok(true)
            }
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ban `source` for `duration` from now; an existing later expiry is kept.
    /// Returns the ban's end on CLOCK_BOOTTIME.
    pub fn ban(&mut self, source: &SourceAddr, duration: Duration, manual: bool) -> anyhow::Result<u64> {
        let key = self.key_of(source)?;
        let until = clock::boottime_ns().saturating_add(duration.as_nanos().min(u64::MAX as u128) as u64);
        let mut value = BanValue::new(until, if manual { BAN_FLAG_MANUAL } else { 0 });
        let old = self.get(&key)?;
        if let Some(old) = old {
            value.expires_ns = value.expires_ns.max(old.expires_ns);
            value.dropped = old.dropped;
            value.flags |= old.flags;
        }
        // The hint goes up before the entry exists (and down after it is gone), so the
        // program never skips a live prefix ban.
        let new_prefix = old.is_none() && key.family() >= 2;
        if new_prefix {
            self.hint(&key, true)?;
        }
        let put = self.put(&key, value);
        if put.is_err() && new_prefix {
            self.hint(&key, false)?;
        }
        match put {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                let swept = self.sweep_expired()?.len();
                if new_prefix {
                    self.hint(&key, true)?;
                }
                let retry = self.put(&key, value);
                if retry.is_err() && new_prefix {
                    self.hint(&key, false)?;
                }
                retry.map_err(|_| {
                    let (map, cap) = match key {
                        BanKey::V4(_) => (map_names::BANS_V4, blocksmtp_common::MAX_BANS),
                        BanKey::V6(_) => (map_names::BANS_V6, blocksmtp_common::MAX_BANS),
                        BanKey::Net4(..) => (map_names::BANNET_V4, blocksmtp_common::MAX_PREFIX_BANS),
                        BanKey::Net6(_, len) if len <= V6_SHORT_MAX => (map_names::BANNET_V6, blocksmtp_common::MAX_PREFIX_BANS),
                        BanKey::Net6(..) => (map_names::BANNET_V6_LONG, blocksmtp_common::MAX_PREFIX_BANS),
                    };
                    anyhow!("ban map {map} is full ({cap} entries, {swept} expired swept): ban of {source} refused")
                })?;
            }
            Err(e) => return Err(e).with_context(|| format!("banning {source}")),
        }
        if old.is_none() {
            self.entries[key.family()] += 1;
            if key.family() >= 2 {
                self.sync_prefix_flags()?;
            }
        }
        self.remember_expiry(value.expires_ns, key);
        Ok(value.expires_ns)
    }

    /// Lift a ban. `Ok(false)` when there was none.
    pub fn unban(&mut self, source: &SourceAddr) -> anyhow::Result<bool> {
        let key = self.key_of(source)?;
        self.delete(&key)
    }

    /// The ban on `source`, if any (expired or not).
    pub fn lookup(&self, source: &SourceAddr) -> anyhow::Result<Option<KernelBan>> {
        let key = self.key_of(source)?;
        Ok(self.get(&key)?.map(|v| self.kernel_ban(key, v)))
    }

    /// Every unexpired ban.
    pub fn list(&self) -> anyhow::Result<Vec<KernelBan>> {
        let now = clock::boottime_ns();
        let mut out = Vec::new();
        for (k, v) in Self::dump(&self.bans_v4)? {
            if v.active_at(now) {
                out.push(self.kernel_ban(BanKey::V4(BanKeyV4Ord(k.addr)), v));
            }
        }
        for (k, v) in Self::dump(&self.bans_v6)? {
            if v.active_at(now) {
                out.push(self.kernel_ban(BanKey::V6(k.prefix), v));
            }
        }
        for (k, v) in self.prefix_bans()? {
            if v.active_at(now) {
                out.push(self.kernel_ban(k, v));
            }
        }
        Ok(out)
    }

    /// Every entry of the prefix-ban tries (few: a walk of their keys).
    fn prefix_bans(&self) -> anyhow::Result<Vec<(BanKey, BanValue)>> {
        let mut out = Vec::new();
        for k in self.bannet_v4.keys() {
            let k = k?;
            let key = BanKey::Net4(k.data(), k.prefix_len() as u8);
            if let Some(v) = self.get(&key)? {
                out.push((key, v));
            }
        }
        // Past /48 only BANNET_V6L's entries count: one in BANNET_V6 is the copy of an
        // upgrade in progress (`legacy_v6`); `get` reads each length's own trie.
        for (k, long) in self.bannet_v6.keys().map(|k| (k, false)).chain(self.bannet_v6l.keys().map(|k| (k, true))) {
            let k = k?;
            let key = BanKey::Net6(k.data(), k.prefix_len() as u8);
            if !long && k.prefix_len() > u32::from(V6_SHORT_MAX) {
                continue;
            }
            if let Some(v) = self.get(&key)? {
                out.push((key, v));
            }
        }
        Ok(out)
    }

    fn kernel_ban(&self, key: BanKey, v: BanValue) -> KernelBan {
        KernelBan {
            source: self.source_of(&key),
            expires_boot_ns: v.expires_ns,
            dropped: v.dropped,
            manual: v.flags & BAN_FLAG_MANUAL != 0,
        }
    }

    /// Delete expired entries (the program already ignores them). Cost: the expired
    /// entries only, not the whole map.
    pub fn sweep_expired(&mut self) -> anyhow::Result<Vec<SourceAddr>> {
        let now = clock::boottime_ns();
        let mut removed = Vec::new();
        loop {
            let key = match (self.expiry_v4.peek(), self.expiry_v6.peek()) {
                (Some(Reverse((t, k))), _) if *t <= now => {
                    let k = BanKey::V4(BanKeyV4Ord(*k));
                    self.expiry_v4.pop();
                    k
                }
                (_, Some(Reverse((t, k)))) if *t <= now => {
                    let k = BanKey::V6(*k);
                    self.expiry_v6.pop();
                    k
                }
                _ => match self.expiry_net.peek() {
                    Some(Reverse((t, k))) if *t <= now => {
                        let k = *k;
                        self.expiry_net.pop();
                        k
                    }
                    _ => break,
                },
            };
            // Re-check: the ban may have been extended (a newer heap entry exists) or lifted.
            if let Some(v) = self.get(&key)?
                && !v.active_at(now)
                && self.delete(&key)?
            {
                removed.push(self.source_of(&key));
            }
        }
        Ok(removed)
    }

    /// Number of bans of each family, prefix bans included (expired ones until swept).
    pub fn counts(&self) -> (usize, usize) {
        let (n4, n6) = self.prefix_counts();
        (self.entries[0] + n4, self.entries[1] + n6)
    }

    /// Number of prefix bans (IPv4, IPv6) of those (an upgrade's copies once).
    pub fn prefix_counts(&self) -> (usize, usize) {
        (self.entries[2], self.entries[3].saturating_sub(self.legacy_v6.len()) + self.entries[4])
    }

    fn remember_expiry(&mut self, expires_ns: u64, key: BanKey) {
        match key {
            BanKey::V4(k) => self.expiry_v4.push(Reverse((expires_ns, k.0))),
            BanKey::V6(p) => self.expiry_v6.push(Reverse((expires_ns, p))),
            k => self.expiry_net.push(Reverse((expires_ns, k))),
        }
    }

    /// Every entry of a ban map: in batches when the kernel can, else one by one.
    fn dump<K: aya::Pod + bytemuck::Pod>(map: &HashMap<MapData, K, BanValue>) -> anyhow::Result<Vec<(K, BanValue)>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let fd = aya::maps::IterableMap::map(map).fd().as_fd().as_raw_fd();
        match batch::dump::<K, BanValue>(fd) {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(map.iter().collect::<Result<_, _>>()?),
            Err(e) => Err(anyhow::Error::new(e).context("BPF_MAP_LOOKUP_BATCH")),
        }
    }

    fn rebuild_expiry_index(&mut self) -> anyhow::Result<()> {
        let v4: Vec<_> = Self::dump(&self.bans_v4)?.into_iter().map(|(k, v)| Reverse((v.expires_ns, k.addr))).collect();
        let v6: Vec<_> = Self::dump(&self.bans_v6)?.into_iter().map(|(k, v)| Reverse((v.expires_ns, k.prefix))).collect();
        let nets: Vec<_> = self.prefix_bans()?.into_iter().map(|(k, v)| Reverse((v.expires_ns, k))).collect();
        let mut entries = [v4.len(), v6.len(), 0, self.legacy_v6.len(), 0];
        for Reverse((_, k)) in &nets {
            entries[k.family()] += 1;
        }
        self.entries = entries;
        self.expiry_v4 = BinaryHeap::from(v4);
        self.expiry_v6 = BinaryHeap::from(v6);
        self.expiry_net = BinaryHeap::from(nets);
        // The hint bitmap from the tries' contents, written where it differs from what the
        // kernel map holds: at load, a new map (zeroed: beside the tries of a release with
        // the older hint, too) or the pinned one of an earlier run, which covers at least
        // the tries' bans as each bit went up before its ban and down after it (a bit a
        // crash left behind costs a clean packet a lookup until its word is next written);
        // on a reconfiguration, the mirror as it was. Reading 4 MiB back instead would cost
        // ~100 ms of start-up (a batch lookup copies element by element).
        // All hints alike; an upgrade's copies in BANNET_V6 keep their bits there, and
        // while older programs may run the long IPv4 bans keep their /24 bits.
        let mut new = [hint::Hint::default(), hint::Hint::long(), hint::Hint::v4_long()];
        if let Some(compat) = self.v4_compat.as_mut() {
            compat.clear();
        }
        for Reverse((_, k)) in self.expiry_net.iter() {
            let Some((map, b)) = hint_block_of(k) else { continue };
            new[map as usize].add(b);
            if let (HintMap::LongV4, BanKey::Net4(a, len), Some(compat)) = (map, *k, self.v4_compat.as_mut()) {
                compat.insert((a, len));
                new[HintMap::Short as usize].add(hint::Block::v4(a, len));
            }
        }
        for (a, len, _) in &self.legacy_v6 {
            new[HintMap::Short as usize].add(hint::Block::v6(*a, *len));
        }
        for (map, mirror) in [HintMap::Short, HintMap::Long, HintMap::LongV4].into_iter().zip(new) {
            let changed = mirror.diff(&self.hints[map as usize].mirror);
            self.hints[map as usize].mirror = mirror;
            self.write_hint(map, &changed)?;
        }
        self.sync_prefix_flags()
    }

    /// Pins of a build before the split hold IPv6 prefix bans longer than /48 in
    /// `BANNET_V6`, the only trie its programs read. Copy each into `BANNET_V6L` (its
    /// hint bit up first) and remember it (`legacy_v6`); it leaves `BANNET_V6` only once
    /// this build's programs run on every link (`finish_split_v6`), and either program
    /// enforces either copy until then. A crash at any point leaves a ban in one trie or
    /// both, each with its hint bit: the next start copies (or merges) it again.
    fn split_legacy_v6(&mut self) -> anyhow::Result<()> {
        let mut found = Vec::new();
        for k in self.bannet_v6.keys() {
            let k = k?;
            if k.prefix_len() > u32::from(V6_SHORT_MAX)
                && let Ok(v) = self.bannet_v6.get(&k, 0)
                && u32::from(len_of(&v)) == k.prefix_len()
            {
                found.push((k.data(), k.prefix_len() as u8, v));
            }
        }
        for (a, len, v) in found {
            let key = BanKey::Net6(a, len);
            match self.get(&key)? {
                // Copied by an earlier start that stopped before its programs were attached.
                Some(cur) if cur.expires_ns >= v.expires_ns => {}
                Some(cur) => self.put(&key, BanValue { expires_ns: v.expires_ns, ..cur })?,
                None => {
                    // The mirror is rebuilt from the tries next: set the kernel's bits directly.
                    let words = hint::Block::v6_long(a, len)
                        .words()
                        .map(|(w, bits)| Ok((w, bits | self.hints[HintMap::Long as usize].map.get(&w, 0)?)))
                        .collect::<Result<Vec<_>, MapError>>()
                        .context("reading the prefix-ban hint map")?;
                    self.write_hint(HintMap::Long, &words)?;
                    self.put(&key, v).with_context(|| format!("copying the prefix ban {}/{len} into {}", Ipv6Addr::from(a), map_names::BANNET_V6_LONG))?;
                }
            }
            self.legacy_v6.push((a, len, v.dropped));
        }
        if !self.legacy_v6.is_empty() {
            log::info!(
                "{} IPv6 prefix bans longer than /{V6_SHORT_MAX} copied from {} to {}; the old copies go once this build's programs are attached",
                self.legacy_v6.len(),
                map_names::BANNET_V6,
                map_names::BANNET_V6_LONG
            );
        }
        Ok(())
    }

    /// This build's programs run on every link: delete the upgrade's copies from
    /// `BANNET_V6` (packets the old programs dropped under one meanwhile are added to its
    /// ban's count), then their hint bits there.
    fn finish_split_v6(&mut self) -> anyhow::Result<()> {
        let n = self.legacy_v6.len();
        // One at a time, forgotten only once gone: after an error the rest stay tracked
        // (an unban still deletes both copies).
        while let Some(&(a, len, dropped_then)) = self.legacy_v6.last() {
            let key = BanKey::Net6(a, len);
            if let Ok(old) = self.bannet_v6.get(&Key::new(u32::from(len), a), 0)
                && len_of(&old) == len
                && old.dropped > dropped_then
                && let Some(mut cur) = self.get(&key)?
            {
                cur.dropped += old.dropped - dropped_then;
                self.put(&key, cur)?;
            }
            self.remove_legacy_v6(a, len)?;
            self.legacy_v6.pop();
        }
        if n > 0 {
            self.sync_prefix_flags()?;
            log::info!("{n} IPv6 prefix bans longer than /{V6_SHORT_MAX} moved to {}", map_names::BANNET_V6_LONG);
        }
        Ok(())
    }

    /// An upgrade's copy out of `BANNET_V6`, then its bit of `BANNET_HINT24`.
    fn remove_legacy_v6(&mut self, a: [u8; 16], len: u8) -> anyhow::Result<()> {
        match self.bannet_v6.remove(&Key::new(u32::from(len), a)) {
            Ok(()) => {}
            Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("deleting {}/{len} from {}", Ipv6Addr::from(a), map_names::BANNET_V6))),
        }
        self.entries[3] = self.entries[3].saturating_sub(1);
        self.hint_block(HintMap::Short, hint::Block::v6(a, len), false)
    }

    /// The pinned IPv6 bans were keyed for another prefix length: re-key them.
    fn rekey_v6(&mut self, old_len: u8) -> anyhow::Result<()> {
        let entries: Vec<(BanKeyV6, BanValue)> = self.bans_v6.iter().collect::<Result<_, _>>()?;
        if entries.is_empty() {
            return Ok(());
        }
        let new_len = self.config.v6_prefix_len;
        log::warn!("--v6-prefix changed from /{old_len} to /{new_len}: re-keying {} IPv6 bans", entries.len());
        if new_len > old_len {
            log::warn!("each /{old_len} ban now covers only its first /{new_len}");
        }
        for (k, _) in &entries {
            self.bans_v6.remove(k)?;
        }
        for (k, v) in entries {
            let nk = v6_key(&k.prefix, &self.config.v6_mask);
            let merged = match self.bans_v6.get(&nk, 0) {
                Ok(old) if old.expires_ns > v.expires_ns => old,
                _ => v,
            };
            self.bans_v6.insert(nk, merged, 0)?;
        }
        Ok(())
    }

    // ---- allow-list ---------------------------------------------------------------

    /// Replace the allow-list tries with `nets`.
    pub fn set_allow_list(&mut self, nets: &[IpNet]) -> anyhow::Result<()> {
        let old4: Vec<Key<[u8; 4]>> = self.allow_v4.keys().collect::<Result<_, _>>()?;
        let old6: Vec<Key<[u8; 16]>> = self.allow_v6.keys().collect::<Result<_, _>>()?;
        let mut want4 = Vec::new();
        let mut want6 = Vec::new();
        for net in nets {
            match net.trunc() {
                IpNet::V4(n) => want4.push(Key::new(n.prefix_len() as u32, n.network().octets())),
                IpNet::V6(n) => want6.push(Key::new(n.prefix_len() as u32, n.network().octets())),
            }
        }
        // Insert the new entries first so no allowed source is unprotected mid-update.
        for k in &want4 {
            self.allow_v4.insert(k, 1, 0).context("allow-list (IPv4) is full or rejected an entry")?;
        }
        for k in &want6 {
            self.allow_v6.insert(k, 1, 0).context("allow-list (IPv6) is full or rejected an entry")?;
        }
        let same4 = |a: &Key<[u8; 4]>, b: &Key<[u8; 4]>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
        let same6 = |a: &Key<[u8; 16]>, b: &Key<[u8; 16]>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
        for k in old4.iter().filter(|k| !want4.iter().any(|w| same4(w, k))) {
            self.allow_v4.remove(k)?;
        }
        for k in old6.iter().filter(|k| !want6.iter().any(|w| same6(w, k))) {
            self.allow_v6.remove(k)?;
        }
        // Tell the program whether a trie is worth a lookup.
        let mut cfg = self.config;
        cfg.flags &= !(CONFIG_ALLOW_V4 | CONFIG_ALLOW_V6);
        if !want4.is_empty() {
            cfg.flags |= CONFIG_ALLOW_V4;
        }
        if !want6.is_empty() {
            cfg.flags |= CONFIG_ALLOW_V6;
        }
        if cfg != self.config {
            self.config_map.set(0, cfg, 0).context("writing the config map")?;
            self.config = cfg;
        }
        Ok(())
    }

    // ---- statistics and test runs -------------------------------------------------

    pub fn stats(&self) -> anyhow::Result<Stats> {
        let mut s = Stats::default();
        for v in Verdict::ALL {
            let n: u64 = self.stats.get(&(v as u32), 0)?.iter().sum();
            s.by_verdict.push((v.name(), n));
            s.inspected += n;
        }
        s.dropped = s.count(Verdict::Drop);
        s.passed = s.inspected - s.dropped;
        s.allow_listed = s.count(Verdict::PassAllowListed);
        debug_assert_eq!(s.by_verdict.len(), STAT_COUNT as usize);
        Ok(s)
    }

    /// Load both programs into the kernel now (for [`Self::test_run`]; attaching loads
    /// only the program it attaches).
    pub fn load_programs(&mut self) -> anyhow::Result<()> {
        attach::load(&mut self.ebpf)
    }

    /// Run a program on `packet` through BPF_PROG_TEST_RUN, `repeat` times (after
    /// [`Self::load_programs`]). Returns the program's return value and the
    /// kernel-measured time per run.
    pub fn test_run(&self, program: Program, packet: &[u8], repeat: u32) -> Result<(u32, Duration), ProgramError> {
        let opts = TestRunOptions { data_in: Some(packet), repeat, ..Default::default() };
        let r = match program {
            Program::Xdp => {
                let p: &Xdp = self.ebpf.program(program_names::XDP).expect("XDP program").try_into()?;
                p.test_run(opts)?
            }
            Program::Tc => {
                let p: &SchedClassifier = self.ebpf.program(program_names::TC).expect("TC program").try_into()?;
                p.test_run(opts)?
            }
        };
        Ok((r.return_value, r.duration))
    }
}

impl Drop for Dataplane {
    /// Links detach when their last fd closes; a tc filter (pre-6.6) is the kernel's until
    /// removed, so one with no record under a pin dir (an unpinned dataplane) goes here.
    fn drop(&mut self) {
        if let Some(t) = self.log_task.take() {
            t.abort();
        }
        for a in self.ifaces.drain(..) {
            if let Some(h) = a.held
                && matches!(h.hold, attach::Hold::Filter(_, None))
            {
                let _ = h.detach(None, &a.iface);
            }
        }
    }
}

impl Dataplane {
    /// The kernel's id of a loaded program (for `bpftool prog dump xlated id N`).
    pub fn program_id(&self, program: Program) -> anyhow::Result<u32> {
        let info = match program {
            Program::Xdp => <&Xdp>::try_from(self.ebpf.program(program_names::XDP).expect("XDP program"))?.info()?,
            Program::Tc => {
                <&SchedClassifier>::try_from(self.ebpf.program(program_names::TC).expect("TC program"))?.info()?
            }
        };
        Ok(info.id())
    }
}

/// Which of the two programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Xdp,
    Tc,
}

impl KernelBan {
    /// The wall-clock end of the ban.
    pub fn expires_at(&self) -> SystemTime {
        clock::boottime_to_wall(self.expires_boot_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The programs resolve nothing against the kernel's BTF (no CO-RE relocation), so
    /// the shipped unit may hide /sys/kernel/btf/vmlinux from the daemon (aya 0.14
    /// parses it on every load otherwise; packaging/blocksmtp.service). A program that
    /// starts reading kernel structures fails here first.
    #[test]
    fn the_programs_need_no_kernel_btf() {
        if EBPF_OBJECT.is_empty() {
            eprintln!("SKIP: built with AYA_BUILD_SKIP=1, no eBPF object");
            return;
        }
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
        assert!(!obj.programs.is_empty(), "no programs in the embedded object");
        assert!(!obj.has_btf_relocations(), "the eBPF object has CO-RE relocations: the unit's InaccessiblePaths=/sys/kernel/btf/vmlinux would break them");
    }

    /// IPv6 prefix bans go to their trie and hint by length: up to /48 the short class
    /// (`BANNET_V6`, `BANNET_HINT24`), longer ones the long class (`BANNET_V6L`, the bits
    /// of their /56s in `BANNET_HINT6L`); IPv4 keeps one trie, but bans up to /24 hint per
    /// /24 in `BANNET_HINT24`, longer ones per /28 in `BANNET_HINT4L`.
    #[test]
    fn prefix_bans_route_by_length() {
        let a: [u8; 16] = "2001:db8:bad:100::".parse::<Ipv6Addr>().unwrap().octets();
        for (len, family, map) in [(16, 3, HintMap::Short), (48, 3, HintMap::Short), (49, 4, HintMap::Long), (56, 4, HintMap::Long), (127, 4, HintMap::Long)] {
            let k = BanKey::Net6(a, len);
            assert_eq!(k.family(), family, "/{len}");
            assert_eq!(hint_block_of(&k).map(|(m, _)| m), Some(map), "/{len}");
        }
        let bit = blocksmtp_common::hint_bit_v6l((0x2001_0db8_0bad << 8) | 0x01);
        assert_eq!(hint_block_of(&BanKey::Net6(a, 56)).unwrap().1, hint::Block { start: bit, log2: 0 });
        assert_eq!(hint_block_of(&BanKey::Net6(a, 64)).unwrap().1, hint::Block { start: bit, log2: 0 }, "its /56's bit");
        assert_eq!(hint_block_of(&BanKey::Net6(a, 49)).unwrap().1.log2, 7, "a /49 is 128 /56s");
        assert_eq!(hint_block_of(&BanKey::Net6(a, 48)).unwrap().1, hint::Block::v6(a, 48));
        assert_eq!(hint_block_of(&BanKey::Net6(a, 40)).unwrap().1.log2, 8, "a short ban is still a block");
        assert_eq!((BanKey::Net4([192, 0, 2, 0], 24).family(), BanKey::Net4([192, 0, 2, 64], 31).family()), (2, 2));
        for (len, map) in [(0, HintMap::Short), (16, HintMap::Short), (24, HintMap::Short), (25, HintMap::LongV4), (28, HintMap::LongV4), (31, HintMap::LongV4)] {
            assert_eq!(hint_block_of(&BanKey::Net4([192, 0, 2, 64], len)).map(|(m, _)| m), Some(map), "/{len}");
        }
        assert_eq!(hint_block_of(&BanKey::Net4([192, 0, 2, 64], 30)).unwrap().1, hint::Block::v4_long([192, 0, 2, 64], 28), "its /28's bit");
        assert_eq!(hint_block_of(&BanKey::Net4([192, 0, 2, 0], 24)).unwrap().1, hint::Block::v4([192, 0, 2, 0], 24));
        assert!(hint_block_of(&BanKey::V6(a)).is_none() && hint_block_of(&BanKey::V4(BanKeyV4Ord([192, 0, 2, 1]))).is_none());
    }
}
