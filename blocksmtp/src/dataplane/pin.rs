//! Where the dataplane lives in bpffs, and the check that a pinned map left by an
//! earlier run has the layout this build expects before it is reused.
use std::{
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapInfo, MapType};
use blocksmtp_common::{
    AllowValue, BanKeyV4, BanKeyV6, BanValue, Config, HINT_LONG_WORDS, HINT_V4L_WORDS, HINT_WORDS, LAYOUT_VERSION, MAX_ALLOW, MAX_BANS,
    MAX_PREFIX_BANS, STAT_COUNT, map_names,
};

/// Default bpffs root for blocksmtp's pins.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/blocksmtp";

/// `<root>/v<LAYOUT_VERSION>/{maps,links}`: the version in the path keeps an older
/// layout's pins apart instead of reusing them.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn maps(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.versioned().join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Create the directories; the root must be on a bpffs. Hosts without systemd
    /// often have none at /sys/fs/bpf: it is mounted there when missing.
    pub fn create(&self) -> anyhow::Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if parent == Path::new("/sys/fs/bpf") && !is_bpffs(parent)? {
            mount_bpffs(parent)?;
        }
        if !is_bpffs(parent)? && !is_bpffs(&self.root).unwrap_or(false) {
            bail!(
                "{} is not on a BPF filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`, \
                 or `cargo xtask setup`) or pass another --pin-dir",
                parent.display()
            );
        }
        for dir in [self.maps(), self.links()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Remove every pin of this layout version (maps and links), then the empty dirs.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        for dir in [self.maps(), self.links()] {
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for e in entries.flatten() {
                        // Directories are records of our tc filters (see `attach`).
                        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                            std::fs::remove_dir(e.path())
                        } else {
                            std::fs::remove_file(e.path())
                        };
                        r.with_context(|| format!("unpinning {}", e.path().display()))?;
                    }
                    let _ = std::fs::remove_dir(&dir);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            }
        }
        let _ = std::fs::remove_dir(self.versioned());
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }
}

impl PinDir {
    /// Unpin the maps of earlier releases this build no longer uses (`map_names::RETIRED`),
    /// once this build's programs are attached: a program still running keeps its own
    /// reference, and the file is all that is removed. Returns the names removed.
    pub fn remove_retired(&self) -> anyhow::Result<Vec<&'static str>> {
        let mut removed = Vec::new();
        for name in map_names::RETIRED {
            let path = self.map(name);
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(name),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("unpinning the retired map {}", path.display())),
            }
        }
        Ok(removed)
    }
}

fn mount_bpffs(at: &Path) -> anyhow::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    let fstype = c"bpf";
    let r = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("mounting a BPF filesystem at {}", at.display()));
    }
    log::info!("mounted a BPF filesystem at {}", at.display());
    Ok(())
}

pub fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(e).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// The layout each map must have, as this build's eBPF object declares it.
pub struct MapLayout {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub fn expected_layouts() -> [MapLayout; 12] {
    use std::mem::size_of;
    [
        MapLayout {
            name: map_names::CONFIG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<Config>() as u32,
            max_entries: 1,
        },
        MapLayout {
            name: map_names::BANS_V4,
            map_type: MapType::Hash,
            key_size: size_of::<BanKeyV4>() as u32,
            value_size: size_of::<BanValue>() as u32,
            max_entries: MAX_BANS,
        },
        MapLayout {
            name: map_names::BANS_V6,
            map_type: MapType::Hash,
            key_size: size_of::<BanKeyV6>() as u32,
            value_size: size_of::<BanValue>() as u32,
            max_entries: MAX_BANS,
        },
        MapLayout {
            name: map_names::ALLOW_V4,
            map_type: MapType::LpmTrie,
            key_size: 4 + 4,
            value_size: size_of::<AllowValue>() as u32,
            max_entries: MAX_ALLOW,
        },
        MapLayout {
            name: map_names::ALLOW_V6,
            map_type: MapType::LpmTrie,
            key_size: 4 + 16,
            value_size: size_of::<AllowValue>() as u32,
            max_entries: MAX_ALLOW,
        },
        MapLayout {
            name: map_names::STATS,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: STAT_COUNT,
        },
        MapLayout {
            name: map_names::BANNET_V4,
            map_type: MapType::LpmTrie,
            key_size: 4 + 4,
            value_size: size_of::<BanValue>() as u32,
            max_entries: MAX_PREFIX_BANS,
        },
        MapLayout {
            name: map_names::BANNET_V6,
            map_type: MapType::LpmTrie,
            key_size: 4 + 16,
            value_size: size_of::<BanValue>() as u32,
            max_entries: MAX_PREFIX_BANS,
        },
        MapLayout {
            name: map_names::BANNET_HINT,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: HINT_WORDS,
        },
        MapLayout {
            name: map_names::BANNET_V6_LONG,
            map_type: MapType::LpmTrie,
            key_size: 4 + 16,
            value_size: size_of::<BanValue>() as u32,
            max_entries: MAX_PREFIX_BANS,
        },
        MapLayout {
            name: map_names::BANNET_HINT_LONG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: HINT_LONG_WORDS,
        },
        MapLayout {
            name: map_names::BANNET_HINT_V4_LONG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: HINT_V4L_WORDS,
        },
    ]
}

/// Compare a map (pinned, or just created) with the layout this build expects.
pub fn check_layout(info: &MapInfo, want: &MapLayout, what: &str) -> anyhow::Result<()> {
    let got_type = info.map_type().ok();
    let mut diffs = Vec::new();
    if got_type != Some(want.map_type) {
        diffs.push(format!("type {got_type:?}, expected {:?}", want.map_type));
    }
    for (field, got, exp) in [
        ("key size", info.key_size(), want.key_size),
        ("value size", info.value_size(), want.value_size),
        ("max entries", info.max_entries(), want.max_entries),
    ] {
        if got != exp {
            diffs.push(format!("{field} {got}, expected {exp}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        bail!("{what} does not match this blocksmtp's layout: {}", diffs.join("; "))
    }
}

/// Refuse to start on pinned maps of another layout. Returns whether pins exist.
pub fn validate_pinned(dir: &PinDir) -> anyhow::Result<bool> {
    let mut found = false;
    for want in expected_layouts() {
        let path = dir.map(want.name);
        if !path.exists() {
            continue;
        }
        found = true;
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        check_layout(&info, &want, &format!("pinned map {}", path.display())).with_context(|| {
            format!(
                "refusing to reuse it. It was left by an incompatible blocksmtp build; remove {} \
                 (this drops the bans it holds) or run the build that made it",
                dir.versioned().display()
            )
        })?;
    }
    Ok(found)
}
