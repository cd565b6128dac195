//! File data in a transaction: reads and writes of a regular file's bytes, inline in the
//! inode for small files and in blocks for the rest (docs/design/blocks.md).
//!
//! A file of at most `INLINE_DATA_MAX` bytes keeps its data in the inode; a larger one keeps
//! a block map: block `i` holds bytes `[i * B, i * B + len)` (B the file's block size), a
//! missing index is a hole, and bytes of a block's span past its `len` are zeros. Every
//! change is copy-on-write: the blocks it touches are written anew (under fresh ids, before
//! the commit), and the transaction's view of the inode gets the new map, which the commit
//! carries. So an aborted transaction leaves only garbage blocks, and a committed one
//! replaces the map whole. A block partly overwritten is read, patched and written again.
//!
//! Memory: a write of a buffer holds that buffer; `write_stream` and `read_stream` hold
//! about `BLOCKS_IN_FLIGHT` blocks whatever the file's size.

use std::collections::BTreeMap;
use std::sync::Arc;

use cffs_proto::limits::{file_size_max, INLINE_DATA_MAX};
use cffs_proto::{BlockRef, Inode};
use futures::{StreamExt, TryStreamExt};
use prost::bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::blocks::BLOCKS_IN_FLIGHT;
use crate::error::FsError;
use crate::txn::{now_ns, FileHandle, Transaction};

/// Zeros to write for holes and short blocks.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Where the old bytes of one block come from when a write patches it.
enum OldBlock {
    Hole,
    /// The former inline content (block 0 of a file turning into blocks).
    Inline(Bytes),
    Stored(BlockRef),
}

/// What a write of one block does: the block index, the byte range of the block it
/// overwrites, where in the new data that range starts, and what it patches.
struct BlockWrite {
    index: u64,
    /// Offset within the block, and how many bytes are written there.
    at: usize,
    len: usize,
    /// Offset of those bytes in the written data.
    from: usize,
    /// The block's old bytes to keep around the range (None: the range covers all of them).
    old: Option<OldBlock>,
    /// Bytes of the old file within this block's span.
    old_valid: usize,
}

/// The block writes of writing `len` bytes at `offset` into a file of `old_size` bytes with
/// blocks of `block_size` bytes, whose block `i` is `old(i)`. Pure: the plan of the write.
fn plan_write(
    offset: u64,
    len: u64,
    old_size: u64,
    block_size: u64,
    mut old: impl FnMut(u64) -> OldBlock,
) -> Vec<BlockWrite> {
    let end = offset + len;
    let mut plan = Vec::new();
    let (first, last) = (offset / block_size, (end - 1) / block_size);
    for index in first..=last {
        let span = index * block_size;
        let (a, b) = (offset.max(span), end.min(span + block_size));
        let old_valid = old_size.saturating_sub(span).min(block_size) as usize;
        let covers_old = a == span && (b - span) as usize >= old_valid;
        plan.push(BlockWrite {
            index,
            at: (a - span) as usize,
            len: (b - a) as usize,
            from: (a - offset) as usize,
            old: (!covers_old).then(|| old(index)),
            old_valid,
        });
    }
    plan
}

/// The block size a file's data goes in: its own, or the cluster's for a file that is
/// inline now.
async fn block_size_of(txn: &Transaction, inode: &Inode) -> Result<u64, FsError> {
    Ok(u64::from(match inode.block_size {
        0 => txn.client.block_size().await?,
        size => size,
    }))
}

fn blocks_of(inode: &Inode) -> BTreeMap<u64, BlockRef> {
    inode.blocks.iter().map(|b| (b.index, b.clone())).collect()
}

fn old_block(inode: &Inode, blocks: &BTreeMap<u64, BlockRef>, index: u64) -> OldBlock {
    if inode.block_size == 0 {
        return match index == 0 && !inode.data.is_empty() {
            true => OldBlock::Inline(Bytes::from(inode.data.clone())),
            false => OldBlock::Hole,
        };
    }
    match blocks.get(&index) {
        Some(block) => OldBlock::Stored(block.clone()),
        None => OldBlock::Hole,
    }
}

impl Transaction {
    /// Writes the inode back with new data (or into the orphan an open handle keeps).
    pub(crate) fn set_file(&self, inode: Inode) {
        let mut state = self.state();
        if let Some(orphan) = state.orphans.get_mut(&inode.ino) {
            *orphan = inode;
            return;
        }
        drop(state);
        self.put_inode(inode);
    }

    /// The inode with new data and times: inline `data`, or (`block_size` > 0) the block map.
    fn with_data(inode: &Inode, size: u64, data: Vec<u8>, block_size: u32, blocks: BTreeMap<u64, BlockRef>) -> Inode {
        let now = now_ns();
        Inode {
            size,
            data,
            block_size,
            blocks: blocks.into_values().collect(),
            mtime_ns: now,
            ctime_ns: now,
            ..inode.clone()
        }
    }

    /// `len` bytes of `inode`'s data from `offset` (fewer at the end of the file). Only the
    /// blocks the range touches are fetched, `BLOCKS_IN_FLIGHT` at a time.
    pub(crate) async fn read_range(&self, inode: &Inode, offset: u64, len: u64) -> Result<Vec<u8>, FsError> {
        let end = offset.saturating_add(len).min(inode.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if inode.block_size == 0 {
            return Ok(inode.data[offset as usize..end as usize].to_vec());
        }
        let size = usize::try_from(end - offset).map_err(|_| FsError::FileTooLarge)?;
        let block_size = u64::from(inode.block_size);
        let blocks = blocks_of(inode);
        let indexes = offset / block_size..=(end - 1) / block_size;
        let mut out = Vec::with_capacity(size);
        // Each block as fetched (shared with the cache: nothing is copied but the range read).
        let mut fetched = futures::stream::iter(indexes.map(|index| {
            let block = blocks.get(&index).cloned();
            async move {
                let bytes = match &block {
                    Some(block) => Some(self.client.get_block(block).await?),
                    None => None,
                };
                Ok::<_, FsError>((index * block_size, bytes))
            }
        }))
        .buffered(BLOCKS_IN_FLIGHT);
        while let Some((span, bytes)) = fetched.try_next().await? {
            let from = offset.saturating_sub(span) as usize;
            let to = ((end - span) as usize).min(block_size as usize);
            let data = bytes.as_deref().unwrap_or(&[]);
            let stored = &data[from.min(data.len())..to.min(data.len())];
            out.extend_from_slice(stored);
            // Past the block's bytes (or in a hole): zeros.
            out.resize(out.len() + (to - from - stored.len()), 0);
        }
        Ok(out)
    }

    /// Writes `data` at `offset` of `inode`'s data, copy-on-write; returns the new inode.
    pub(crate) async fn write_range(&self, inode: &Inode, offset: u64, data: &[u8]) -> Result<Inode, FsError> {
        if data.is_empty() {
            return Ok(inode.clone());
        }
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::FileTooLarge)?;
        let size = inode.size.max(end);
        if size <= INLINE_DATA_MAX as u64 {
            // Small files stay inline (and a file this small is inline already).
            let mut content = inode.data.clone();
            content.resize(size as usize, 0);
            content[offset as usize..end as usize].copy_from_slice(data);
            return Ok(Self::with_data(inode, size, content, 0, BTreeMap::new()));
        }
        let block_size = block_size_of(self, inode).await?;
        if size > file_size_max(block_size as u32) {
            return Err(FsError::FileTooLarge);
        }
        let mut blocks = blocks_of(inode);
        let plan = plan_write(offset, data.len() as u64, inode.size, block_size, |i| old_block(inode, &blocks, i));
        let touched: Vec<u64> = plan.iter().map(|w| w.index).collect();
        let written: Vec<BlockRef> = futures::stream::iter(plan.into_iter().map(|write| async move {
            let content = match write.old {
                None => Bytes::copy_from_slice(&data[write.from..write.from + write.len]),
                Some(old) => {
                    let mut bytes = match old {
                        OldBlock::Hole => Vec::new(),
                        OldBlock::Inline(bytes) => bytes.to_vec(),
                        OldBlock::Stored(block) => self.client.get_block(&block).await?.to_vec(),
                    };
                    bytes.resize(write.old_valid.max(write.at + write.len), 0);
                    bytes[write.at..write.at + write.len].copy_from_slice(&data[write.from..write.from + write.len]);
                    Bytes::from(bytes)
                }
            };
            let mut block = self.client.put_block(content).await?;
            block.index = write.index;
            Ok::<_, FsError>(block)
        }))
        .buffer_unordered(BLOCKS_IN_FLIGHT)
        .try_collect()
        .await?;
        let lose_last = touched.len() > 1 && loses_range();
        for block in written {
            if lose_last && Some(&block.index) == touched.last() {
                continue;
            }
            blocks.insert(block.index, block);
        }
        if !touched.contains(&0) {
            // The former inline content, untouched by this write, becomes block 0.
            self.inline_as_block_0(inode, &mut blocks).await?;
        }
        Ok(Self::with_data(inode, size, Vec::new(), block_size as u32, blocks))
    }

    /// An inline file turning into blocks: its bytes (if any) become block 0.
    async fn inline_as_block_0(&self, inode: &Inode, blocks: &mut BTreeMap<u64, BlockRef>) -> Result<(), FsError> {
        if inode.block_size == 0 && !inode.data.is_empty() {
            let block = self.client.put_block(Bytes::from(inode.data.clone())).await?;
            blocks.insert(0, BlockRef { index: 0, ..block });
        }
        Ok(())
    }

    /// `inode` cut or extended to `size` bytes (extended with zeros: a hole).
    pub(crate) async fn resize(&self, inode: &Inode, size: u64) -> Result<Inode, FsError> {
        if size <= INLINE_DATA_MAX as u64 {
            let mut content = self.read_range(inode, 0, size).await?;
            content.resize(size as usize, 0);
            return Ok(Self::with_data(inode, size, content, 0, BTreeMap::new()));
        }
        let block_size = block_size_of(self, inode).await?;
        if size > file_size_max(block_size as u32) {
            return Err(FsError::FileTooLarge);
        }
        let mut blocks = blocks_of(inode);
        if inode.block_size == 0 {
            self.inline_as_block_0(inode, &mut blocks).await?;
            return Ok(Self::with_data(inode, size, Vec::new(), block_size as u32, blocks));
        }
        // Blocks wholly past the new end go; the one the end cuts is written shorter.
        blocks.retain(|index, _| index * block_size < size);
        if let Some((&index, block)) = blocks.last_key_value() {
            let keep = size - index * block_size;
            if u64::from(block.len) > keep {
                let bytes = self.client.get_block(block).await?;
                let mut cut = self.client.put_block(bytes.slice(..keep as usize)).await?;
                cut.index = index;
                blocks.insert(index, cut);
            }
        }
        Ok(Self::with_data(inode, size, Vec::new(), block_size as u32, blocks))
    }

    // ----------------------------------------------------------------------------------
    // File data operations

    /// The whole content of the file at `path`.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let inode = self.file_inode(path, false).await?;
        self.read_range(&inode, 0, inode.size).await
    }

    /// Up to `len` bytes of the file at `path` from `offset` (pread); only the blocks the
    /// range touches are fetched.
    pub async fn read_at(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        let inode = self.file_inode(path, false).await?;
        self.read_range(&inode, offset, len as u64).await
    }

    /// Replaces the content of the file at `path`, creating it if missing.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let inode = self.file_inode(path, true).await?;
        let empty = Self::with_data(&inode, 0, Vec::new(), 0, BTreeMap::new());
        let written = self.write_range(&empty, 0, data).await?;
        self.set_file(written);
        Ok(())
    }

    /// Writes `data` at `offset` (pwrite), extending the file with a hole if needed.
    pub async fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let inode = self.file_inode(path, true).await?;
        let written = self.write_range(&inode, offset, data).await?;
        self.set_file(written);
        Ok(())
    }

    /// Appends `data` to the file at `path`, creating it if missing.
    pub async fn append(&self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let inode = self.file_inode(path, true).await?;
        let written = self.write_range(&inode, inode.size, data).await?;
        self.set_file(written);
        Ok(())
    }

    /// Cuts or extends (with zeros) the file at `path` to `size` bytes.
    pub async fn truncate(&self, path: &str, size: u64) -> Result<(), FsError> {
        let inode = self.file_inode(path, false).await?;
        let resized = self.resize(&inode, size).await?;
        self.set_file(resized);
        Ok(())
    }

    /// The content of a file opened with `open` (readable after its last name is removed
    /// in this transaction).
    pub async fn read_handle(&self, handle: FileHandle) -> Result<Vec<u8>, FsError> {
        let orphan = self.state().orphans.get(&handle.ino).cloned();
        let inode = match orphan {
            Some(inode) => Arc::new(inode),
            None => self.existing_inode(handle.ino).await?,
        };
        self.read_range(&inode, 0, inode.size).await
    }

    /// Replaces the content of the file at `path` (created if missing) with everything
    /// `reader` yields, writing blocks as they fill, `BLOCKS_IN_FLIGHT` at a time: memory is
    /// bounded by blocks in flight, not by the file's size. `progress` is called with the
    /// bytes read so far. Returns the file's new size.
    pub async fn write_stream<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mut reader: R,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, FsError> {
        let inode = self.file_inode(path, true).await?;
        // Up to the inline limit first: a small stream stays inline.
        let mut head = Vec::with_capacity(INLINE_DATA_MAX + 1);
        read_up_to(&mut reader, &mut head, INLINE_DATA_MAX + 1).await?;
        progress(head.len() as u64);
        if head.len() <= INLINE_DATA_MAX {
            let size = head.len() as u64;
            self.set_file(Self::with_data(&inode, size, head, 0, BTreeMap::new()));
            return Ok(size);
        }
        let block_size = self.client.block_size().await?;
        let limit = file_size_max(block_size);
        let block_len = block_size as usize;
        let mut blocks = BTreeMap::new();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let (mut read, mut index, mut buffer, mut eof) = (head.len() as u64, 0u64, head, false);
        loop {
            // Cut full blocks (and, at the end, the last short one) while there is room.
            while in_flight.len() < BLOCKS_IN_FLIGHT {
                if !eof && buffer.len() < block_len {
                    let before = buffer.len();
                    eof = !read_up_to(&mut reader, &mut buffer, block_len).await?;
                    read += (buffer.len() - before) as u64;
                    progress(read);
                }
                if buffer.is_empty() {
                    break;
                }
                if read > limit {
                    return Err(FsError::FileTooLarge);
                }
                let rest = buffer.split_off(buffer.len().min(block_len));
                let block = Bytes::from(std::mem::replace(&mut buffer, rest));
                let this = index;
                index += 1;
                let put = self.client.put_block(block);
                in_flight.push(async move { put.await.map(|b| BlockRef { index: this, ..b }) });
            }
            match in_flight.next().await {
                Some(block) => {
                    let block = block?;
                    blocks.insert(block.index, block);
                }
                None => break,
            }
        }
        self.set_file(Self::with_data(&inode, read, Vec::new(), block_size, blocks));
        Ok(read)
    }

    /// Writes the content of the file at `path` to `writer`, fetching blocks
    /// `BLOCKS_IN_FLIGHT` ahead. `progress` is called with the bytes written so far.
    /// Returns the file's size.
    pub async fn read_stream<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        mut writer: W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, FsError> {
        let inode = self.file_inode(path, false).await?;
        let io = |e: std::io::Error| FsError::Internal(format!("write: {e}"));
        if inode.block_size == 0 {
            writer.write_all(&inode.data).await.map_err(io)?;
            progress(inode.size);
        } else {
            let block_size = u64::from(inode.block_size);
            let blocks = blocks_of(&inode);
            let count = inode.size.div_ceil(block_size);
            let mut fetched = futures::stream::iter((0..count).map(|index| {
                let block = blocks.get(&index).cloned();
                let want = (inode.size - index * block_size).min(block_size) as usize;
                async move {
                    let bytes = match &block {
                        Some(block) => Some(self.client.get_block(block).await?),
                        None => None,
                    };
                    Ok::<_, FsError>((bytes, want))
                }
            }))
            .buffered(BLOCKS_IN_FLIGHT);
            let mut written = 0u64;
            while let Some((bytes, want)) = fetched.try_next().await? {
                // The block's bytes as fetched, then zeros to the end of its span (a hole, or
                // a short block).
                let data = bytes.as_deref().unwrap_or(&[]);
                let stored = &data[..data.len().min(want)];
                writer.write_all(stored).await.map_err(io)?;
                let mut zeros = want - stored.len();
                while zeros > 0 {
                    let n = zeros.min(ZEROS.len());
                    writer.write_all(&ZEROS[..n]).await.map_err(io)?;
                    zeros -= n;
                }
                written += want as u64;
                progress(written);
            }
        }
        writer.flush().await.map_err(io)?;
        Ok(inode.size)
    }
}

/// Reads from `reader` until `buffer` holds `want` bytes or the reader ends; false at the
/// end of the stream.
async fn read_up_to<R: AsyncRead + Unpin>(reader: &mut R, buffer: &mut Vec<u8>, want: usize) -> Result<bool, FsError> {
    let mut chunk = vec![0u8; 256 * 1024];
    while buffer.len() < want {
        let room = (want - buffer.len()).min(chunk.len());
        let n = reader.read(&mut chunk[..room]).await.map_err(|e| FsError::Internal(format!("read: {e}")))?;
        if n == 0 {
            return Ok(false);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(true)
}

/// The planted bug that loses a range of a multi-block write (`planted.rs`).
fn loses_range() -> bool {
    #[cfg(madsim)]
    return crate::planted::block_map_loses_range();
    #[cfg(not(madsim))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(index: u64) -> OldBlock {
        OldBlock::Stored(BlockRef { index, ..Default::default() })
    }

    #[test]
    fn a_write_reads_only_the_blocks_it_patches() {
        // 10 blocks of 100 bytes; a write of 220 bytes at 150: half of block 1, all of
        // block 2, the start of block 3.
        let plan = plan_write(150, 220, 1000, 100, stored);
        let shape: Vec<(u64, usize, usize, usize, bool)> =
            plan.iter().map(|w| (w.index, w.at, w.len, w.from, w.old.is_some())).collect();
        assert_eq!(shape, vec![(1, 50, 50, 0, true), (2, 0, 100, 50, false), (3, 0, 70, 150, true)]);
        // Past the old end: a block that starts at the write covers the old bytes.
        let plan = plan_write(1000, 150, 1000, 100, stored);
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|w| w.old.is_none()));
        // An append into the middle of the last block keeps the bytes before it.
        let plan = plan_write(1050, 10, 1080, 100, stored);
        assert_eq!((plan[0].index, plan[0].at, plan[0].old_valid, plan[0].old.is_some()), (10, 50, 80, true));
        // A write at the start of a block shorter than the old data there keeps the rest.
        let plan = plan_write(200, 10, 1000, 100, stored);
        assert!(plan[0].old.is_some());
    }
}
