//! A server node's configuration: a TOML file (`--config`), overridden by flags and `CFFS_*`
//! environment variables (clap reads those), parsed first into `RawConfig` (every field
//! optional, unknown keys refused), then validated for the node's role into a typed
//! `MetaSettings` or `BlockSettings` with errors that name the setting and where to set it.
//!
//! Only what is a node's own lives here (its id, addresses, directories, its share of the
//! maintenance work). Cluster-wide settings live in the cluster: the lease settings are stored
//! in the replicated state by the first leader and a replica whose file disagrees refuses to
//! start (`metadata/settings.rs`); the block size is in the cluster map, set by the first block
//! group.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::block::gc::GcConfig;
use crate::block::scrub::ScrubConfig;
use crate::constants::{LEASE_DRIFT_PPM_DEFAULT, LEASE_DURATION_DEFAULT};
use crate::metadata::leases::LeaseConfig;

/// Bounds on the lease settings (ms, ppm): what a replica accepts from any source.
pub const LEASE_MS_RANGE: std::ops::RangeInclusive<u64> = 50..=60_000;
pub const LEASE_DRIFT_PPM_MAX: u32 = 500_000;
/// Defaults of a replica's share of the maintenance work (`--help` gives them too).
pub const SCRUB_BYTES_PER_SEC_DEFAULT: u64 = 32 * 1024 * 1024;
pub const SCRUB_PAUSE_SECS_DEFAULT: u64 = 60;
pub const GC_GRACE_SECS_DEFAULT: u64 = 3600;
pub const GC_INTERVAL_SECS_DEFAULT: u64 = 300;

/// Everything a node's file, flags or environment may set; `None` = not set there.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub id: Option<u64>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub data_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub block_dir: Option<PathBuf>,
    /// Replica id (a TOML key, so a string) → HOST:PORT.
    pub peers: Option<BTreeMap<String, String>>,
    pub log_format: Option<String>,
    #[serde(default)]
    pub leases: RawLeases,
    #[serde(default)]
    pub scrub: RawScrub,
    #[serde(default)]
    pub gc: RawGc,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLeases {
    pub duration_ms: Option<u64>,
    pub drift_ppm: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawScrub {
    pub bytes_per_sec: Option<u64>,
    pub pause_secs: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawGc {
    pub grace_secs: Option<u64>,
    pub interval_secs: Option<u64>,
}

impl RawConfig {
    pub fn parse(text: &str) -> anyhow::Result<RawConfig> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    pub fn load(path: &Path) -> anyhow::Result<RawConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
        RawConfig::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// `self` (flags and environment) over `file`: a setting given here wins.
    pub fn over(self, file: RawConfig) -> RawConfig {
        RawConfig {
            id: self.id.or(file.id),
            listen: self.listen.or(file.listen),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            data_listen: self.data_listen.or(file.data_listen),
            data_dir: self.data_dir.or(file.data_dir),
            block_dir: self.block_dir.or(file.block_dir),
            peers: self.peers.or(file.peers),
            log_format: self.log_format.or(file.log_format),
            leases: RawLeases {
                duration_ms: self.leases.duration_ms.or(file.leases.duration_ms),
                drift_ppm: self.leases.drift_ppm.or(file.leases.drift_ppm),
            },
            scrub: RawScrub {
                bytes_per_sec: self.scrub.bytes_per_sec.or(file.scrub.bytes_per_sec),
                pause_secs: self.scrub.pause_secs.or(file.scrub.pause_secs),
            },
            gc: RawGc {
                grace_secs: self.gc.grace_secs.or(file.gc.grace_secs),
                interval_secs: self.gc.interval_secs.or(file.gc.interval_secs),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A metadata replica's validated settings.
#[derive(Debug, Clone)]
pub struct MetaSettings {
    pub id: u64,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// Where the block data port listens (with `block_dir` only); port 0 is any free port,
    /// which the server announces in `BlockStatus`.
    pub data_listen: SocketAddr,
    pub peers: BTreeMap<u64, String>,
    pub data_dir: PathBuf,
    pub block_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    pub leases: LeaseConfig,
    pub scrub: ScrubConfig,
    pub gc: GcConfig,
}

/// A block server's validated settings.
#[derive(Debug, Clone)]
pub struct BlockSettings {
    pub id: u64,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// Where the block data port listens; port 0 is any free port (announced in
    /// `BlockStatus`).
    pub data_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
}

/// The data port's address: as set, else the gRPC address's IP with any free port.
fn data_listen(set: Option<&str>, listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    match set {
        Some(text) => address(text, "data_listen"),
        None => Ok(SocketAddr::new(listen.ip(), 0)),
    }
}

/// "`key` (--flag, CFFS_VAR)": where a setting can be given.
fn source(key: &str) -> String {
    let flag = key.replace(['_', '.'], "-");
    let var = format!("CFFS_{}", key.replace('.', "_").to_uppercase());
    format!("`{key}` (--{flag}, {var})")
}

fn required<T>(value: Option<T>, key: &str) -> anyhow::Result<T> {
    value.ok_or_else(|| anyhow::anyhow!("{} is not set", source(key)))
}

fn address(value: &str, key: &str) -> anyhow::Result<SocketAddr> {
    value.parse().map_err(|_| anyhow::anyhow!("{}: '{value}' is not IP:PORT (e.g. 0.0.0.0:7100)", source(key)))
}

fn node_id(value: Option<u64>, what: &str) -> anyhow::Result<u64> {
    match required(value, "id")? {
        0 => bail!("{}: {what} ids start at 1", source("id")),
        id => Ok(id),
    }
}

fn log_format(value: Option<&str>) -> anyhow::Result<LogFormat> {
    match value.unwrap_or("text") {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => bail!("{}: '{other}' is not text or json", source("log_format")),
    }
}

/// Parses `ID=HOST:PORT,ID=HOST:PORT,...` (the `--peers` flag) into the file's form.
pub fn peers_from_list(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("'{part}' is not ID=HOST:PORT"))?;
        if peers.insert(id.trim().to_string(), addr.trim().to_string()).is_some() {
            return Err(format!("replica id {} is listed twice", id.trim()));
        }
    }
    Ok(peers)
}

fn peers(raw: BTreeMap<String, String>) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for (id, addr) in raw {
        let parsed: u64 =
            id.trim().parse().map_err(|_| anyhow::anyhow!("{}: '{id}' is not a replica id", source("peers")))?;
        if parsed == 0 {
            bail!("{}: replica ids start at 1", source("peers"));
        }
        let (host, port) = addr.rsplit_once(':').unwrap_or(("", ""));
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!("{}: replica {parsed}'s address '{addr}' is not HOST:PORT", source("peers"));
        }
        if peers.insert(parsed, addr).is_some() {
            bail!("{}: replica id {parsed} is listed twice", source("peers"));
        }
    }
    if peers.is_empty() {
        bail!("{} lists no replica", source("peers"));
    }
    Ok(peers)
}

impl RawConfig {
    pub fn into_meta(self) -> anyhow::Result<MetaSettings> {
        let id = node_id(self.id, "replica")?;
        let peers = peers(required(self.peers, "peers")?)?;
        if !peers.contains_key(&id) {
            bail!("{} does not list this replica's id {id}", source("peers"));
        }
        let lease_ms = self.leases.duration_ms.unwrap_or(LEASE_DURATION_DEFAULT.as_millis() as u64);
        if !LEASE_MS_RANGE.contains(&lease_ms) {
            bail!(
                "{}: {lease_ms} is outside {}..={}",
                source("leases.duration_ms"),
                LEASE_MS_RANGE.start(),
                LEASE_MS_RANGE.end()
            );
        }
        let drift_ppm = self.leases.drift_ppm.unwrap_or(LEASE_DRIFT_PPM_DEFAULT);
        if drift_ppm > LEASE_DRIFT_PPM_MAX {
            bail!("{}: {drift_ppm} is over {LEASE_DRIFT_PPM_MAX}", source("leases.drift_ppm"));
        }
        let scrub_rate = self.scrub.bytes_per_sec.unwrap_or(SCRUB_BYTES_PER_SEC_DEFAULT);
        if scrub_rate == 0 {
            bail!("{}: the scrubber needs a rate above 0", source("scrub.bytes_per_sec"));
        }
        if self.data_listen.is_some() && self.block_dir.is_none() {
            bail!("{} is a block server's setting: give block_dir too, or drop it", source("data_listen"));
        }
        let listen = address(&required(self.listen, "listen")?, "listen")?;
        Ok(MetaSettings {
            id,
            listen,
            metrics_listen: self.metrics_listen.as_deref().map(|a| address(a, "metrics_listen")).transpose()?,
            data_listen: data_listen(self.data_listen.as_deref(), listen)?,
            peers,
            data_dir: required(self.data_dir, "data_dir")?,
            block_dir: self.block_dir,
            log_format: log_format(self.log_format.as_deref())?,
            leases: LeaseConfig { duration: Duration::from_millis(lease_ms), drift_ppm },
            scrub: ScrubConfig {
                bytes_per_sec: scrub_rate,
                pass_pause: Duration::from_secs(self.scrub.pause_secs.unwrap_or(SCRUB_PAUSE_SECS_DEFAULT).max(1)),
            },
            gc: GcConfig {
                grace: Duration::from_secs(self.gc.grace_secs.unwrap_or(GC_GRACE_SECS_DEFAULT)),
                interval: Duration::from_secs(self.gc.interval_secs.unwrap_or(GC_INTERVAL_SECS_DEFAULT).max(1)),
            },
        })
    }

    pub fn into_block(self) -> anyhow::Result<BlockSettings> {
        // Settings of a metadata replica given to a block server are a mistake in the file
        // (a copied config, a wrong role): refused rather than ignored.
        let meta_only = [
            ("peers", self.peers.is_some()),
            ("block_dir", self.block_dir.is_some()),
            ("leases", self.leases != RawLeases::default()),
            ("scrub", self.scrub != RawScrub::default()),
            ("gc", self.gc != RawGc::default()),
        ];
        if let Some((key, _)) = meta_only.iter().find(|(_, set)| *set) {
            bail!("`{key}` is a metadata replica's setting; a block server (cffs-server block) does not take it");
        }
        let listen = address(&required(self.listen, "listen")?, "listen")?;
        Ok(BlockSettings {
            id: node_id(self.id, "block server")?,
            listen,
            metrics_listen: self.metrics_listen.as_deref().map(|a| address(a, "metrics_listen")).transpose()?,
            data_listen: data_listen(self.data_listen.as_deref(), listen)?,
            data_dir: required(self.data_dir, "data_dir")?,
            log_format: log_format(self.log_format.as_deref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE1: &str = r#"
id = 1
listen = "0.0.0.0:7100"
metrics_listen = "0.0.0.0:9100"
data_dir = "/data/meta"
block_dir = "/data/blocks"

[peers]
1 = "cffs1:7100"
2 = "cffs2:7100"
3 = "cffs3:7100"

[leases]
duration_ms = 2000

[gc]
grace_secs = 600
"#;

    #[test]
    fn a_file_validates_into_settings_with_defaults_filled() {
        let settings = RawConfig::parse(NODE1).unwrap().into_meta().unwrap();
        assert_eq!(settings.id, 1);
        assert_eq!(settings.listen, "0.0.0.0:7100".parse().unwrap());
        assert_eq!(settings.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(settings.peers[&3], "cffs3:7100");
        assert_eq!(settings.leases.duration, Duration::from_millis(2000));
        assert_eq!(settings.leases.drift_ppm, LEASE_DRIFT_PPM_DEFAULT);
        assert_eq!(settings.gc.grace, Duration::from_secs(600));
        assert_eq!(settings.gc.interval, Duration::from_secs(300));
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(settings.data_listen, "0.0.0.0:0".parse().unwrap(), "the data port defaults to any free port");
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file = RawConfig::parse(NODE1).unwrap();
        let flags = RawConfig {
            listen: Some("127.0.0.1:7200".into()),
            leases: RawLeases { duration_ms: Some(500), drift_ppm: None },
            ..Default::default()
        };
        let settings = flags.over(file).into_meta().unwrap();
        assert_eq!(settings.listen, "127.0.0.1:7200".parse().unwrap());
        assert_eq!(settings.leases.duration, Duration::from_millis(500));
        assert_eq!(settings.data_dir, PathBuf::from("/data/meta"), "what the flags leave alone stays the file's");
    }

    #[test]
    fn bad_input_is_refused_naming_the_setting() {
        let error = |text: &str| RawConfig::parse(text).and_then(RawConfig::into_meta).unwrap_err().to_string();
        assert!(error("idd = 1").contains("unknown field `idd`"), "{}", error("idd = 1"));
        assert!(error("id = 'one'").contains("invalid type"));
        let base = "listen = \"0.0.0.0:1\"\ndata_dir = \"/d\"\n[peers]\n1 = \"h:1\"\n";
        assert!(error(base).contains("`id` (--id, CFFS_ID) is not set"), "{}", error(base));
        assert!(error(&format!("id = 2\n{base}")).contains("does not list this replica's id 2"));
        assert!(error(&format!("id = 0\n{base}")).contains("ids start at 1"));
        let with = |extra: &str| error(&format!("id = 1\n{extra}\n{base}"));
        assert!(with("metrics_listen = \"nohost\"").contains("not IP:PORT"));
        assert!(with("log_format = \"xml\"").contains("not text or json"));
        assert!(with("data_listen = \"0.0.0.0:7200\"").contains("give block_dir too"));
        assert!(with("block_dir = \"/b\"\ndata_listen = \"7200\"").contains("`data_listen` (--data-listen"));
        let bad_peer = "id = 1\nlisten = \"0.0.0.0:1\"\ndata_dir = \"/d\"\n[peers]\n1 = \"h\"\n";
        assert!(error(bad_peer).contains("is not HOST:PORT"), "{}", error(bad_peer));
        let leases = format!("id = 1\n{base}[leases]\nduration_ms = 10\n");
        assert!(error(&leases).contains("leases.duration_ms"), "{}", error(&leases));
    }

    #[test]
    fn a_block_server_refuses_a_replica_s_settings() {
        let error = RawConfig::parse(NODE1).unwrap().into_block().unwrap_err().to_string();
        assert!(error.contains("`peers` is a metadata replica's setting"), "{error}");
        let block = "id = 4\nlisten = \"0.0.0.0:7100\"\ndata_dir = \"/data/blocks\"\n";
        let settings = RawConfig::parse(block).unwrap().into_block().unwrap();
        assert_eq!((settings.id, settings.metrics_listen), (4, None));
        let fixed = RawConfig::parse(&format!("{block}data_listen = \"10.0.0.4:7300\"\n")).unwrap().into_block();
        assert_eq!(fixed.unwrap().data_listen, "10.0.0.4:7300".parse().unwrap());
    }

    #[test]
    fn the_peers_flag_parses_into_the_file_form() {
        let peers = peers_from_list("1=127.0.0.1:7101,2=h:2").unwrap();
        assert_eq!(peers["2"], "h:2");
        assert!(peers_from_list("1=a:1,1=b:2").is_err());
        assert!(peers_from_list("1").is_err());
    }
}
