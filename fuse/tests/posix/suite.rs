//! The POSIX conformance suite (in the spirit of pjdfstest, written here): named checks of
//! the system calls a file system answers (chmod, chown, link, mkdir, open, rename, rmdir,
//! symlink, truncate, unlink, utimensat, mknod, and the timestamps each must update), each
//! run in a fresh directory under the one being tested. The expectations are Linux's on a
//! local file system, run as root with umask 0: the suite is checked against a local
//! directory first, so an expectation that Linux itself does not meet is caught there.
//! Non-root permission checks are left to the kernel (the mount uses default_permissions)
//! and are not run.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::fs::{self, Mode, OFlags};
use rustix::process::{Gid, Uid};

pub type Check = Result<(), String>;

/// What a run found: the names of the checks that passed, and those that failed with why.
pub struct Report {
    pub passed: Vec<&'static str>,
    pub failed: Vec<(&'static str, String)>,
}

/// A system call's result: its value, or errno.
type Sys<T = ()> = Result<T, i32>;

fn sys<T>(result: rustix::io::Result<T>) -> Sys<T> {
    result.map_err(|e| e.raw_os_error())
}

fn errname(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// `result` failed with `errno`.
fn fails<T: std::fmt::Debug>(what: &str, result: Result<T, i32>, errno: i32) -> Check {
    match result {
        Err(e) if e == errno => Ok(()),
        Err(e) => Err(format!("{what}: {} where {} was expected", errname(e), errname(errno))),
        Ok(v) => Err(format!("{what}: succeeded ({v:?}) where {} was expected", errname(errno))),
    }
}

fn ok<T>(what: &str, result: Result<T, i32>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {}", errname(e)))
}

fn io<T>(result: std::io::Result<T>) -> Result<T, i32> {
    result.map_err(|e| e.raw_os_error().unwrap_or(0))
}

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

fn perm(mode: u32) -> Mode {
    Mode::from_raw_mode(mode)
}

fn open(p: &Path, flags: i32, mode: u32) -> Sys<OwnedFd> {
    sys(fs::open(p, OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC, perm(mode)))
}

fn close(fd: OwnedFd) {
    drop(fd);
}

fn create(p: &Path, mode: u32) -> Check {
    close(ok("create", open(p, libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL, mode))?);
    Ok(())
}

fn write_file(p: &Path, data: &[u8]) -> Check {
    ok("write", io(std::fs::write(p, data)))
}

fn mkdir(p: &Path, mode: u32) -> Sys {
    sys(fs::mkdir(p, perm(mode)))
}

fn chmod(p: &Path, mode: u32) -> Sys {
    sys(fs::chmod(p, perm(mode)))
}

/// chown (following a symlink) or lchown; `None` is -1, which leaves that id.
fn chown(p: &Path, uid: Option<u32>, gid: Option<u32>, follow: bool) -> Sys {
    let flags = if follow { fs::AtFlags::empty() } else { fs::AtFlags::SYMLINK_NOFOLLOW };
    sys(fs::chownat(fs::CWD, p, uid.map(Uid::from_raw), gid.map(Gid::from_raw), flags))
}

fn link(from: &Path, to: &Path) -> Sys {
    sys(fs::linkat(fs::CWD, from, fs::CWD, to, fs::AtFlags::empty()))
}

fn symlink(target: &Path, at: &Path) -> Sys {
    sys(fs::symlink(target, at))
}

fn unlink(p: &Path) -> Sys {
    sys(fs::unlink(p))
}

fn rmdir(p: &Path) -> Sys {
    sys(fs::rmdir(p))
}

fn rename(from: &Path, to: &Path, flags: u32) -> Sys {
    sys(fs::renameat_with(fs::CWD, from, fs::CWD, to, fs::RenameFlags::from_bits_retain(flags)))
}

/// truncate(2) by path: what the kernel sends the file system is the same SETATTR.
fn truncate(p: &Path, size: u64) -> Sys {
    let fd = open(p, libc::O_WRONLY, 0)?;
    sys(fs::ftruncate(&fd, size))
}

fn ftruncate(fd: &OwnedFd, size: u64) -> Sys {
    sys(fs::ftruncate(fd, size))
}

fn utimens(p: &Path, atime: (i64, i64), mtime: (i64, i64), flags: i32) -> Sys {
    let at = |(tv_sec, tv_nsec): (i64, i64)| fs::Timespec { tv_sec, tv_nsec };
    let times = fs::Timestamps { last_access: at(atime), last_modification: at(mtime) };
    sys(fs::utimensat(fs::CWD, p, &times, fs::AtFlags::from_bits_retain(flags as u32)))
}

fn pwrite(fd: &OwnedFd, data: &[u8], offset: u64) -> Sys<usize> {
    sys(rustix::io::pwrite(fd, data, offset))
}

fn pread(fd: &OwnedFd, len: usize, offset: u64) -> Sys<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = sys(rustix::io::pread(fd, &mut buf[..], offset))?;
    buf.truncate(n);
    Ok(buf)
}

fn fstat(fd: &OwnedFd) -> Sys<fs::Stat> {
    sys(fs::fstat(fd))
}

fn lstat(p: &Path) -> Result<std::fs::Metadata, i32> {
    io(std::fs::symlink_metadata(p))
}

fn stat(p: &Path) -> Result<std::fs::Metadata, i32> {
    io(std::fs::metadata(p))
}

/// (atime, mtime, ctime) in nanoseconds, of the name itself (lstat).
fn times(p: &Path) -> Result<(i128, i128, i128), String> {
    let m = ok("lstat", lstat(p))?;
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Ok((ns(m.atime(), m.atime_nsec()), ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec())))
}

/// Time passes: a local file system stamps times from a clock that ticks every few
/// milliseconds, so an operation right after another may carry the same time.
fn tick() {
    std::thread::sleep(Duration::from_millis(12));
}

/// The path's parent's mtime and ctime both advanced from `before` to now.
fn parent_advanced(dir: &Path, before: (i128, i128, i128), what: &str) -> Check {
    let after = times(dir)?;
    ensure!(after.1 > before.1, "{what}: the parent's mtime did not advance");
    ensure!(after.2 > before.2, "{what}: the parent's ctime did not advance");
    Ok(())
}

fn parent_unchanged(dir: &Path, before: (i128, i128, i128), what: &str) -> Check {
    let after = times(dir)?;
    ensure!(after.1 == before.1 && after.2 == before.2, "{what}: the parent's mtime or ctime changed");
    Ok(())
}

fn ctime_advanced(p: &Path, before: (i128, i128, i128), what: &str) -> Check {
    ensure!(times(p)?.2 > before.2, "{what}: ctime did not advance");
    Ok(())
}

fn mode(p: &Path) -> Result<u32, String> {
    Ok(ok("stat", stat(p))?.mode() & 0o7777)
}

fn kind(p: &Path) -> Result<u32, String> {
    Ok(ok("lstat", lstat(p))?.mode() & libc::S_IFMT)
}

fn ino(p: &Path) -> Result<u64, String> {
    Ok(ok("lstat", lstat(p))?.ino())
}

fn nlink(p: &Path) -> Result<u64, String> {
    Ok(ok("lstat", lstat(p))?.nlink())
}

/// With the process's umask set to `mask` for the duration of `f` (then back to 0).
fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // The suite runs on one thread: the process-wide mask is the suite's.
    rustix::process::umask(perm(mask));
    let out = f();
    rustix::process::umask(perm(0));
    out
}

/// A name of `len` bytes.
fn name(len: usize) -> String {
    "n".repeat(len)
}

/// A path under `d` of exactly `len` bytes in total (its parent directories created),
/// made of components of 100 bytes.
fn long_path(d: &Path, len: usize) -> Result<PathBuf, String> {
    let mut path = d.to_path_buf();
    let base = d.as_os_str().len();
    loop {
        let left = len - (path.as_os_str().len() - base) - 1;
        if left <= 100 {
            path.push("p".repeat(left));
            return Ok(path);
        }
        path.push("d".repeat(99));
        ok("mkdir", mkdir(&path, 0o755))?;
    }
}

/// A named check, run in an empty directory of its own.
pub type NamedCheck = (&'static str, fn(&Path) -> Check);

/// Every check, by name, in order.
pub fn checks() -> Vec<NamedCheck> {
    vec![
        ("chmod: file mode set, ctime advances", chmod_file),
        ("chmod: directory mode set", chmod_dir),
        ("chmod: through a symlink changes the target", chmod_symlink),
        ("chmod: setuid, setgid and sticky bits kept for root", chmod_special_bits),
        ("chmod: ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG", chmod_errors),
        ("chown: owner and group set, ctime advances", chown_file),
        ("chown: through a symlink the target; lchown the link", chown_symlink),
        ("chown: -1 leaves owner and group", chown_unchanged),
        ("link: names share the inode and count links", link_counts),
        ("link: ctime of the file and times of the parent advance", link_times),
        ("link: EEXIST, ENOENT, EPERM on a directory, ENOTDIR", link_errors),
        ("mkdir: mode, and the umask applied", mkdir_modes),
        ("mkdir: new times, the parent's times advance", mkdir_times),
        ("mkdir: a parent's nlink counts its subdirectories", mkdir_nlink),
        ("mkdir: EEXIST, ENOENT, ENOTDIR", mkdir_errors),
        ("names: 255 bytes work, 256 are ENAMETOOLONG", name_max),
        ("paths: 4095 bytes work, 4096 are ENAMETOOLONG", path_max),
        ("open: O_CREAT mode, and the umask applied", open_modes),
        ("open: O_CREAT of a new name advances the parent, of an existing one does not", open_create_times),
        ("open: O_TRUNC empties the file, mtime and ctime advance", open_trunc),
        ("open: O_EXCL on an existing name is EEXIST", open_excl),
        ("open: O_NOFOLLOW on a symlink is ELOOP", open_nofollow),
        ("open: a directory for writing is EISDIR", open_dir_for_write),
        ("open: O_DIRECTORY on a file is ENOTDIR, on a directory or its symlink works", open_directory),
        ("open: mode 0 created and opened read-write by root", open_mode_zero),
        ("open: ENOENT, ENOTDIR, ELOOP", open_errors),
        ("open: O_APPEND writes at the end", open_append),
        ("write: past 2 GiB, the hole reads as zeros", write_past_2g),
        ("write: fchmod and fchown while writing show before close", chmod_while_writing),
        ("rename: a file keeps its inode and mode", rename_file),
        ("rename: one of two links; the other still names the inode", rename_linked),
        ("rename: a directory keeps its inode", rename_dir),
        ("rename: a symlink is renamed, not its target", rename_symlink),
        ("rename: over a file replaces it; its other link loses a count", rename_over_file),
        ("rename: a directory over an empty one replaces it", rename_over_empty_dir),
        ("rename: ENOTEMPTY, ENOTDIR, EISDIR on kind mismatches", rename_kind_errors),
        ("rename: a directory into itself is EINVAL", rename_into_self),
        ("rename: between parents moves the nlink and the .. entry", rename_between_parents),
        ("rename: both parents' mtime and ctime advance", rename_parent_times),
        ("rename: between two links of one inode does nothing", rename_same_inode),
        ("rename: ENOENT, ENOTDIR, ELOOP", rename_errors),
        ("rename: RENAME_NOREPLACE over an existing name is EEXIST", rename_noreplace),
        ("rename: RENAME_EXCHANGE swaps two names", rename_exchange),
        ("rmdir: removes; the parent's times advance", rmdir_basic),
        ("rmdir: ENOTEMPTY, ENOTDIR, ENOENT, EINVAL on .", rmdir_errors),
        ("symlink: target read back, followed by stat", symlink_basic),
        ("symlink: dangling after its target goes", symlink_dangling),
        ("symlink: the parent's times advance", symlink_times),
        ("symlink: a 4095-byte target stored, 4096 is ENAMETOOLONG", symlink_long_target),
        ("symlink: EEXIST, ENOENT, ENOTDIR", symlink_errors),
        ("truncate: grows with zeros and shrinks", truncate_sizes),
        ("truncate: mtime and ctime advance", truncate_times),
        ("truncate: EISDIR, ENOENT, ENOTDIR", truncate_errors),
        ("ftruncate: sizes through a descriptor; read-only is EINVAL", ftruncate_fd),
        ("unlink: removes a file and a symlink; the parent's times advance", unlink_basic),
        ("unlink: one of two links; the other's nlink and ctime", unlink_linked),
        ("unlink: EISDIR on a directory, ENOENT, ENOTDIR", unlink_errors),
        ("unlink: an open file stays readable until closed, with nlink 0", unlink_open_file),
        ("utimensat: times stored to the nanosecond, past 2038 too", utimens_exact),
        ("utimensat: UTIME_NOW and UTIME_OMIT", utimens_now_omit),
        ("utimensat: ctime advances", utimens_ctime),
        ("utimensat: AT_SYMLINK_NOFOLLOW sets the link's own times", utimens_nofollow),
        ("readdir: every entry, with . and ..", readdir_all),
        ("mkfifo: a FIFO is created", mkfifo_works),
        ("mknod: a character device keeps its numbers", mknod_device),
        ("socket: bind makes a socket file", bind_socket),
    ]
}

/// Runs every check in a fresh directory under `root`, umask 0.
pub fn run(root: &Path) -> Report {
    let old = rustix::process::umask(perm(0));
    let mut report = Report { passed: Vec::new(), failed: Vec::new() };
    for (i, (name, check)) in checks().into_iter().enumerate() {
        let dir = root.join(format!("c{i:03}"));
        let outcome = match std::fs::create_dir(&dir) {
            Ok(()) => check(&dir),
            Err(e) => Err(format!("cannot make the check's directory: {e}")),
        };
        match outcome {
            Ok(()) => report.passed.push(name),
            Err(why) => report.failed.push((name, why)),
        }
    }
    rustix::process::umask(old);
    report
}

// ---- chmod

fn chmod_file(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    let before = times(&f)?;
    tick();
    ok("chmod", chmod(&f, 0o111))?;
    ensure!(mode(&f)? == 0o111, "mode is {:o}", mode(&f)?);
    ctime_advanced(&f, before, "chmod")
}

fn chmod_dir(d: &Path) -> Check {
    let s = d.join("s");
    ok("mkdir", mkdir(&s, 0o755))?;
    ok("chmod", chmod(&s, 0o151))?;
    ensure!(mode(&s)? == 0o151, "mode is {:o}", mode(&s)?);
    Ok(())
}

fn chmod_symlink(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("symlink", symlink(&f, &s))?;
    let link_mode = ok("lstat", lstat(&s))?.mode();
    ok("chmod", chmod(&s, 0o222))?;
    ensure!(mode(&f)? == 0o222, "the target's mode is {:o}", mode(&f)?);
    ensure!(ok("lstat", lstat(&s))?.mode() == link_mode, "the link's own mode changed");
    Ok(())
}

fn chmod_special_bits(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    for want in [0o1621, 0o4755, 0o2755, 0o6777] {
        ok("chmod", chmod(&f, want))?;
        ensure!(mode(&f)? == want, "mode {:o} read back as {:o}", want, mode(&f)?);
    }
    Ok(())
}

fn chmod_errors(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    fails("chmod of a missing name", chmod(&d.join("missing"), 0o644), libc::ENOENT)?;
    fails("chmod under a missing directory", chmod(&d.join("missing/x"), 0o644), libc::ENOENT)?;
    fails("chmod under a file", chmod(&d.join("f/x"), 0o644), libc::ENOTDIR)?;
    ok("symlink", symlink(Path::new("b"), &d.join("a")))?;
    ok("symlink", symlink(Path::new("a"), &d.join("b")))?;
    fails("chmod of a symlink loop", chmod(&d.join("a"), 0o644), libc::ELOOP)?;
    fails("chmod of a long name", chmod(&d.join(name(256)), 0o644), libc::ENAMETOOLONG)
}

// ---- chown

fn chown_file(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    let before = times(&f)?;
    tick();
    ok("chown", chown(&f, Some(123), Some(456), true))?;
    let m = ok("stat", stat(&f))?;
    ensure!((m.uid(), m.gid()) == (123, 456), "owner {}:{}", m.uid(), m.gid());
    ctime_advanced(&f, before, "chown")?;
    ok("chown", chown(&f, Some(0), Some(0), true))?;
    let m = ok("stat", stat(&f))?;
    ensure!((m.uid(), m.gid()) == (0, 0), "owner {}:{} after chown 0:0", m.uid(), m.gid());
    Ok(())
}

fn chown_symlink(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("symlink", symlink(&f, &s))?;
    ok("chown", chown(&s, Some(123), Some(456), true))?;
    let (target, own) = (ok("stat", stat(&f))?, ok("lstat", lstat(&s))?);
    ensure!((target.uid(), target.gid()) == (123, 456), "the target is {}:{}", target.uid(), target.gid());
    ensure!((own.uid(), own.gid()) == (0, 0), "the link's own owner changed");
    ok("lchown", chown(&s, Some(321), Some(654), false))?;
    let (target, own) = (ok("stat", stat(&f))?, ok("lstat", lstat(&s))?);
    ensure!((own.uid(), own.gid()) == (321, 654), "lchown: the link is {}:{}", own.uid(), own.gid());
    ensure!((target.uid(), target.gid()) == (123, 456), "lchown changed the target");
    Ok(())
}

fn chown_unchanged(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    ok("chown", chown(&f, Some(123), Some(456), true))?;
    ok("chown -1 -1", chown(&f, None, None, true))?;
    ok("chown -1 gid", chown(&f, None, Some(789), true))?;
    let m = ok("stat", stat(&f))?;
    ensure!((m.uid(), m.gid()) == (123, 789), "owner {}:{}", m.uid(), m.gid());
    Ok(())
}

// ---- link

fn link_counts(d: &Path) -> Check {
    let (f, g, h) = (d.join("f"), d.join("g"), d.join("h"));
    create(&f, 0o644)?;
    ok("link", link(&f, &g))?;
    ensure!(nlink(&f)? == 2 && nlink(&g)? == 2, "nlink {} {}", nlink(&f)?, nlink(&g)?);
    ok("link", link(&g, &h))?;
    ensure!(ino(&f)? == ino(&h)? && nlink(&h)? == 3 && nlink(&f)? == 3, "three names, one inode, nlink 3");
    ok("chmod", chmod(&g, 0o201))?;
    ensure!(mode(&f)? == 0o201 && mode(&h)? == 0o201, "a chmod through one name is seen through the others");
    ok("unlink", unlink(&f))?;
    fails("lstat of the unlinked name", lstat(&f).map(|_| ()), libc::ENOENT)?;
    ensure!(nlink(&g)? == 2, "nlink after one unlink is {}", nlink(&g)?);
    ok("unlink", unlink(&h))?;
    ensure!(nlink(&g)? == 1, "nlink after two unlinks is {}", nlink(&g)?);
    Ok(())
}

fn link_times(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    let (file, dir) = (times(&f)?, times(d)?);
    tick();
    ok("link", link(&f, &d.join("g")))?;
    ctime_advanced(&f, file, "link")?;
    parent_advanced(d, dir, "link")
}

fn link_errors(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("mkdir", mkdir(&s, 0o755))?;
    create(&d.join("g"), 0o644)?;
    ok("symlink", symlink(Path::new("nowhere"), &d.join("dangling")))?;
    for dst in ["g", "s", "dangling"] {
        fails(&format!("link over {dst}"), link(&f, &d.join(dst)), libc::EEXIST)?;
    }
    fails("link of a missing name", link(&d.join("missing"), &d.join("x")), libc::ENOENT)?;
    fails("link into a missing directory", link(&f, &d.join("missing/x")), libc::ENOENT)?;
    fails("link of a directory", link(&s, &d.join("x")), libc::EPERM)?;
    fails("link under a file", link(&f, &d.join("f/x")), libc::ENOTDIR)?;
    fails("link to a long name", link(&f, &d.join(name(256))), libc::ENAMETOOLONG)
}

// ---- mkdir

fn mkdir_modes(d: &Path) -> Check {
    for (i, (mask, asked, want)) in
        [(0, 0o755, 0o755), (0, 0o151, 0o151), (0o077, 0o151, 0o100), (0o070, 0o345, 0o305), (0o501, 0o345, 0o244)]
            .into_iter()
            .enumerate()
    {
        let s = d.join(format!("s{i}"));
        ok("mkdir", with_umask(mask, || mkdir(&s, asked)))?;
        ensure!(kind(&s)? == libc::S_IFDIR, "not a directory");
        ensure!(mode(&s)? == want, "mkdir {asked:o} under umask {mask:o}: mode {:o}, not {want:o}", mode(&s)?);
    }
    Ok(())
}

fn mkdir_times(d: &Path) -> Check {
    let before = times(d)?;
    tick();
    let s = d.join("s");
    ok("mkdir", mkdir(&s, 0o755))?;
    let (a, m, c) = times(&s)?;
    ensure!(a > before.2 && m > before.2 && c > before.2, "the new directory's times are not new");
    parent_advanced(d, before, "mkdir")
}

fn mkdir_nlink(d: &Path) -> Check {
    ensure!(nlink(d)? == 2, "an empty directory has nlink {}", nlink(d)?);
    ok("mkdir", mkdir(&d.join("a"), 0o755))?;
    ok("mkdir", mkdir(&d.join("b"), 0o755))?;
    create(&d.join("f"), 0o644)?;
    ensure!(nlink(d)? == 4, "two subdirectories and a file: nlink {}", nlink(d)?);
    ok("rmdir", rmdir(&d.join("a")))?;
    ensure!(nlink(d)? == 3, "after an rmdir: nlink {}", nlink(d)?);
    Ok(())
}

fn mkdir_errors(d: &Path) -> Check {
    create(&d.join("f"), 0o644)?;
    ok("mkdir", mkdir(&d.join("s"), 0o755))?;
    ok("symlink", symlink(Path::new("nowhere"), &d.join("dangling")))?;
    for existing in ["f", "s", "dangling"] {
        fails(&format!("mkdir over {existing}"), mkdir(&d.join(existing), 0o755), libc::EEXIST)?;
    }
    fails("mkdir under a missing directory", mkdir(&d.join("missing/x"), 0o755), libc::ENOENT)?;
    fails("mkdir under a file", mkdir(&d.join("f/x"), 0o755), libc::ENOTDIR)
}

fn name_max(d: &Path) -> Check {
    let (nx, nxx) = (d.join(name(255)), d.join(name(256)));
    create(&nx, 0o644)?;
    ok("rename to a 255-byte name", rename(&nx, &d.join("short"), 0))?;
    ok("rename from it back", rename(&d.join("short"), &nx, 0))?;
    ok("unlink a 255-byte name", unlink(&nx))?;
    ok("mkdir a 255-byte name", mkdir(&nx, 0o755))?;
    fails("create a 256-byte name", open(&nxx, libc::O_CREAT | libc::O_WRONLY, 0o644), libc::ENAMETOOLONG)?;
    fails("mkdir a 256-byte name", mkdir(&nxx, 0o755), libc::ENAMETOOLONG)?;
    fails("symlink at a 256-byte name", symlink(Path::new("t"), &nxx), libc::ENAMETOOLONG)?;
    fails("rename to a 256-byte name", rename(&nx, &nxx, 0), libc::ENAMETOOLONG)?;
    ok("symlink to a target with a 256-byte component", symlink(Path::new(&name(256)), &d.join("l")))?;
    // statvfs's f_namemax is what pathconf(_PC_NAME_MAX) reports.
    let st = ok("statvfs", sys(fs::statvfs(d)))?;
    ensure!(st.f_namemax == 255, "statvfs names {} bytes as the longest name", st.f_namemax);
    Ok(())
}

fn path_max(d: &Path) -> Check {
    let px = long_path(d, 4095 - d.as_os_str().len())?;
    ensure!(px.as_os_str().len() == 4095, "the long path is {} bytes", px.as_os_str().len());
    create(&px, 0o642)?;
    ensure!(mode(&px)? == 0o642, "mode through a 4095-byte path");
    ok("truncate through a 4095-byte path", truncate(&px, 123))?;
    ensure!(ok("stat", stat(&px))?.len() == 123, "size through a 4095-byte path");
    let mut pxx = px.clone().into_os_string();
    pxx.push("x");
    let pxx = PathBuf::from(pxx);
    fails("create at a 4096-byte path", open(&pxx, libc::O_CREAT | libc::O_WRONLY, 0o644), libc::ENAMETOOLONG)?;
    ok("unlink", unlink(&px))
}

// ---- open

fn open_modes(d: &Path) -> Check {
    for (i, (mask, asked, want)) in
        [(0, 0o755, 0o755), (0, 0o151, 0o151), (0o077, 0o151, 0o100), (0o070, 0o345, 0o305), (0o501, 0o345, 0o244)]
            .into_iter()
            .enumerate()
    {
        let f = d.join(format!("f{i}"));
        with_umask(mask, || create(&f, asked))?;
        ensure!(kind(&f)? == libc::S_IFREG, "not a regular file");
        ensure!(mode(&f)? == want, "create {asked:o} under umask {mask:o}: mode {:o}, not {want:o}", mode(&f)?);
    }
    Ok(())
}

fn open_create_times(d: &Path) -> Check {
    let before = times(d)?;
    tick();
    let f = d.join("f");
    create(&f, 0o644)?;
    let (a, m, c) = times(&f)?;
    ensure!(a > before.2 && m > before.2 && c > before.2, "the new file's times are not new");
    parent_advanced(d, before, "create")?;
    let before = times(d)?;
    tick();
    close(ok("open O_CREAT of an existing file", open(&f, libc::O_CREAT | libc::O_RDONLY, 0o644))?);
    parent_unchanged(d, before, "open O_CREAT of an existing file")
}

fn open_trunc(d: &Path) -> Check {
    let f = d.join("f");
    write_file(&f, b"12345")?;
    let before = times(&f)?;
    tick();
    close(ok("open O_TRUNC", open(&f, libc::O_WRONLY | libc::O_TRUNC, 0))?);
    ensure!(ok("stat", stat(&f))?.len() == 0, "O_TRUNC left {} bytes", ok("stat", stat(&f))?.len());
    let after = times(&f)?;
    ensure!(after.1 > before.1 && after.2 > before.2, "O_TRUNC did not advance mtime and ctime");
    Ok(())
}

fn open_excl(d: &Path) -> Check {
    create(&d.join("f"), 0o644)?;
    ok("mkdir", mkdir(&d.join("s"), 0o755))?;
    ok("symlink", symlink(Path::new("nowhere"), &d.join("dangling")))?;
    for existing in ["f", "s", "dangling"] {
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
        fails(&format!("O_EXCL over {existing}"), open(&d.join(existing), flags, 0o644), libc::EEXIST)?;
    }
    Ok(())
}

fn open_nofollow(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("symlink", symlink(&f, &s))?;
    for flags in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_CREAT] {
        fails("O_NOFOLLOW on a symlink", open(&s, flags | libc::O_NOFOLLOW, 0o644), libc::ELOOP)?;
    }
    Ok(())
}

fn open_dir_for_write(d: &Path) -> Check {
    let s = d.join("s");
    ok("mkdir", mkdir(&s, 0o755))?;
    close(ok("open a directory read-only", open(&s, libc::O_RDONLY, 0))?);
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC, libc::O_RDWR | libc::O_TRUNC] {
        fails("open a directory for writing", open(&s, flags, 0), libc::EISDIR)?;
    }
    Ok(())
}

fn open_directory(d: &Path) -> Check {
    let (f, s, l) = (d.join("f"), d.join("s"), d.join("l"));
    create(&f, 0o644)?;
    ok("mkdir", mkdir(&s, 0o755))?;
    ok("symlink", symlink(&s, &l))?;
    fails("O_DIRECTORY on a file", open(&f, libc::O_RDONLY | libc::O_DIRECTORY, 0), libc::ENOTDIR)?;
    close(ok("O_DIRECTORY on a directory", open(&s, libc::O_RDONLY | libc::O_DIRECTORY, 0))?);
    close(ok("O_DIRECTORY through a symlink", open(&l, libc::O_RDONLY | libc::O_DIRECTORY, 0))?);
    Ok(())
}

fn open_mode_zero(d: &Path) -> Check {
    let f = d.join("f");
    let fd = ok("create with mode 0", open(&f, libc::O_CREAT | libc::O_RDWR, 0))?;
    ok("ftruncate a mode-0 file through its descriptor", ftruncate(&fd, 0))?;
    close(fd);
    ensure!(mode(&f)? == 0, "mode {:o}", mode(&f)?);
    close(ok("root opens a mode-0 file read-write", open(&f, libc::O_RDWR, 0))?);
    Ok(())
}

fn open_errors(d: &Path) -> Check {
    create(&d.join("f"), 0o644)?;
    fails("open a missing name", open(&d.join("missing"), libc::O_RDONLY, 0), libc::ENOENT)?;
    fails(
        "create under a missing directory",
        open(&d.join("missing/x"), libc::O_CREAT | libc::O_WRONLY, 0o644),
        libc::ENOENT,
    )?;
    fails("open under a file", open(&d.join("f/x"), libc::O_RDONLY, 0), libc::ENOTDIR)?;
    fails("create under a file", open(&d.join("f/x"), libc::O_CREAT | libc::O_WRONLY, 0o644), libc::ENOTDIR)?;
    ok("symlink", symlink(Path::new("b"), &d.join("a")))?;
    ok("symlink", symlink(Path::new("a"), &d.join("b")))?;
    fails("open a symlink loop", open(&d.join("a"), libc::O_RDONLY, 0), libc::ELOOP)?;
    fails("open under a symlink loop", open(&d.join("a/x"), libc::O_RDONLY, 0), libc::ELOOP)
}

fn open_append(d: &Path) -> Check {
    let f = d.join("f");
    write_file(&f, b"hello")?;
    let fd = ok("open O_APPEND", open(&f, libc::O_WRONLY | libc::O_APPEND, 0))?;
    let n = sys(rustix::io::write(&fd, b", world"));
    close(fd);
    ok("write", n)?;
    let got = ok("read", io(std::fs::read(&f)))?;
    ensure!(got == b"hello, world", "read back {:?}", String::from_utf8_lossy(&got));
    Ok(())
}

fn write_past_2g(d: &Path) -> Check {
    let f = d.join("f");
    let fd = ok("create", open(&f, libc::O_CREAT | libc::O_RDWR, 0o644))?;
    let at = (1u64 << 31) + 1;
    let result = (|| {
        ok("pwrite past 2 GiB", pwrite(&fd, b"a", at))?;
        let size = ok("fstat", fstat(&fd))?.st_size;
        ensure!(size as u64 == at + 1, "size {size}");
        ensure!(ok("pread", pread(&fd, 1, at))? == b"a", "the byte past 2 GiB");
        ensure!(ok("pread", pread(&fd, 4, 1 << 30))? == [0; 4], "the hole is not zeros");
        Ok(())
    })();
    close(fd);
    result
}

fn chmod_while_writing(d: &Path) -> Check {
    let f = d.join("f");
    let fd = ok("create", open(&f, libc::O_CREAT | libc::O_RDWR, 0o644))?;
    let result = (|| {
        ok("pwrite", pwrite(&fd, b"pending", 0))?;
        ok("fchmod", sys(fs::fchmod(&fd, perm(0o600))))?;
        ok("fchown", sys(fs::fchown(&fd, Some(Uid::from_raw(123)), Some(Gid::from_raw(456)))))?;
        let m = ok("stat", stat(&f))?;
        ensure!(m.mode() & 0o7777 == 0o600, "mode {:o} before close", m.mode() & 0o7777);
        ensure!((m.uid(), m.gid()) == (123, 456), "owner {}:{} before close", m.uid(), m.gid());
        ensure!(m.len() == 7, "size {} before close", m.len());
        Ok(())
    })();
    close(fd);
    result?;
    ensure!(mode(&f)? == 0o600 && ok("stat", stat(&f))?.len() == 7, "after close");
    Ok(())
}

// ---- rename

fn rename_file(d: &Path) -> Check {
    let (f, g) = (d.join("f"), d.join("g"));
    create(&f, 0o640)?;
    let inode = ino(&f)?;
    ok("rename", rename(&f, &g, 0))?;
    fails("lstat of the old name", lstat(&f).map(|_| ()), libc::ENOENT)?;
    ensure!(ino(&g)? == inode && mode(&g)? == 0o640 && nlink(&g)? == 1, "the renamed file changed");
    Ok(())
}

fn rename_linked(d: &Path) -> Check {
    let (f, g, h) = (d.join("f"), d.join("g"), d.join("h"));
    create(&f, 0o644)?;
    ok("link", link(&f, &g))?;
    ok("rename", rename(&g, &h, 0))?;
    ensure!(ino(&f)? == ino(&h)? && nlink(&h)? == 2, "the links no longer share the inode");
    fails("lstat of the old name", lstat(&g).map(|_| ()), libc::ENOENT)
}

fn rename_dir(d: &Path) -> Check {
    let (s, t) = (d.join("s"), d.join("t"));
    ok("mkdir", mkdir(&s, 0o755))?;
    create(&s.join("inside"), 0o644)?;
    let inode = ino(&s)?;
    ok("rename", rename(&s, &t, 0))?;
    ensure!(ino(&t)? == inode && mode(&t)? == 0o755, "the renamed directory changed");
    ensure!(lstat(&t.join("inside")).is_ok(), "the directory's entry did not move with it");
    Ok(())
}

fn rename_symlink(d: &Path) -> Check {
    let (f, s, t) = (d.join("f"), d.join("s"), d.join("t"));
    create(&f, 0o644)?;
    ok("symlink", symlink(&f, &s))?;
    let inode = ino(&s)?;
    ok("rename", rename(&s, &t, 0))?;
    ensure!(kind(&t)? == libc::S_IFLNK && ino(&t)? == inode, "the link was not renamed");
    ensure!(kind(&f)? == libc::S_IFREG, "the target changed");
    Ok(())
}

fn rename_over_file(d: &Path) -> Check {
    let (src, dst, other) = (d.join("src"), d.join("dst"), d.join("other"));
    create(&src, 0o644)?;
    create(&dst, 0o644)?;
    ok("link", link(&dst, &other))?;
    let inode = ino(&src)?;
    let before = times(&other)?;
    tick();
    ok("rename over a file", rename(&src, &dst, 0))?;
    ensure!(ino(&dst)? == inode, "the destination does not name the source's inode");
    ensure!(nlink(&other)? == 1, "the replaced inode's nlink is {}", nlink(&other)?);
    ctime_advanced(&other, before, "the replaced inode")?;
    ok("symlink", symlink(Path::new("nowhere"), &d.join("l")))?;
    ok("rename over a symlink", rename(&dst, &d.join("l"), 0))?;
    ensure!(kind(&d.join("l"))? == libc::S_IFREG, "the symlink was not replaced");
    Ok(())
}

fn rename_over_empty_dir(d: &Path) -> Check {
    let (a, b) = (d.join("a"), d.join("b"));
    ok("mkdir", mkdir(&a, 0o755))?;
    ok("mkdir", mkdir(&b, 0o755))?;
    let inode = ino(&a)?;
    ok("rename a directory over an empty one", rename(&a, &b, 0))?;
    ensure!(ino(&b)? == inode, "the destination does not name the source's inode");
    ensure!(nlink(d)? == 3, "the parent's nlink is {}", nlink(d)?);
    Ok(())
}

fn rename_kind_errors(d: &Path) -> Check {
    let (a, b, f) = (d.join("a"), d.join("b"), d.join("f"));
    ok("mkdir", mkdir(&a, 0o755))?;
    ok("mkdir", mkdir(&b, 0o755))?;
    create(&b.join("x"), 0o644)?;
    create(&f, 0o644)?;
    fails("a directory over a non-empty one", rename(&a, &b, 0), libc::ENOTEMPTY)?;
    fails("a directory over a file", rename(&a, &f, 0), libc::ENOTDIR)?;
    fails("a file over a directory", rename(&f, &a, 0), libc::EISDIR)?;
    ensure!(kind(&a)? == libc::S_IFDIR && kind(&f)? == libc::S_IFREG, "a failed rename changed something");
    ensure!(lstat(&b.join("x")).is_ok(), "a failed rename changed the non-empty directory");
    Ok(())
}

fn rename_into_self(d: &Path) -> Check {
    let s = d.join("s");
    ok("mkdir", mkdir(&s, 0o755))?;
    ok("mkdir", mkdir(&s.join("t"), 0o755))?;
    fails("rename into its own child", rename(&s, &s.join("t/x"), 0), libc::EINVAL)?;
    fails("rename onto its own child", rename(&s, &s.join("t"), 0), libc::EINVAL)?;
    fails("rename of ..", rename(&s.join("t/.."), &d.join("x"), 0), libc::EBUSY)
}

fn rename_between_parents(d: &Path) -> Check {
    let (p1, p2) = (d.join("p1"), d.join("p2"));
    ok("mkdir", mkdir(&p1, 0o755))?;
    ok("mkdir", mkdir(&p2, 0o755))?;
    ok("mkdir", mkdir(&p1.join("s"), 0o755))?;
    ensure!(nlink(&p1)? == 3 && nlink(&p2)? == 2, "nlink before: {} {}", nlink(&p1)?, nlink(&p2)?);
    ok("rename", rename(&p1.join("s"), &p2.join("t"), 0))?;
    ensure!(nlink(&p1)? == 2 && nlink(&p2)? == 3, "nlink after: {} {}", nlink(&p1)?, nlink(&p2)?);
    ensure!(
        ok("stat ..", stat(&p2.join("t/..")))?.ino() == ino(&p2)?,
        "the moved directory's .. is not its new parent"
    );
    Ok(())
}

fn rename_parent_times(d: &Path) -> Check {
    let (p1, p2) = (d.join("p1"), d.join("p2"));
    ok("mkdir", mkdir(&p1, 0o755))?;
    ok("mkdir", mkdir(&p2, 0o755))?;
    create(&p1.join("f"), 0o644)?;
    let (t1, t2) = (times(&p1)?, times(&p2)?);
    tick();
    ok("rename", rename(&p1.join("f"), &p2.join("f"), 0))?;
    parent_advanced(&p1, t1, "rename, the old parent")?;
    parent_advanced(&p2, t2, "rename, the new parent")
}

fn rename_same_inode(d: &Path) -> Check {
    let (f, g) = (d.join("f"), d.join("g"));
    create(&f, 0o644)?;
    ok("link", link(&f, &g))?;
    ok("rename between links of one inode", rename(&f, &g, 0))?;
    ensure!(lstat(&f).is_ok() && lstat(&g).is_ok(), "a name went away");
    ensure!(nlink(&f)? == 2, "nlink {}", nlink(&f)?);
    Ok(())
}

fn rename_errors(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    fails("rename of a missing name", rename(&d.join("missing"), &d.join("x"), 0), libc::ENOENT)?;
    fails("rename into a missing directory", rename(&f, &d.join("missing/x"), 0), libc::ENOENT)?;
    fails("rename under a file", rename(&d.join("f/x"), &d.join("y"), 0), libc::ENOTDIR)?;
    fails("rename to under a file", rename(&f, &d.join("f/x"), 0), libc::ENOTDIR)?;
    ok("symlink", symlink(Path::new("b"), &d.join("a")))?;
    ok("symlink", symlink(Path::new("a"), &d.join("b")))?;
    fails("rename under a symlink loop", rename(&d.join("a/x"), &d.join("y"), 0), libc::ELOOP)
}

fn rename_noreplace(d: &Path) -> Check {
    let (f, g) = (d.join("f"), d.join("g"));
    write_file(&f, b"f")?;
    write_file(&g, b"g")?;
    fails("RENAME_NOREPLACE over a file", rename(&f, &g, libc::RENAME_NOREPLACE), libc::EEXIST)?;
    ensure!(ok("read", io(std::fs::read(&g)))? == b"g", "the destination changed");
    ok("RENAME_NOREPLACE to a free name", rename(&f, &d.join("h"), libc::RENAME_NOREPLACE))?;
    Ok(())
}

fn rename_exchange(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    write_file(&f, b"file")?;
    ok("mkdir", mkdir(&s, 0o755))?;
    create(&s.join("inside"), 0o644)?;
    let (fi, si) = (ino(&f)?, ino(&s)?);
    ok("RENAME_EXCHANGE", rename(&f, &s, libc::RENAME_EXCHANGE))?;
    ensure!(ino(&f)? == si && ino(&s)? == fi, "the names were not swapped");
    ensure!(kind(&f)? == libc::S_IFDIR && lstat(&f.join("inside")).is_ok(), "the directory moved without its entries");
    ensure!(ok("read", io(std::fs::read(&s)))? == b"file", "the file's content moved wrong");
    fails("RENAME_EXCHANGE with a missing name", rename(&f, &d.join("missing"), libc::RENAME_EXCHANGE), libc::ENOENT)
}

// ---- rmdir

fn rmdir_basic(d: &Path) -> Check {
    let s = d.join("s");
    ok("mkdir", mkdir(&s, 0o755))?;
    let before = times(d)?;
    tick();
    ok("rmdir", rmdir(&s))?;
    fails("lstat of the removed directory", lstat(&s).map(|_| ()), libc::ENOENT)?;
    parent_advanced(d, before, "rmdir")
}

fn rmdir_errors(d: &Path) -> Check {
    let s = d.join("s");
    ok("mkdir", mkdir(&s, 0o755))?;
    create(&s.join("f"), 0o644)?;
    ok("symlink", symlink(Path::new("nowhere"), &d.join("dangling")))?;
    fails("rmdir of a non-empty directory", rmdir(&s), libc::ENOTEMPTY)?;
    fails("rmdir of a file", rmdir(&s.join("f")), libc::ENOTDIR)?;
    fails("rmdir of a symlink", rmdir(&d.join("dangling")), libc::ENOTDIR)?;
    fails("rmdir of a missing name", rmdir(&d.join("missing")), libc::ENOENT)?;
    fails("rmdir of .", rmdir(&s.join(".")), libc::EINVAL)?;
    fails("rmdir of ..", rmdir(&s.join("..")), libc::ENOTEMPTY)?;
    fails("rmdir of a long name", rmdir(&d.join(name(256))), libc::ENAMETOOLONG)
}

// ---- symlink

fn symlink_basic(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("symlink", symlink(Path::new("f"), &s))?;
    ensure!(kind(&s)? == libc::S_IFLNK, "not a symlink");
    ensure!(ok("readlink", io(std::fs::read_link(&s)))? == Path::new("f"), "readlink answered another target");
    let m = ok("stat", stat(&s))?;
    ensure!(m.is_file() && m.mode() & 0o7777 == 0o644, "stat did not follow the link");
    ensure!(ok("lstat", lstat(&s))?.len() == 1, "a symlink's size is its target's length");
    Ok(())
}

fn symlink_dangling(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("symlink", symlink(&f, &s))?;
    ok("unlink the target", unlink(&f))?;
    fails("stat of a dangling link", stat(&s).map(|_| ()), libc::ENOENT)?;
    ok("unlink the link", unlink(&s))?;
    Ok(())
}

fn symlink_times(d: &Path) -> Check {
    let before = times(d)?;
    tick();
    ok("symlink", symlink(Path::new("t"), &d.join("s")))?;
    parent_advanced(d, before, "symlink")
}

fn symlink_long_target(d: &Path) -> Check {
    let target = "t/".repeat(2047) + "t";
    ensure!(target.len() == 4095, "the target is {} bytes", target.len());
    ok("symlink to 4095 bytes", symlink(Path::new(&target), &d.join("s")))?;
    let back = ok("readlink", io(std::fs::read_link(d.join("s"))))?;
    ensure!(back.as_os_str().len() == 4095 && back == Path::new(&target), "the target came back changed");
    fails("symlink to 4096 bytes", symlink(Path::new(&(target + "x")), &d.join("l")), libc::ENAMETOOLONG)
}

fn symlink_errors(d: &Path) -> Check {
    create(&d.join("f"), 0o644)?;
    ok("mkdir", mkdir(&d.join("s"), 0o755))?;
    for existing in ["f", "s"] {
        fails(&format!("symlink over {existing}"), symlink(Path::new("t"), &d.join(existing)), libc::EEXIST)?;
    }
    fails("symlink under a missing directory", symlink(Path::new("t"), &d.join("missing/x")), libc::ENOENT)?;
    fails("symlink under a file", symlink(Path::new("t"), &d.join("f/x")), libc::ENOTDIR)
}

// ---- truncate

fn truncate_sizes(d: &Path) -> Check {
    let f = d.join("f");
    write_file(&f, &[7u8; 12345])?;
    ok("truncate up", truncate(&f, 23456))?;
    let got = ok("read", io(std::fs::read(&f)))?;
    ensure!(got.len() == 23456, "size {}", got.len());
    ensure!(got[..12345].iter().all(|&b| b == 7) && got[12345..].iter().all(|&b| b == 0), "grown bytes are not zeros");
    ok("truncate down", truncate(&f, 1))?;
    ensure!(ok("read", io(std::fs::read(&f)))? == [7], "after shrinking to 1 byte");
    ok("truncate up again", truncate(&f, 1_234_567))?;
    let got = ok("read", io(std::fs::read(&f)))?;
    ensure!(got.len() == 1_234_567 && got[0] == 7 && got[1..].iter().all(|&b| b == 0), "shrunk bytes came back");
    Ok(())
}

fn truncate_times(d: &Path) -> Check {
    let f = d.join("f");
    write_file(&f, b"12345")?;
    let before = times(&f)?;
    tick();
    ok("truncate", truncate(&f, 123))?;
    let after = times(&f)?;
    ensure!(after.1 > before.1 && after.2 > before.2, "truncate did not advance mtime and ctime");
    Ok(())
}

fn truncate_errors(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    ok("mkdir", mkdir(&d.join("s"), 0o755))?;
    fails("truncate of a directory", truncate(&d.join("s"), 123), libc::EISDIR)?;
    fails("truncate of a missing name", truncate(&d.join("missing"), 1), libc::ENOENT)?;
    fails("truncate under a file", truncate(&d.join("f/x"), 1), libc::ENOTDIR)
}

fn ftruncate_fd(d: &Path) -> Check {
    let f = d.join("f");
    let fd = ok("create", open(&f, libc::O_CREAT | libc::O_RDWR, 0o644))?;
    let result = (|| {
        ok("ftruncate", ftruncate(&fd, 1_234_567))?;
        ensure!(ok("fstat", fstat(&fd))?.st_size == 1_234_567, "size after ftruncate up");
        ok("ftruncate", ftruncate(&fd, 567))?;
        ensure!(ok("stat", stat(&f))?.len() == 567, "size after ftruncate down, by path");
        Ok(())
    })();
    close(fd);
    result?;
    let fd = ok("open read-only", open(&f, libc::O_RDONLY, 0))?;
    let result = fails("ftruncate of a read-only descriptor", ftruncate(&fd, 1), libc::EINVAL);
    close(fd);
    result
}

// ---- unlink

fn unlink_basic(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("symlink", symlink(Path::new("t"), &s))?;
    let before = times(d)?;
    tick();
    ok("unlink a file", unlink(&f))?;
    parent_advanced(d, before, "unlink")?;
    ok("unlink a symlink", unlink(&s))?;
    fails("lstat of the unlinked file", lstat(&f).map(|_| ()), libc::ENOENT)?;
    fails("lstat of the unlinked symlink", lstat(&s).map(|_| ()), libc::ENOENT)
}

fn unlink_linked(d: &Path) -> Check {
    let (f, g) = (d.join("f"), d.join("g"));
    create(&f, 0o644)?;
    ok("link", link(&f, &g))?;
    let before = times(&g)?;
    tick();
    ok("unlink", unlink(&f))?;
    ensure!(nlink(&g)? == 1, "nlink {}", nlink(&g)?);
    ctime_advanced(&g, before, "unlink of another link")
}

fn unlink_errors(d: &Path) -> Check {
    create(&d.join("f"), 0o644)?;
    ok("mkdir", mkdir(&d.join("s"), 0o755))?;
    fails("unlink of a directory", unlink(&d.join("s")), libc::EISDIR)?;
    fails("unlink of a missing name", unlink(&d.join("missing")), libc::ENOENT)?;
    fails("unlink under a file", unlink(&d.join("f/x")), libc::ENOTDIR)?;
    fails("unlink of a long name", unlink(&d.join(name(256))), libc::ENAMETOOLONG)
}

fn unlink_open_file(d: &Path) -> Check {
    let f = d.join("f");
    let fd = ok("create", open(&f, libc::O_CREAT | libc::O_RDWR, 0o644))?;
    let result = (|| {
        ok("pwrite", pwrite(&fd, b"Hello, World!", 0))?;
        ok("unlink", unlink(&f))?;
        ensure!(ok("fstat", fstat(&fd))?.st_nlink == 0, "an unlinked open file's nlink is not 0");
        ensure!(ok("pread", pread(&fd, 13, 0))? == b"Hello, World!", "the data went with the name");
        Ok(())
    })();
    close(fd);
    result
}

// ---- utimensat

fn utimens_exact(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    for (atime, mtime) in [
        ((1_900_000_000, 0), (1_950_000_000, 0)),
        ((100_000_000, 100_000_000), (200_000_000, 200_000_000)),
        ((1 << 31, 1), (1 << 32, 999_999_999)),
    ] {
        ok("utimensat", utimens(&f, atime, mtime, 0))?;
        let m = ok("stat", stat(&f))?;
        ensure!((m.atime(), m.atime_nsec()) == atime, "atime {}.{:09} for {atime:?}", m.atime(), m.atime_nsec());
        ensure!((m.mtime(), m.mtime_nsec()) == mtime, "mtime {}.{:09} for {mtime:?}", m.mtime(), m.mtime_nsec());
    }
    ok("mkdir", mkdir(&d.join("s"), 0o755))?;
    ok("utimensat of a directory", utimens(&d.join("s"), (1_900_000_000, 0), (1_950_000_000, 0), 0))?;
    ensure!(ok("stat", stat(&d.join("s")))?.mtime() == 1_950_000_000, "a directory's mtime");
    fails("utimensat with a bad nanosecond", utimens(&f, (0, 1_000_000_000), (0, 0), 0), libc::EINVAL)
}

fn utimens_now_omit(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    ok("utimensat", utimens(&f, (1_000_000_000, 0), (1_100_000_000, 0), 0))?;
    ok("utimensat UTIME_OMIT mtime", utimens(&f, (1_900_000_000, 0), (0, fs::UTIME_OMIT), 0))?;
    let m = ok("stat", stat(&f))?;
    ensure!(m.atime() == 1_900_000_000 && m.mtime() == 1_100_000_000, "UTIME_OMIT for mtime");
    ok("utimensat UTIME_OMIT atime", utimens(&f, (0, fs::UTIME_OMIT), (1_950_000_000, 0), 0))?;
    let m = ok("stat", stat(&f))?;
    ensure!(m.atime() == 1_900_000_000 && m.mtime() == 1_950_000_000, "UTIME_OMIT for atime");
    ok("utimensat UTIME_NOW", utimens(&f, (0, fs::UTIME_NOW), (0, fs::UTIME_NOW), 0))?;
    let m = ok("stat", stat(&f))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    ensure!((m.atime() - now).abs() < 300 && (m.mtime() - now).abs() < 300, "UTIME_NOW is not now");
    Ok(())
}

fn utimens_ctime(d: &Path) -> Check {
    let f = d.join("f");
    create(&f, 0o644)?;
    let before = times(&f)?;
    tick();
    ok("utimensat", utimens(&f, (1_900_000_000, 0), (1_950_000_000, 0), 0))?;
    ctime_advanced(&f, before, "utimensat")
}

fn utimens_nofollow(d: &Path) -> Check {
    let (f, s) = (d.join("f"), d.join("s"));
    create(&f, 0o644)?;
    ok("utimensat", utimens(&f, (1_000_000_000, 0), (1_000_000_000, 0), 0))?;
    ok("symlink", symlink(&f, &s))?;
    ok(
        "utimensat AT_SYMLINK_NOFOLLOW",
        utimens(&s, (1_960_000_000, 0), (1_970_000_000, 0), libc::AT_SYMLINK_NOFOLLOW),
    )?;
    let own = ok("lstat", lstat(&s))?;
    ensure!(own.mtime() == 1_970_000_000, "the link's own mtime is {}", own.mtime());
    ensure!(ok("stat", stat(&f))?.mtime() == 1_000_000_000, "the target's mtime changed");
    ok("utimensat through the link", utimens(&s, (1_980_000_000, 0), (1_990_000_000, 0), 0))?;
    ensure!(ok("stat", stat(&f))?.mtime() == 1_990_000_000, "utimensat did not follow the link");
    Ok(())
}

// ---- readdir

fn readdir_all(d: &Path) -> Check {
    let mut want: Vec<String> = (0..300).map(|i| format!("entry-{i:03}")).collect();
    for name in &want {
        create(&d.join(name), 0o644)?;
    }
    ok("mkdir", mkdir(&d.join("sub"), 0o755))?;
    want.push("sub".into());
    let mut got: Vec<String> = ok("read_dir", io(std::fs::read_dir(d)))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    got.sort();
    want.sort();
    ensure!(got == want, "readdir listed {} entries, {} expected", got.len(), want.len());
    // `.` and `..` are listed by the raw call (std's iterator skips them).
    let dotdot = ok("stat ..", stat(&d.join("..")))?.ino();
    let parent = ok("stat", stat(d.parent().expect("a parent")))?.ino();
    ensure!(dotdot == parent, "`..` is not the parent");
    Ok(())
}

// ---- special files

fn mkfifo_works(d: &Path) -> Check {
    let f = d.join("fifo");
    ok("mkfifo", sys(fs::mkfifoat(fs::CWD, &f, perm(0o644))))?;
    ensure!(kind(&f)? == libc::S_IFIFO, "not a FIFO");
    Ok(())
}

fn mknod_device(d: &Path) -> Check {
    let c = d.join("char");
    ok("mknod", sys(fs::mknodat(fs::CWD, &c, fs::FileType::CharacterDevice, perm(0o644), fs::makedev(1, 2))))?;
    let m = ok("lstat", lstat(&c))?;
    ensure!(m.mode() & libc::S_IFMT == libc::S_IFCHR, "not a character device");
    ensure!((fs::major(m.rdev()), fs::minor(m.rdev())) == (1, 2), "device numbers");
    Ok(())
}

fn bind_socket(d: &Path) -> Check {
    let p = d.join("sock");
    let listener = ok("bind", io(std::os::unix::net::UnixListener::bind(&p)))?;
    drop(listener);
    ensure!(kind(&p)? == libc::S_IFSOCK, "not a socket");
    Ok(())
}
