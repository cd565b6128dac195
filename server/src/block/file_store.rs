//! The block store on a real disk: one file per block, `blocks/<first byte hex>/<id hex>`,
//! holding the block record (`store.rs`: header, then the data). Not compiled under madsim.
//!
//! A put writes `tmp/<id hex>`, fdatasyncs it, renames it into place and fsyncs the
//! directory: the rename is atomic, so a crash leaves the block absent or whole, and once the
//! directory is synced the name survives power loss. Each byte is written to the disk once.
//! At open, leftovers in `tmp/` are removed, and every block's header is read into an
//! in-memory index (stat and list never touch the disk); a file whose header fails its check
//! is moved to `quarantine/` (the scrubber then finds the block missing and repairs it).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::store::{block_id_hex, header_decode, header_encode, BlockId, BlockInfo, BlockStore, HEADER_LEN};
use crate::storage::StorageError;

pub struct FileBlockStore {
    root: PathBuf,
    index: Mutex<BTreeMap<BlockId, BlockInfo>>,
    /// Names temporary files apart, so two puts of one id (a retry racing the original)
    /// never write the same file.
    tmp_seq: AtomicU64,
}

fn io(what: impl std::fmt::Display, error: std::io::Error) -> StorageError {
    StorageError::Io(format!("{what}: {error}"))
}

fn parse_hex_id(name: &str) -> Option<BlockId> {
    if name.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

fn sync_dir(path: &Path) -> Result<(), StorageError> {
    File::open(path).and_then(|dir| dir.sync_all()).map_err(|e| io(format!("sync {}", path.display()), e))
}

impl FileBlockStore {
    pub fn open(root: &Path) -> Result<FileBlockStore, StorageError> {
        for sub in ["blocks", "tmp", "quarantine"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| io(format!("create {}", dir.display()), e))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| io("list tmp", e))? {
            let entry = entry.map_err(|e| io("list tmp", e))?;
            fs::remove_file(entry.path()).map_err(|e| io(format!("remove {}", entry.path().display()), e))?;
        }
        let mut index = BTreeMap::new();
        let blocks = root.join("blocks");
        for shard in fs::read_dir(&blocks).map_err(|e| io("list blocks", e))? {
            let shard = shard.map_err(|e| io("list blocks", e))?.path();
            for entry in fs::read_dir(&shard).map_err(|e| io(format!("list {}", shard.display()), e))? {
                let path = entry.map_err(|e| io("list blocks", e))?.path();
                let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(parse_hex_id) else {
                    continue;
                };
                let mut header = [0u8; HEADER_LEN];
                let read = File::open(&path).and_then(|mut file| file.read_exact(&mut header));
                let info = read.map_err(|e| io(format!("read {}", path.display()), e)).and_then(|()| {
                    let info = header_decode(id, &header)?;
                    let len = fs::metadata(&path).map_err(|e| io("stat block", e))?.len();
                    if len != (HEADER_LEN as u64) + u64::from(info.len) {
                        return Err(StorageError::corruption(format!("block {} has {len} bytes", block_id_hex(&id))));
                    }
                    Ok(info)
                });
                match info {
                    Ok(info) => {
                        index.insert(id, info);
                    }
                    Err(error) => {
                        tracing::error!(%error, path = %path.display(), "block record damaged: quarantined");
                        let aside = root.join("quarantine").join(block_id_hex(&id));
                        fs::rename(&path, &aside).map_err(|e| io("quarantine a block", e))?;
                    }
                }
            }
        }
        Ok(FileBlockStore { root: root.to_path_buf(), index: Mutex::new(index), tmp_seq: AtomicU64::new(0) })
    }

    fn shard_dir(&self, id: &BlockId) -> PathBuf {
        self.root.join("blocks").join(format!("{:02x}", id[0]))
    }

    fn path(&self, id: &BlockId) -> PathBuf {
        self.shard_dir(id).join(block_id_hex(id))
    }

    /// Writes the block record to `tmp/`, syncs it, renames it into place (over any copy
    /// there) and syncs the directory.
    fn write(&self, info: BlockInfo, data: &[u8], durable: bool) -> Result<(), StorageError> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{seq}", block_id_hex(&info.id)));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io(format!("create {}", tmp.display()), e))?;
        file.write_all(&header_encode(&info)).map_err(|e| io("write block", e))?;
        file.write_all(data).map_err(|e| io("write block", e))?;
        if durable {
            file.sync_data().map_err(|e| io("sync block", e))?;
        }
        drop(file);
        let shard = self.shard_dir(&info.id);
        if !shard.exists() {
            fs::create_dir_all(&shard).map_err(|e| io(format!("create {}", shard.display()), e))?;
            sync_dir(&self.root.join("blocks"))?;
        }
        fs::rename(&tmp, self.path(&info.id)).map_err(|e| io("rename block into place", e))?;
        if durable {
            sync_dir(&shard)?;
        }
        self.index.lock().expect("block index").insert(info.id, info);
        Ok(())
    }
}

impl BlockStore for FileBlockStore {
    fn put(&self, info: BlockInfo, data: &[u8], durable: bool) -> Result<(), StorageError> {
        if let Some(stored) = self.stat(&info.id)? {
            if stored.len == info.len && stored.crc == info.crc {
                return Ok(());
            }
            return Err(StorageError::Io(format!("block {} is stored with other contents", block_id_hex(&info.id))));
        }
        self.write(info, data, durable)
    }

    fn repair(&self, info: BlockInfo, data: &[u8]) -> Result<(), StorageError> {
        self.write(info, data, true)
    }

    fn get(&self, id: &BlockId) -> Result<Option<(BlockInfo, Vec<u8>)>, StorageError> {
        if self.stat(id)?.is_none() {
            return Ok(None);
        }
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.index.lock().expect("block index").remove(id);
                return Ok(None);
            }
            Err(error) => return Err(io(format!("read {}", path.display()), error)),
        };
        let info = header_decode(*id, &bytes)?;
        let data = bytes[HEADER_LEN..].to_vec();
        if data.len() != info.len as usize {
            return Err(StorageError::corruption(format!("block {} is truncated", block_id_hex(id))));
        }
        Ok(Some((info, data)))
    }

    fn stat(&self, id: &BlockId) -> Result<Option<BlockInfo>, StorageError> {
        Ok(self.index.lock().expect("block index").get(id).copied())
    }

    fn list(&self, start_after: Option<&BlockId>, limit: usize) -> Result<Vec<BlockInfo>, StorageError> {
        let index = self.index.lock().expect("block index");
        let range = match start_after {
            None => index.range::<BlockId, _>(..),
            Some(after) => index.range((std::ops::Bound::Excluded(*after), std::ops::Bound::Unbounded)),
        };
        Ok(range.take(limit).map(|(_, info)| *info).collect())
    }

    fn delete(&self, id: &BlockId) -> Result<(), StorageError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(format!("remove {}", path.display()), error)),
        }
        self.index.lock().expect("block index").remove(id);
        Ok(())
    }

    fn totals(&self) -> (u64, u64) {
        let index = self.index.lock().expect("block index");
        (index.len() as u64, index.values().map(|info| u64::from(info.len)).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u8, data: &[u8]) -> BlockInfo {
        BlockInfo { id: [id; 16], len: data.len() as u32, crc: crc32fast::hash(data), stored_at_ms: 5 }
    }

    #[test]
    fn blocks_survive_reopen_and_damage_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBlockStore::open(dir.path()).unwrap();
        let a = b"first block".to_vec();
        let b = vec![9u8; 70_000];
        store.put(info(1, &a), &a, true).unwrap();
        store.put(info(2, &b), &b, true).unwrap();
        // A retried put is a no-op; different contents under the same id are refused.
        store.put(info(1, &a), &a, true).unwrap();
        assert!(store.put(info(1, &b), &b, true).is_err());
        assert_eq!(store.totals(), (2, (a.len() + b.len()) as u64));
        // A leftover of a crashed put is removed at open.
        fs::write(dir.path().join("tmp").join(block_id_hex(&[3; 16])), b"half").unwrap();
        drop(store);
        let store = FileBlockStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&[1; 16]).unwrap().unwrap().1, a);
        assert_eq!(store.list(None, 10).unwrap().len(), 2);
        assert_eq!(store.list(Some(&[1; 16]), 10).unwrap()[0].id, [2; 16]);
        assert!(fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none());
        // A damaged header: quarantined at the next open, so the block reads as missing.
        let path = store.path(&[2; 16]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, bytes).unwrap();
        drop(store);
        let store = FileBlockStore::open(dir.path()).unwrap();
        assert!(store.get(&[2; 16]).unwrap().is_none());
        assert!(dir.path().join("quarantine").join(block_id_hex(&[2; 16])).exists());
        store.delete(&[1; 16]).unwrap();
        store.delete(&[1; 16]).unwrap();
        assert_eq!(store.totals(), (0, 0));
    }
}
