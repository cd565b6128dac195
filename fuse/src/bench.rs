//! `cffs bench-mount`: what the kernel's interface costs. The same small-file workload
//! (create, write 4 KiB, close, stat, read, unlink: each step timed on its own) runs on a
//! temporary mount of the cluster, through the client crate's transactions directly (the
//! same steps, one transaction each, as the mount makes them), on a local directory and on
//! tmpfs; then `cat` of a warm file on the mount against `cat` of the same bytes on tmpfs.
//! It prints figures and checks no goal (benchmarks, not timed tests).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cffs_client::cli::BenchMountArgs;
use cffs_client::{Client, FsError};

use crate::fs::Scope;

/// The payload of each file in the small-file workload.
const FILE_BYTES: usize = 4096;

/// The steps of the workload, in order.
const CREATE: usize = 0;
const STAT: usize = 1;
const READ: usize = 2;
const UNLINK: usize = 3;

/// Each step's time and the requests the client sent in it (none for a local directory),
/// summed over the files.
#[derive(Default)]
struct Steps {
    time: [Duration; 4],
    requests: [u64; 4],
}

impl Steps {
    /// Runs `work` as step `step`, counting its time and the requests `sent` says it made.
    fn measure<T>(&mut self, step: usize, sent: impl Fn() -> u64, work: impl FnOnce() -> T) -> T {
        let (at, started) = (sent(), Instant::now());
        let out = work();
        self.time[step] += started.elapsed();
        self.requests[step] += sent() - at;
        out
    }

    /// The same for a transaction through the crate.
    async fn measure_run<T>(
        &mut self,
        step: usize,
        client: &Client,
        work: impl std::future::Future<Output = Result<T, FsError>>,
    ) -> Result<T, FsError> {
        let (at, started) = (client.requests_sent(), Instant::now());
        let out = work.await;
        self.time[step] += started.elapsed();
        self.requests[step] += client.requests_sent() - at;
        out
    }

    fn print(&self, place: &str, files: u32) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(files);
        let cycle: Duration = self.time.iter().sum();
        let [create, stat, read, unlink] = self.time.map(per);
        let [r0, r1, r2, r3] = self.requests.map(|r| r as f64 / f64::from(files));
        println!(
            "{place:<26} {create:>9.1} {stat:>9.1} {read:>9.1} {unlink:>9.1} {:>10.1} {:>10.0}   {r0:.1} {r1:.1} {r2:.1} {r3:.1}",
            per(cycle),
            f64::from(files) / cycle.as_secs_f64(),
        );
    }
}

/// The workload through the kernel: on the mount, a local directory or tmpfs.
fn through_the_kernel(dir: &Path, files: u32, data: &[u8], client: Option<&Client>) -> Result<Steps, String> {
    let mut steps = Steps::default();
    let sent = || client.map_or(0, Client::requests_sent);
    let failed = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
    for i in 0..files {
        let path = dir.join(format!("f{i}"));
        steps
            .measure(CREATE, sent, || std::fs::File::create(&path)?.write_all(data))
            .map_err(|e| failed("write", &path, e))?;
        let meta = steps.measure(STAT, sent, || std::fs::metadata(&path)).map_err(|e| failed("stat", &path, e))?;
        let read = steps.measure(READ, sent, || std::fs::read(&path)).map_err(|e| failed("read", &path, e))?;
        if meta.len() != data.len() as u64 || read != data {
            return Err(format!("{} read back differently", path.display()));
        }
        steps.measure(UNLINK, sent, || std::fs::remove_file(&path)).map_err(|e| failed("unlink", &path, e))?;
    }
    Ok(steps)
}

/// The workload through the client crate: each step one transaction, as on the mount.
async fn through_the_crate(client: &Client, dir: &str, files: u32, data: &[u8]) -> Result<Steps, FsError> {
    let mut steps = Steps::default();
    for i in 0..files {
        let path = format!("{dir}/f{i}");
        let p = path.as_str();
        let write = client.run(|txn| async move { txn.write_file(p, data).await });
        steps.measure_run(CREATE, client, write).await?;
        let attr = steps.measure_run(STAT, client, client.run(|txn| async move { txn.stat(p).await })).await?;
        let read = steps.measure_run(READ, client, client.run(|txn| async move { txn.read_file(p).await })).await?;
        if attr.size != data.len() as u64 || read != data {
            return Err(FsError::Invalid(format!("{path} read back differently")));
        }
        steps.measure_run(UNLINK, client, client.run(|txn| async move { txn.unlink(p).await })).await?;
    }
    Ok(steps)
}

/// Mean time of `runs` runs of `cat FILE > /dev/null`.
fn cat(file: &Path, runs: u32) -> Result<Duration, String> {
    let started = Instant::now();
    for _ in 0..runs {
        let status = std::process::Command::new("cat")
            .arg(file)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cat: {e}"))?;
        if !status.success() {
            return Err(format!("cat {} failed: {status}", file.display()));
        }
    }
    Ok(started.elapsed() / runs.max(1))
}

/// Mean time of `runs` open-read-close of `file` in this process.
fn read_in_process(file: &Path, runs: u32, want: usize) -> Result<Duration, String> {
    let started = Instant::now();
    for _ in 0..runs {
        let bytes = std::fs::read(file).map_err(|e| format!("read {}: {e}", file.display()))?;
        if bytes.len() != want {
            return Err(format!("{} read {} bytes, not {want}", file.display(), bytes.len()));
        }
    }
    Ok(started.elapsed() / runs.max(1))
}

/// A scratch directory under `base`, removed when dropped.
fn scratch(base: &Path, what: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("cffs-bench-mount-")
        .tempdir_in(base)
        .map_err(|e| format!("cannot make a {what} directory in {}: {e}", base.display()))
}

pub fn run(client: Client, runtime: &tokio::runtime::Runtime, args: &BenchMountArgs) -> Result<(), String> {
    let files = args.files.max(1);
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i % 251) as u8).collect();
    let mountpoint = tempfile::tempdir().map_err(|e| format!("cannot make a mount point: {e}"))?;
    let mounted =
        crate::mount::mount(client.clone(), runtime.handle().clone(), mountpoint.path(), Scope::PerOperation, false)?;
    let result = (|| {
        let root = format!("/bench-mount-{}", std::process::id());
        let (on_mount, on_crate) = (format!("{root}/mount"), format!("{root}/crate"));
        runtime
            .block_on(async {
                for dir in [&on_mount, &on_crate] {
                    let dir = dir.clone();
                    client
                        .run(|txn| {
                            let dir = dir.clone();
                            async move { txn.mkdir_all(&dir, 0o755).await }
                        })
                        .await?;
                }
                Ok::<(), FsError>(())
            })
            .map_err(|e| format!("cannot make {root}: {e}"))?;
        let mount_dir = mountpoint.path().join(on_mount.trim_start_matches('/'));
        let local = scratch(&args.local_dir, "local")?;
        let tmpfs = scratch(&args.tmpfs_dir, "tmpfs")?;

        println!("small-file workload: {files} files of {FILE_BYTES} bytes, each created+written+closed, stat'ed, read, unlinked");
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "where (µs per step)", "create", "stat", "read", "unlink", "cycle", "files/s"
        );
        // A warm-up pass on each, not counted: connections, leases and the page cache.
        let warm = files.min(20);
        through_the_kernel(&mount_dir, warm, &data, None)?;
        runtime.block_on(through_the_crate(&client, &on_crate, warm, &data)).map_err(|e| e.to_string())?;
        through_the_kernel(&mount_dir, files, &data, Some(&client))?.print("cffs mount (FUSE)", files);
        runtime
            .block_on(through_the_crate(&client, &on_crate, files, &data))
            .map_err(|e| format!("through the client crate: {e}"))?
            .print("cffs client crate", files);
        through_the_kernel(local.path(), files, &data, None)?
            .print(&format!("local {}", args.local_dir.display()), files);
        through_the_kernel(tmpfs.path(), files, &data, None)?
            .print(&format!("tmpfs {}", args.tmpfs_dir.display()), files);

        // cat of a warm file: the client's cache holds it (leased), tmpfs holds it in memory.
        let content: Vec<u8> = (0..args.cat_bytes).map(|i| (i % 253) as u8).collect();
        let on_mount_file: PathBuf = mount_dir.join("cat-me");
        let on_tmpfs_file: PathBuf = tmpfs.path().join("cat-me");
        std::fs::write(&on_mount_file, &content).map_err(|e| format!("write {}: {e}", on_mount_file.display()))?;
        std::fs::write(&on_tmpfs_file, &content).map_err(|e| format!("write {}: {e}", on_tmpfs_file.display()))?;
        read_in_process(&on_mount_file, 5, content.len())?;
        let runs = args.cat_runs.max(1);
        println!();
        println!("warm file of {} bytes ({runs} runs each, mean)", args.cat_bytes);
        let (cat_mount, cat_tmpfs) = (cat(&on_mount_file, runs)?, cat(&on_tmpfs_file, runs)?);
        println!("  cat on the mount   {:>9.1} µs", cat_mount.as_secs_f64() * 1e6);
        println!("  cat on tmpfs       {:>9.1} µs", cat_tmpfs.as_secs_f64() * 1e6);
        let (read_mount, read_tmpfs) = (
            read_in_process(&on_mount_file, runs, content.len())?,
            read_in_process(&on_tmpfs_file, runs, content.len())?,
        );
        println!("  open+read+close on the mount, in process {:>9.1} µs", read_mount.as_secs_f64() * 1e6);
        println!("  open+read+close on tmpfs, in process     {:>9.1} µs", read_tmpfs.as_secs_f64() * 1e6);
        let _ = std::fs::remove_file(&on_mount_file);
        runtime.block_on(async {
            for dir in [&on_mount, &on_crate, &root] {
                let dir = dir.clone();
                let _ = client
                    .run(|txn| {
                        let dir = dir.clone();
                        async move { txn.rmdir(&dir).await }
                    })
                    .await;
            }
        });
        Ok(())
    })();
    mounted.unmount();
    result
}
