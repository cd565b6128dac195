//! Mounting: checks that a mount can work (the device, the directory), mounts the file
//! system with fuser (no libfuse: the mount syscall as root, else Debian's fusermount3), and
//! wires the client's lease invalidations to the kernel's caches.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use cffs_client::{cache::CacheKey, Client, FsError, Outcome};
use fuser::{BackgroundSession, MountOption};
use tokio::runtime::Handle;

use crate::fs::{CffsFs, Scope, Shared};

/// Where the kernel's FUSE device is.
const FUSE_DEVICE: &str = "/dev/fuse";

/// A mounted CFFS: unmounted when dropped.
pub struct Mounted {
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    runtime: Handle,
}

/// Why a mount cannot start, said so that the user knows what to do.
fn check_mountable(mountpoint: &Path) -> Result<(), String> {
    if !Path::new(FUSE_DEVICE).exists() {
        return Err(format!(
            "{FUSE_DEVICE} is missing: load the kernel's FUSE module (modprobe fuse), or give a container \
             --device {FUSE_DEVICE} --cap-add SYS_ADMIN"
        ));
    }
    if let Err(error) = std::fs::OpenOptions::new().read(true).write(true).open(FUSE_DEVICE) {
        return Err(format!(
            "cannot open {FUSE_DEVICE}: {error} (mounting needs root, or fusermount3 from the fuse3 package)"
        ));
    }
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{}: not a directory", mountpoint.display())),
        Err(error) => Err(format!("{}: {error}", mountpoint.display())),
    }
}

/// Mounts `client`'s file system at `mountpoint`; requests are served on `runtime`.
pub fn mount(
    client: Client,
    runtime: Handle,
    mountpoint: &Path,
    scope: Scope,
    allow_other: bool,
) -> Result<Mounted, String> {
    check_mountable(mountpoint)?;
    let shared = Arc::new(Shared::new(client.clone(), scope));
    let fs = CffsFs::new(shared.clone(), runtime.clone());
    let mut options = vec![
        MountOption::FSName("cffs".into()),
        MountOption::Subtype("cffs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if allow_other {
        options.push(MountOption::AllowOther);
    }
    let session = fuser::spawn_mount2(fs, mountpoint, &options).map_err(|error| {
        let hint = match error.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => " (mounting needs root or CAP_SYS_ADMIN)",
            _ => "",
        };
        format!("cannot mount at {}: {error}{hint}", mountpoint.display())
    })?;
    // Invalidations reach the kernel from a thread of their own: a notification can wait on
    // the kernel, which may be waiting on a reply of ours.
    let notifier = session.notifier();
    let (sender, receiver) = mpsc::channel::<u64>();
    std::thread::Builder::new()
        .name("cffs-invalidate".into())
        .spawn(move || {
            for ino in receiver {
                // ENOENT: the kernel holds nothing of that inode, which is fine.
                let _ = notifier.inval_inode(ino, 0, 0);
            }
        })
        .map_err(|error| format!("cannot start the invalidation thread: {error}"))?;
    let weak = Arc::downgrade(&shared);
    client.on_invalidate(Arc::new(move |keys: Option<&[CacheKey]>| {
        let inodes: Vec<u64> = match keys {
            Some(keys) => {
                keys.iter().filter_map(|key| if let CacheKey::Inode(ino) = key { Some(*ino) } else { None }).collect()
            }
            // The session was lost: what was cached may be stale, the open files' pages too.
            None => weak.upgrade().map(|shared| shared.open_inodes()).unwrap_or_default(),
        };
        for ino in inodes {
            let _ = sender.send(ino);
        }
    }));
    Ok(Mounted { session: Some(session), shared, mountpoint: mountpoint.to_path_buf(), runtime })
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// True once the kernel ended the session (an external `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|session| session.guard.is_finished())
    }

    /// `Scope::OneTransaction`: a new attempt, with a new transaction.
    pub fn begin_attempt(&self) {
        self.shared.begin_attempt();
    }

    /// `Scope::OneTransaction`: commits the attempt's transaction (blocking).
    pub fn commit_attempt(&self) -> Result<Outcome, FsError> {
        let shared = self.shared.clone();
        self.runtime.block_on(async move { shared.commit_attempt().await })
    }

    /// Unmounts (also done on drop): the kernel's session ends with it.
    pub fn unmount(mut self) {
        drop(self.session.take());
    }
}
