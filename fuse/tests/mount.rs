//! `cffs mount` and `cffs run` with real programs, against `cffs-server dev`: cp -r and
//! diff -r, tar, git, sqlite3, a large file, a seeded random-operation run compared step by
//! step with a local directory (in the spirit of fsx), two mounts seeing each other's
//! closed files and invalidations, the errors, and concurrent `cffs run` read-modify-writes
//! that must lose no update. Each test says it skipped when this machine cannot mount
//! (no /dev/fuse, not root).
#![cfg(not(madsim))]

#[macro_use]
mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};

use common::{start_dev, Mount};

fn sh(dir: &Path, script: &str) -> Output {
    let output = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("run sh");
    assert!(
        output.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn have(program: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().is_ok_and(|o| o.status.success())
}

/// A deterministic byte pattern (a function of seed and offset).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect()
}

#[test]
fn real_programs_work_on_the_mount() {
    skip_unless_mountable!();
    let dev = start_dev();
    let mount = Mount::start(&dev);
    let root = mount.path("");
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("client");

    // cp -r and diff -r of a source tree.
    let copied = mount.path("src");
    sh(&root, &format!("cp -r {} {}", tree.display(), copied.display()));
    sh(&root, &format!("diff -r {} {}", tree.display(), copied.display()));

    // tar c from the mount, tar x into it, diff against the original.
    sh(&root, "tar cf ../mount-test.tar src && mkdir unpacked && tar xf ../mount-test.tar -C unpacked");
    sh(&root, &format!("diff -r {} unpacked/src && rm ../mount-test.tar", tree.display()));

    // A file larger than a block (4 MiB), through the page cache both ways.
    let big = pattern(7, (9 << 20) + 12345);
    std::fs::write(mount.path("big"), &big).expect("write a large file");
    assert!(std::fs::read(mount.path("big")).expect("read it back") == big, "the large file differs");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(mount.path("big")).expect("open");
    file.write_all_at(b"middle", 5 << 20).expect("overwrite a middle range");
    file.set_len(6 << 20).expect("truncate");
    drop(file);
    let mut want = big[..6 << 20].to_vec();
    want[5 << 20..(5 << 20) + 6].copy_from_slice(b"middle");
    assert!(std::fs::read(mount.path("big")).expect("read") == want, "overwrite and truncate");

    // Links, symlinks, renames, modes and times.
    sh(&root, "echo one > a && ln a b && ln -s a c && test \"$(cat c)\" = one && test \"$(stat -c %h a)\" = 2");
    sh(&root, "mv a d && test ! -e a && test \"$(cat b)\" = one && test ! -e c && rm b d c");
    sh(&root, "touch -d '2001-02-03 04:05:06' t && test \"$(stat -c %Y t)\" = 981173106 && chmod 600 t");
    assert_eq!(std::fs::metadata(mount.path("t")).expect("stat").mode() & 0o7777, 0o600);
    sh(&root, "mkdir -p x/y && mv x/y z && test -d z && rmdir z x");

    if have("git") {
        sh(&root, "mkdir repo && cd repo && git init -q . && cp -r ../src . && git add . && \
                   git -c user.email=t@e -c user.name=t commit -qm first && echo more >> src/Cargo.toml && \
                   git -c user.email=t@e -c user.name=t commit -qam second && test \"$(git log --oneline | wc -l)\" = 2 && \
                   git status --porcelain | wc -l | grep -qx 0 && git fsck --no-progress");
    } else {
        eprintln!("git: not installed, skipped");
    }
    if have("sqlite3") {
        let out = sh(
            &root,
            "sqlite3 t.db 'create table t(a integer primary key, b text); \
             insert into t(b) select hex(randomblob(200)) from (with recursive c(x) as (select 1 union all \
             select x + 1 from c where x < 3000) select x from c); update t set b = 1 where a % 2 = 0; \
             pragma integrity_check; select count(*), sum(b = 1) from t;'",
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n3000|1500\n");
    } else {
        eprintln!("sqlite3: not installed, skipped");
    }
}

/// A small seeded generator (xorshift64*): the same operations on every run of a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every file under `dir`: relative path → (kind with size and nlink, then the content or
/// link target; a file's content only with `contents`).
fn snapshot(dir: &Path, contents: bool) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&at).expect("read_dir").map(|e| e.expect("entry")).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path.strip_prefix(dir).expect("under dir").to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    "link".into(),
                    std::fs::read_link(&path).expect("readlink").into_os_string().into_encoded_bytes(),
                ));
            } else if meta.is_dir() {
                out.push((rel, "dir".into(), Vec::new()));
                stack.push(path);
            } else {
                let bytes = if contents { std::fs::read(&path).expect("read") } else { Vec::new() };
                out.push((rel, format!("file size {} nlink {}", meta.len(), meta.nlink()), bytes));
            }
        }
    }
    out.sort();
    out
}

/// One random operation, applied the same way under `root` (the mount or the local
/// directory); returns what it read, or its error kind, for comparison.
fn apply(root: &Path, op: &Op) -> String {
    let p = |name: &str| root.join(name);
    let result: std::io::Result<String> = (|| match op {
        Op::Write { file, offset, data } => {
            let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(p(file))?;
            f.seek(SeekFrom::Start(*offset))?;
            f.write_all(data)?;
            Ok(String::new())
        }
        Op::Truncate { file, size } => {
            std::fs::OpenOptions::new().write(true).open(p(file))?.set_len(*size)?;
            Ok(String::new())
        }
        Op::Read { file, offset, len } => {
            let mut f = std::fs::File::open(p(file))?;
            f.seek(SeekFrom::Start(*offset))?;
            let mut buf = vec![0u8; *len];
            let n = f.read(&mut buf)?;
            Ok(format!("{:x?}", &buf[..n]))
        }
        Op::Rename { from, to } => std::fs::rename(p(from), p(to)).map(|_| String::new()),
        Op::Unlink { file } => std::fs::remove_file(p(file)).map(|_| String::new()),
        Op::Link { from, to } => std::fs::hard_link(p(from), p(to)).map(|_| String::new()),
        Op::Symlink { target, link } => std::os::unix::fs::symlink(target, p(link)).map(|_| String::new()),
        Op::Mkdir { dir } => std::fs::create_dir(p(dir)).map(|_| String::new()),
        Op::Rmdir { dir } => std::fs::remove_dir(p(dir)).map(|_| String::new()),
        Op::Stat { file } => std::fs::symlink_metadata(p(file)).map(|m| format!("{} {}", m.len(), m.nlink())),
    })();
    match result {
        Ok(text) => text,
        Err(error) => format!("error {:?}", error.kind()),
    }
}

#[derive(Debug)]
enum Op {
    Write { file: String, offset: u64, data: Vec<u8> },
    Truncate { file: String, size: u64 },
    Read { file: String, offset: u64, len: usize },
    Rename { from: String, to: String },
    Unlink { file: String },
    Link { from: String, to: String },
    Symlink { target: String, link: String },
    Mkdir { dir: String },
    Rmdir { dir: String },
    Stat { file: String },
}

fn random_op(rng: &mut Rng) -> Op {
    const NAMES: [&str; 6] = ["f0", "f1", "f2", "d0/f3", "d0/f4", "d1/f5"];
    let name = |rng: &mut Rng| NAMES[rng.below(NAMES.len() as u64) as usize].to_string();
    // Offsets up to 10 MiB: small files stay inline, larger ones cross block boundaries.
    let offset = |rng: &mut Rng| match rng.below(3) {
        0 => rng.below(70_000),
        1 => rng.below(10 << 20),
        _ => (4 << 20) - 100 + rng.below(200),
    };
    match rng.below(14) {
        0..=3 => {
            let max = if rng.below(4) == 0 { 300_000 } else { 5_000 };
            let len = 1 + rng.below(max) as usize;
            let seed = rng.next();
            Op::Write { file: name(rng), offset: offset(rng), data: pattern(seed, len) }
        }
        4 => Op::Truncate { file: name(rng), size: offset(rng) },
        5..=7 => Op::Read { file: name(rng), offset: offset(rng), len: 1 + rng.below(70_000) as usize },
        8 => Op::Rename { from: name(rng), to: name(rng) },
        9 => Op::Unlink { file: name(rng) },
        10 => Op::Link { from: name(rng), to: name(rng) },
        11 => Op::Symlink { target: name(rng), link: name(rng) },
        12 => match rng.below(2) {
            0 => Op::Mkdir { dir: format!("d{}", rng.below(2)) },
            _ => Op::Rmdir { dir: format!("d{}", rng.below(2)) },
        },
        _ => Op::Stat { file: name(rng) },
    }
}

#[test]
fn random_operations_match_a_local_directory() {
    skip_unless_mountable!();
    let dev = start_dev();
    let mount = Mount::start(&dev);
    let local = tempfile::tempdir().expect("local directory");
    let seed: u64 = std::env::var("CFFS_FSX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261202);
    let steps: usize = std::env::var("CFFS_FSX_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    let mut rng = Rng(seed | 1);
    for dir in ["d0", "d1"] {
        std::fs::create_dir(mount.path(dir)).expect("mkdir");
        std::fs::create_dir(local.path().join(dir)).expect("mkdir");
    }
    for step in 0..steps {
        let op = random_op(&mut rng);
        let on_mount = apply(mount.path("").as_path(), &op);
        let on_local = apply(local.path(), &op);
        let brief = format!("{op:?}").chars().take(120).collect::<String>();
        assert_eq!(on_mount, on_local, "seed {seed} step {step}: {brief} answered differently");
        // After every step the trees' names, kinds, sizes and link counts; every tenth
        // step (and the last) the bytes of every file too.
        let contents = step % 10 == 9 || step + 1 == steps;
        let (mine, theirs) = (snapshot(&mount.path(""), contents), snapshot(local.path(), contents));
        if mine != theirs {
            let first = mine.iter().zip(&theirs).find(|(a, b)| a != b).map(|(a, b)| (&a.0, &a.1, &b.0, &b.1));
            panic!(
                "seed {seed} step {step}: after {brief} the trees differ (mount, local): {first:?}, {} and {} entries",
                mine.len(),
                theirs.len()
            );
        }
    }
}

#[test]
fn two_mounts_see_each_other_after_close_and_invalidation() {
    skip_unless_mountable!();
    let dev = start_dev();
    let (a, b) = (Mount::start(&dev), Mount::start(&dev));
    std::fs::write(a.path("shared"), b"first version").expect("write on a");
    assert_eq!(std::fs::read(b.path("shared")).expect("read on b"), b"first version");
    // b keeps the file open with its pages cached; a overwrites it and closes: b's next
    // read through the same descriptor sees the new bytes (the lease invalidation dropped
    // b's pages), not the cached ones.
    let held = std::fs::File::open(b.path("shared")).expect("open on b");
    let mut buf = [0u8; 13];
    held.read_exact_at(&mut buf, 0).expect("read on b");
    assert_eq!(&buf, b"first version");
    std::fs::write(a.path("shared"), b"second versio").expect("overwrite on a");
    held.read_exact_at(&mut buf, 0).expect("read on b again");
    assert_eq!(&buf, b"second versio");
    // Namespace changes are seen at once.
    std::fs::create_dir(a.path("dir")).expect("mkdir on a");
    std::fs::rename(a.path("shared"), a.path("dir/moved")).expect("rename on a");
    assert!(!b.path("shared").exists());
    assert_eq!(std::fs::read(b.path("dir/moved")).expect("read moved"), b"second versio");
}

#[test]
fn run_commits_on_success_discards_on_failure_and_explains_errors() {
    skip_unless_mountable!();
    let dev = start_dev();
    let mount = Mount::start(&dev);
    let at = tempfile::tempdir().expect("run's mount point");
    let run = |script: &str| {
        Command::new(env!("CARGO_BIN_EXE_cffs"))
            .args(["run", "--at"])
            .arg(at.path())
            .args(["--", "sh", "-c", script])
            .env("CFFS_ENDPOINTS", &dev.endpoints)
            .current_dir(at.path().parent().expect("parent"))
            .output()
            .expect("run cffs run")
    };
    let dir = at.path().display().to_string();
    let ok = run(&format!("echo kept > {dir}/out && cat {dir}/out"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "kept\n");
    assert_eq!(std::fs::read(mount.path("out")).expect("committed"), b"kept\n");
    let failed = run(&format!("echo lost > {dir}/out && mkdir {dir}/newdir && echo said; exit 4"));
    assert_eq!(failed.status.code(), Some(4), "the command's exit status is passed on");
    assert_eq!(String::from_utf8_lossy(&failed.stdout), "said\n", "the final attempt's output is shown");
    assert_eq!(std::fs::read(mount.path("out")).expect("unchanged"), b"kept\n");
    assert!(!mount.path("newdir").exists(), "a failed run changes nothing");
    // The mount is private to the run: nothing is mounted at --at outside it.
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    assert!(!mounts.contains(&dir), "{dir} is mounted outside the run");

    let no_command = Command::new(env!("CARGO_BIN_EXE_cffs")).arg("run").output().expect("run");
    assert_eq!(no_command.status.code(), Some(2));
    let bad_mount = Command::new(env!("CARGO_BIN_EXE_cffs"))
        .args(["mount", "/no/such/dir"])
        .env("CFFS_ENDPOINTS", &dev.endpoints)
        .output()
        .expect("run cffs mount");
    assert_eq!(bad_mount.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_mount.stderr).contains("/no/such/dir: No such file or directory"));
}

#[test]
fn concurrent_runs_lose_no_update() {
    skip_unless_mountable!();
    let dev = start_dev();
    let mount = Mount::start(&dev);
    std::fs::write(mount.path("n"), b"0").expect("seed the counter");
    let runs: usize = std::env::var("CFFS_RUN_INCREMENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let endpoints = dev.endpoints.clone();
            // Real processes, outside any simulation: system threads are what is meant.
            #[allow(clippy::disallowed_methods)]
            std::thread::spawn(move || {
                let at = format!("/tmp/cffs-run-test-{}-{w}", std::process::id());
                for _ in 0..runs {
                    let status = Command::new(env!("CARGO_BIN_EXE_cffs"))
                        .args(["run", "--at", &at, "--", "sh", "-c"])
                        .arg(format!("n=$(cat {at}/n) && echo $((n + 1)) > {at}/n"))
                        .env("CFFS_ENDPOINTS", &endpoints)
                        .status()
                        .expect("run cffs run");
                    assert!(status.success(), "a run failed: {status}");
                }
                let _ = std::fs::remove_dir(&at);
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let total = std::fs::read_to_string(mount.path("n")).expect("read the counter");
    assert_eq!(total.trim(), (2 * runs).to_string(), "an update was lost");
}

#[test]
fn an_unlinked_open_file_lives_until_its_last_close() {
    skip_unless_mountable!();
    let dev = start_dev();
    let mount = Mount::start(&dev);
    let path = mount.path("doomed");
    std::fs::write(&path, b"still here").expect("write");
    let ino = std::fs::metadata(&path).expect("stat").ino();
    let held = std::fs::File::open(&path).expect("open");
    std::fs::remove_file(&path).expect("unlink");
    assert!(!path.exists());
    let mut buf = [0u8; 10];
    held.read_exact_at(&mut buf, 0).expect("read through the descriptor");
    assert_eq!(&buf, b"still here");
    // Seen from the cluster: the inode is there (no name, nlink 0) while open, gone after.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let endpoints: Vec<String> = dev.endpoints.split(',').map(str::to_owned).collect();
    let client = runtime.block_on(async { cffs_client::Client::connect(&endpoints) }).expect("connect");
    let nlink = runtime.block_on(async { client.begin().getattr(ino).await }).expect("kept while open").nlink;
    assert_eq!(nlink, 0);
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match runtime.block_on(async { client.begin().getattr(ino).await }) {
            Err(cffs_client::FsError::NotFound) => break,
            other => assert!(std::time::Instant::now() < deadline, "still there after the last close: {other:?}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn bench_mount_prints_every_row() {
    skip_unless_mountable!();
    let dev = start_dev();
    let out = Command::new(env!("CARGO_BIN_EXE_cffs"))
        .args(["bench-mount", "--files", "5", "--cat-runs", "2", "--cat-bytes", "100000"])
        .env("CFFS_ENDPOINTS", &dev.endpoints)
        .output()
        .expect("run cffs bench-mount");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for row in
        ["cffs mount (FUSE)", "cffs client crate", "local /tmp", "tmpfs /dev/shm", "cat on the mount", "cat on tmpfs"]
    {
        assert!(text.contains(row), "no `{row}` row in:\n{text}");
    }
}
