//! `cffs put` and `cffs get` as a user runs them, against `cffs-server dev` (six processes:
//! three replicas that are also block group 1, three block servers as group 2): from and to
//! files and standard input and output, the summary line and `--quiet`, and the errors for a
//! missing local or remote file.
#![cfg(not(madsim))]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `cffs-server dev`, stopped (SIGTERM, which stops its processes) when dropped.
struct Dev {
    child: Child,
    endpoints: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

fn server_exe() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_cffs")).with_file_name("cffs-server");
    assert!(exe.exists(), "{} is missing: `cargo test --workspace` builds it", exe.display());
    exe
}

/// Six free ports in a row, for `dev --base-port`, below the ephemeral range (32768 and up,
/// where an outgoing connection may take a port between our check and the server's bind).
fn free_base_port() -> u16 {
    for base in (10_000 + (std::process::id() % 2_000) as u16 * 7..32_000).step_by(7) {
        let free = (0..6).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no six free ports in a row");
}

fn start_dev() -> Dev {
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

fn cffs(dev: &Dev, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
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

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8).collect()
}

#[test]
fn put_and_get_stream_files_and_standard_streams() {
    let dev = start_dev();
    let local = tempfile::tempdir().expect("temp dir");
    let data = pattern(40 << 20);
    let src = local.path().join("src.bin");
    std::fs::write(&src, &data).expect("write the source");

    // From a file, with the summary on stderr.
    let put = cffs(&dev, &["put", src.to_str().unwrap(), "/big"], None);
    let said = String::from_utf8_lossy(&put.stderr);
    assert!(put.status.success(), "put failed: {said}");
    assert!(said.contains("put 40.00 MiB (41943040 bytes)") && said.contains("/s"), "{said}");
    // To a file.
    let out = local.path().join("out.bin");
    let get = cffs(&dev, &["get", "/big", out.to_str().unwrap()], None);
    assert!(get.status.success(), "get failed: {}", String::from_utf8_lossy(&get.stderr));
    assert!(std::fs::read(&out).expect("read the copy") == data, "the copy differs");
    // From standard input, quietly; to standard output.
    let piped = cffs(&dev, &["put", "--quiet", "-", "/piped"], Some(&data[..5_000_000]));
    assert!(piped.status.success() && piped.stderr.is_empty(), "{}", String::from_utf8_lossy(&piped.stderr));
    let back = cffs(&dev, &["get", "--quiet", "/piped", "-"], None);
    assert!(back.status.success() && back.stdout == data[..5_000_000], "standard output differs");
    let ls = cffs(&dev, &["ls", "-l", "/"], None);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("41943040"), "{}", String::from_utf8_lossy(&ls.stdout));

    // Errors: clear, exit status 1, nothing written.
    let missing = cffs(&dev, &["put", "/no/such/local/file", "/x"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read '/no/such/local/file'"));
    let absent = cffs(&dev, &["get", "/absent", out.to_str().unwrap()], None);
    assert_eq!(absent.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&absent.stderr).contains("No such file or directory"));
    assert!(std::fs::read(&out).expect("read the copy") == data, "a failed get left the local file alone");
    let status = cffs(&dev, &["cluster", "status"], None);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("group 2:") && text.contains("scrubber") && text.contains("collector"), "{text}");
}
