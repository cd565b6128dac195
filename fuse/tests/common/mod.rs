//! Helpers of the integration tests: a `cffs-server dev` cluster on free loopback ports,
//! stopped when dropped, and the `cffs` binary run against it.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `cffs-server dev`, stopped (SIGTERM, which stops its processes) when dropped.
pub struct Dev {
    child: Child,
    pub endpoints: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM, then up to 10 s for the process to end (SIGKILL after); true if it ended.
fn stop(child: &mut Child) -> bool {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    false
}

pub fn server_exe() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_cffs")).with_file_name("cffs-server");
    assert!(exe.exists(), "{} is missing: `cargo test --workspace` builds it", exe.display());
    exe
}

/// Six free ports in a row, for `dev --base-port`, below the ephemeral range (32768 and up,
/// where an outgoing connection may take a port between our check and the server's bind).
/// Each call starts its search past the previous call's ports, so that tests running at once
/// in one process do not pick the same free ports before either binds them.
fn free_base_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = 10_000 + ((std::process::id() % 1_000) as u16 * 7 + call * 70) % 21_000;
    for base in (start..32_000).chain(10_000..start).step_by(7) {
        let free = (0..6).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no six free ports in a row");
}

pub fn start_dev() -> Dev {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_base_port();
    let mut child = Command::new(server_exe())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cffs-server dev");
    let stdout = child.stdout.take().expect("dev's stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("Ctrl-C stops") => break,
            Some(Ok(line)) => seen.push(line),
            _ => panic!("cffs-server dev ended before it was ready: {seen:?}"),
        }
    }
    assert!(seen.iter().any(|l| l.contains("2 block groups")), "{seen:?}");
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");
    Dev { child, endpoints, _dir: dir }
}

pub fn cffs(dev: &Dev, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    // Standard input from a file: the child reads it at its own pace.
    let mut input = tempfile::tempfile().expect("a file for standard input");
    input.write_all(stdin.unwrap_or_default()).expect("write standard input");
    std::io::Seek::rewind(&mut input).expect("rewind");
    Command::new(env!("CARGO_BIN_EXE_cffs"))
        .args(args)
        .env("CFFS_ENDPOINTS", &dev.endpoints)
        .stdin(Stdio::from(input))
        .output()
        .expect("run cffs")
}

/// Why this machine cannot mount, if it cannot.
pub fn cannot_mount() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Some("mounting needs root".into());
    }
    None
}

#[allow(unused_macros)] // not every test file mounts
macro_rules! skip_unless_mountable {
    () => {
        if let Some(why) = $crate::common::cannot_mount() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A `cffs mount` process, unmounted (SIGTERM) when dropped.
pub struct Mount {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn start(dev: &Dev) -> Mount {
        let dir = tempfile::tempdir().expect("mount point");
        let child = Command::new(env!("CARGO_BIN_EXE_cffs"))
            .arg("mount")
            .arg(dir.path())
            .env("CFFS_ENDPOINTS", &dev.endpoints)
            .stderr(Stdio::null())
            .spawn()
            .expect("start cffs mount");
        let deadline = Instant::now() + Duration::from_secs(20);
        let target = dir.path().to_str().expect("utf-8 path").to_owned();
        loop {
            let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
            if mounts.lines().any(|line| line.split(' ').nth(1) == Some(&target) && line.contains("fuse")) {
                break;
            }
            assert!(Instant::now() < deadline, "the mount at {target} did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mount { child, dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !stop(&mut self.child) {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}
