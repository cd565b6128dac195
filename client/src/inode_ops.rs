//! Inode-addressed operations: the namespace as a kernel file system interface (the FUSE
//! mount) sees it, by directory inode and name or by inode number, in the same transaction
//! model as the path operations of `txn.rs`, which resolve a path and then call these.
//!
//! Validation stays as narrow as the path operations': a name created or removed is written
//! blindly and its directory updated commutatively (`AdjustDir`, which the leader refuses for
//! a directory that no longer exists, so a create in a directory removed meanwhile aborts);
//! only a directory moved to another parent reads the inodes from its new parent up to the
//! root (their `parent` links), so that two renames forming a loop cannot both commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use cffs_proto::limits::{check_name, ROOT_INO, SYMLINK_TARGET_MAX};
use cffs_proto::{Dentry, FileKind, Inode};

use crate::error::FsError;
use crate::txn::{attr_of, now_ns, Attr, DirEntry, Kind, Transaction};

/// Most directories walked up from a rename's new parent to the root: deeper than any path a
/// lookup accepts (PATH_MAX / 2), so a longer chain is a loop in the stored tree.
const ANCESTORS_MAX: usize = 2048;

/// How a rename treats an existing target (Linux's `renameat2` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace a target of a compatible kind (POSIX `rename`).
    Replace,
    /// Fail with `Exists` if the target exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap source and target, both of which must exist (`RENAME_EXCHANGE`).
    Exchange,
}

/// Attribute changes of `set_attr`; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Cut or extend (with zeros) a regular file.
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

fn is_dir(dentry: &Dentry) -> bool {
    dentry.kind == FileKind::Directory as i32
}

impl Transaction {
    /// The dentry `name` in directory `parent`, through the view, the cache and the leader.
    pub(crate) async fn dentry_at(&self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, FsError> {
        check_name(name)?;
        match self.lookup_local(parent, name) {
            Some(dentry) => Ok(dentry),
            None => self.lookup_remote(parent, name).await,
        }
    }

    /// The inode of a file this transaction reads or writes: the orphan an open handle keeps
    /// after its last name went, or the view's (cache's, leader's) copy.
    pub(crate) async fn file_view(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        if let Some(orphan) = self.state().orphans.get(&ino) {
            return Ok(Arc::new(orphan.clone()));
        }
        self.existing_inode(ino).await
    }

    /// Attributes of inode `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        attr_of(&*self.file_view(ino).await?)
    }

    /// The parent of directory `ino` (the root's is itself): what `..` names.
    pub async fn parent_of(&self, ino: u64) -> Result<u64, FsError> {
        let inode = self.existing_inode(ino).await?;
        if inode.kind != FileKind::Directory as i32 {
            return Err(FsError::NotDir);
        }
        Ok(if ino == ROOT_INO { ROOT_INO } else { inode.parent })
    }

    /// The entry `name` of directory `parent`: its inode number and kind, None when absent.
    pub async fn lookup_at(&self, parent: u64, name: &[u8]) -> Result<Option<DirEntry>, FsError> {
        let Some(dentry) = self.dentry_at(parent, name).await? else { return Ok(None) };
        Ok(Some(DirEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            ino: dentry.ino,
            kind: Kind::from_wire(dentry.kind)?,
        }))
    }

    /// The entries of directory `ino`, in name order, with this transaction's own changes
    /// (`.` and `..` not included). Joins the listing to the read set.
    pub async fn list_at(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let inode = self.existing_inode(ino).await?;
        if inode.kind != FileKind::Directory as i32 {
            return Err(FsError::NotDir);
        }
        let mut entries: BTreeMap<Vec<u8>, Dentry> = self.list_dir(ino).await?;
        for (name, dentry) in self.own_entries(ino) {
            match dentry {
                Some(dentry) => entries.insert(name, dentry),
                None => entries.remove(&name),
            };
        }
        entries
            .into_iter()
            .map(|(name, dentry)| {
                Ok(DirEntry {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    ino: dentry.ino,
                    kind: Kind::from_wire(dentry.kind)?,
                })
            })
            .collect()
    }

    /// Fails with `Exists` when `name` is taken in `parent`.
    async fn check_absent(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        match self.dentry_at(parent, name).await? {
            Some(_) => Err(FsError::Exists),
            None => Ok(()),
        }
    }

    pub async fn mkdir_at(&self, parent: u64, name: &[u8], mode: u32) -> Result<Attr, FsError> {
        self.check_absent(parent, name).await?;
        self.create_new(parent, name, Kind::Dir, mode, |_| ()).await
    }

    /// Creates the regular file `name` in `parent`. With `exclusive`, an existing name is
    /// `Exists`; without, an existing file is kept as it is (O_CREAT without O_EXCL).
    pub async fn create_at(&self, parent: u64, name: &[u8], mode: u32, exclusive: bool) -> Result<Attr, FsError> {
        if let Some(dentry) = self.dentry_at(parent, name).await? {
            if exclusive {
                return Err(FsError::Exists);
            }
            if is_dir(&dentry) {
                return Err(FsError::IsDir);
            }
            return self.getattr(dentry.ino).await;
        }
        self.create_new(parent, name, Kind::File, mode, |_| ()).await
    }

    /// Creates the symbolic link `name` in `parent` pointing at `target` (not checked to
    /// exist).
    pub async fn symlink_at(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<Attr, FsError> {
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() > SYMLINK_TARGET_MAX {
            return Err(FsError::NameTooLong);
        }
        self.check_absent(parent, name).await?;
        self.create_new(parent, name, Kind::Symlink, 0o777, |inode| {
            inode.symlink_target = target.to_vec();
            inode.size = target.len() as u64;
        })
        .await
    }

    /// A fresh inode of `kind`, named `name` in `parent` (checked absent by the caller).
    async fn create_new(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        mode: u32,
        fill: impl FnOnce(&mut Inode),
    ) -> Result<Attr, FsError> {
        let mut inode = self.new_inode(self.client.allocate_ino().await?, kind, mode);
        fill(&mut inode);
        let attr = attr_of(&inode)?;
        self.create_entry(parent, name, inode);
        Ok(attr)
    }

    /// Makes `name` in `parent` another name of the non-directory `ino` (a hard link).
    pub async fn link_at(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        self.check_absent(parent, name).await?;
        let mut inode = self.inode_to_write(ino).await?;
        if inode.kind == FileKind::Directory as i32 {
            return Err(FsError::NotPermitted);
        }
        inode.nlink += 1;
        inode.ctime_ns = now_ns();
        let attr = attr_of(&inode)?;
        let dentry = Dentry { ino, kind: inode.kind };
        self.put_inode(inode);
        self.put_dentry(parent, name, Some(dentry));
        self.update_dir(parent, 0);
        Ok(attr)
    }

    /// Removes the name of a non-directory (POSIX unlink).
    pub async fn unlink_at(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let dentry = self.dentry_at(parent, name).await?.ok_or(FsError::NotFound)?;
        if is_dir(&dentry) {
            return Err(FsError::IsDir);
        }
        self.put_dentry(parent, name, None);
        self.update_dir(parent, 0);
        self.drop_link(dentry.ino).await
    }

    /// Removes the empty directory `name` of `parent`.
    pub async fn rmdir_at(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let dentry = self.dentry_at(parent, name).await?.ok_or(FsError::NotFound)?;
        if !is_dir(&dentry) {
            return Err(FsError::NotDir);
        }
        if !self.readdir_ino(dentry.ino).await?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.put_dentry(parent, name, None);
        self.delete_inode(dentry.ino);
        self.update_dir(parent, -1);
        Ok(())
    }

    /// True when directory `dir` is `ancestor` or lies under it, following the stored
    /// `parent` links up to the root (each inode read joins the read set).
    async fn is_within(&self, dir: u64, ancestor: u64) -> Result<bool, FsError> {
        let mut at = dir;
        for _ in 0..ANCESTORS_MAX {
            if at == ancestor {
                return Ok(true);
            }
            if at == ROOT_INO {
                return Ok(false);
            }
            at = self.existing_inode(at).await?.parent;
        }
        Err(FsError::Loop)
    }

    /// Renames `name` of `parent` to `new_name` of `new_parent` (`mode`: renameat2's flags).
    /// A directory never moves under itself.
    pub async fn rename_at(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), FsError> {
        let moved = self.dentry_at(parent, name).await?.ok_or(FsError::NotFound)?;
        let replaced = self.dentry_at(new_parent, new_name).await?;
        match (mode, replaced) {
            (RenameMode::NoReplace, Some(_)) => return Err(FsError::Exists),
            (RenameMode::Exchange, None) => return Err(FsError::NotFound),
            _ => {}
        }
        if parent != new_parent {
            // Each directory that changes parent must not land inside itself.
            let into_itself = is_dir(&moved) && self.is_within(new_parent, moved.ino).await?;
            let back_into_itself = mode == RenameMode::Exchange
                && replaced.is_some_and(|r| is_dir(&r))
                && self.is_within(parent, replaced.map_or(0, |r| r.ino)).await?;
            if into_itself || back_into_itself {
                return Err(FsError::Invalid("cannot move a directory into its own subdirectory".into()));
            }
        }
        if mode == RenameMode::Exchange {
            let other = replaced.expect("checked above");
            if other.ino != moved.ino {
                self.put_dentry(parent, name, Some(other));
                self.put_dentry(new_parent, new_name, Some(moved));
                self.reparent(other, new_parent, parent).await?;
                self.reparent(moved, parent, new_parent).await?;
            }
            return Ok(());
        }
        self.rename_entry(parent, name, moved, new_parent, new_name, replaced).await
    }

    /// The move of a rename whose checks passed: `moved` (the entry `name` of `parent`)
    /// replaces `replaced` (if any) as `new_name` of `new_parent`, with POSIX's rules: a file
    /// may replace a file, a directory an empty directory.
    pub(crate) async fn rename_entry(
        &self,
        parent: u64,
        name: &[u8],
        moved: Dentry,
        new_parent: u64,
        new_name: &[u8],
        replaced: Option<Dentry>,
    ) -> Result<(), FsError> {
        if let Some(replaced) = replaced {
            if replaced.ino == moved.ino {
                return Ok(()); // the same file: POSIX says do nothing
            }
            match (is_dir(&moved), is_dir(&replaced)) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    if !self.readdir_ino(replaced.ino).await?.is_empty() {
                        return Err(FsError::NotEmpty);
                    }
                    self.delete_inode(replaced.ino);
                    self.update_dir(new_parent, -1);
                }
                (false, false) => self.drop_link(replaced.ino).await?,
            }
        }
        self.put_dentry(parent, name, None);
        self.put_dentry(new_parent, new_name, Some(moved));
        self.reparent(moved, parent, new_parent).await
    }

    /// The bookkeeping of `entry` moving from directory `from` to `to`: a directory's parent
    /// link and both directories' link counts, and both directories' times and listings.
    async fn reparent(&self, entry: Dentry, from: u64, to: u64) -> Result<(), FsError> {
        if !is_dir(&entry) {
            self.update_dir(from, 0);
            self.update_dir(to, 0);
            return Ok(());
        }
        let mut inode = self.inode_to_write(entry.ino).await?;
        inode.parent = to;
        inode.ctime_ns = now_ns();
        self.put_inode(inode);
        if from == to {
            self.update_dir(from, 0);
        } else {
            self.update_dir(from, -1);
            self.update_dir(to, 1);
        }
        Ok(())
    }

    /// The target of the symbolic link `ino`.
    pub async fn readlink_at(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.existing_inode(ino).await?;
        if inode.kind != FileKind::Symlink as i32 {
            return Err(FsError::Invalid(format!("inode {ino} is not a symbolic link")));
        }
        Ok(inode.symlink_target.clone())
    }

    /// Changes attributes of `ino` (chmod, chown, truncate, utimens in one); returns the new
    /// attributes.
    pub async fn set_attr(&self, ino: u64, changes: SetAttr) -> Result<Attr, FsError> {
        let mut inode = match changes.size {
            Some(size) => {
                let inode = self.file_view(ino).await?;
                if inode.kind != FileKind::Regular as i32 {
                    return Err(if inode.kind == FileKind::Directory as i32 {
                        FsError::IsDir
                    } else {
                        FsError::Invalid("only a regular file has a size to set".into())
                    });
                }
                self.resize(&inode, size).await?
            }
            None => Inode::clone(&*self.file_view(ino).await?),
        };
        if let Some(mode) = changes.mode {
            inode.mode = mode & 0o7777;
        }
        if let Some(uid) = changes.uid {
            inode.uid = uid;
        }
        if let Some(gid) = changes.gid {
            inode.gid = gid;
        }
        if let Some(atime) = changes.atime_ns {
            inode.atime_ns = atime;
        }
        if let Some(mtime) = changes.mtime_ns {
            inode.mtime_ns = mtime;
        }
        inode.ctime_ns = now_ns();
        let attr = attr_of(&inode)?;
        self.set_file(inode);
        Ok(attr)
    }

    /// Up to `len` bytes of file `ino` from `offset` (pread), readable after its last name
    /// went if it was opened; only the blocks the range touches are fetched.
    pub async fn read_ino(&self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        let inode = self.regular_file(ino).await?;
        self.read_range(&inode, offset, len as u64).await
    }

    /// Writes `data` at `offset` of file `ino` (pwrite), extending it with a hole if needed;
    /// copy-on-write of the blocks it touches. Returns the file's new size.
    pub async fn write_ino(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u64, FsError> {
        let inode = self.regular_file(ino).await?;
        let written = self.write_range(&inode, offset, data).await?;
        let size = written.size;
        self.set_file(written);
        Ok(size)
    }

    /// Marks `ino` open: after its last name is removed in this transaction it stays
    /// readable and writable here, as an open file does.
    pub fn hold_open(&self, ino: u64) {
        self.state().open.insert(ino);
    }

    /// Marks `ino` open outside this transaction: if this transaction removes its last
    /// name, the inode is kept with nlink 0 (readable and writable through the open
    /// handle, as POSIX asks) until `remove_if_unlinked` at the handle's last close. A
    /// client that dies in between leaves that inode behind, unreachable.
    pub fn keep_unlinked(&self, ino: u64) {
        self.state().keep_unlinked.insert(ino);
    }

    /// The inodes marked by `keep_unlinked` whose last name this transaction removed: the
    /// ones to `remove_if_unlinked` at their last close, once this transaction committed.
    pub fn kept_unlinked(&self) -> Vec<u64> {
        self.state().kept_unlinked.iter().copied().collect()
    }

    /// Deletes `ino` if it has no name left (kept by `keep_unlinked`); true if it did.
    pub async fn remove_if_unlinked(&self, ino: u64) -> Result<bool, FsError> {
        match self.inode(ino).await? {
            Some(inode) if inode.nlink == 0 && Kind::from_wire(inode.kind)? != Kind::Dir => {
                self.delete_inode(ino);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn regular_file(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        let inode = self.file_view(ino).await?;
        match Kind::from_wire(inode.kind)? {
            Kind::File => Ok(inode),
            Kind::Dir => Err(FsError::IsDir),
            Kind::Symlink => Err(FsError::Invalid(format!("inode {ino} is a symbolic link"))),
        }
    }
}
