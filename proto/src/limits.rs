//! Limits that are part of the protocol: a server rejects a request over them with
//! `INVALID_ARGUMENT` or `TOO_LARGE`, and a client checks them first to give a POSIX error.

/// Longest name of a directory entry, in bytes (POSIX NAME_MAX).
pub const NAME_LEN_MAX: usize = 255;

/// Largest file content kept inline in its inode; a larger file keeps its data in blocks.
/// A file is inline exactly when its size is at most this (the server checks it), so small
/// files cost one key and no block server. 64 KiB keeps one inode record well under the
/// commit bound.
pub const INLINE_DATA_MAX: usize = 64 * 1024;

/// Block size of new files when the cluster does not set one.
pub const BLOCK_SIZE_DEFAULT: u32 = 4 * 1024 * 1024;
/// Smallest block size a cluster may set (the simulation uses small blocks).
pub const BLOCK_SIZE_MIN: u32 = 4 * 1024;
/// Largest block size, and the largest block a block server stores: one block and its
/// framing fit one RPC message.
pub const BLOCK_SIZE_MAX: u32 = 8 * 1024 * 1024;
/// Length of a block id.
pub const BLOCK_ID_LEN: usize = 16;
/// Largest file size.
pub const FILE_SIZE_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// Most entries of one block map: with small blocks, this bounds the file size before
/// `FILE_SIZE_MAX` does. 65,536 entries are about 2.3 MB encoded, under the commit bound.
pub const BLOCK_MAP_ENTRIES_MAX: u64 = 65_536;

/// True when `size` is a valid block size: a power of two in BLOCK_SIZE_MIN..=BLOCK_SIZE_MAX.
pub fn is_valid_block_size(size: u32) -> bool {
    size.is_power_of_two() && (BLOCK_SIZE_MIN..=BLOCK_SIZE_MAX).contains(&size)
}

/// The largest size of a file with blocks of `block_size` bytes.
pub fn file_size_max(block_size: u32) -> u64 {
    FILE_SIZE_MAX.min(BLOCK_MAP_ENTRIES_MAX * u64::from(block_size))
}

/// Longest symlink target, in bytes (POSIX PATH_MAX).
pub const SYMLINK_TARGET_MAX: usize = 4096;

/// Most keys (reads plus writes) one transaction may carry.
pub const TXN_KEYS_MAX: usize = 4096;

/// Most bytes one commit request may carry, encoded.
pub const TXN_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest gRPC message either side accepts: a full commit plus room for framing, and a
/// snapshot chunk.
pub const RPC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// HTTP/2 flow-control windows of every channel and server: a stream may have a whole block
/// in flight (h2's default of 64 KiB makes a 4 MiB block wait for dozens of window updates),
/// a connection several.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 2 * BLOCK_SIZE_MAX;
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 * BLOCK_SIZE_MAX;
/// The largest HTTP/2 frame every server and channel accepts: h2's default of 16 KiB cuts a
/// 4 MiB block into 256 DATA frames, each read and parsed on its own.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1 << 20;

/// Most components one `LookupPath` request may name.
pub const LOOKUP_PATH_COMPONENTS_MAX: usize = 256;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;

/// Length of a transaction id.
pub const TXN_ID_LEN: usize = 16;

const _: () = assert!(TXN_BYTES_MAX + 1024 * 1024 <= RPC_MESSAGE_BYTES_MAX);
const _: () = assert!(INLINE_DATA_MAX * 4 < TXN_BYTES_MAX);
const _: () = assert!(BLOCK_SIZE_MAX as usize + 64 * 1024 <= RPC_MESSAGE_BYTES_MAX);
const _: () = assert!(BLOCK_SIZE_MIN as usize <= INLINE_DATA_MAX);

/// Why a name is not a valid directory entry name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    /// Contains '/' or NUL.
    BadByte,
    /// `.` or `..`.
    Dot,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameError::Empty => "empty name",
            NameError::TooLong => "name longer than 255 bytes",
            NameError::BadByte => "name contains '/' or NUL",
            NameError::Dot => "'.' or '..' is not a name",
        })
    }
}

/// Checks a directory entry name: 1 to 255 bytes, no '/', no NUL, not `.` or `..`.
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_LEN_MAX {
        return Err(NameError::TooLong);
    }
    if name.iter().any(|b| *b == b'/' || *b == 0) {
        return Err(NameError::BadByte);
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dot);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name(b"a"), Ok(()));
        assert_eq!(check_name(&[b'x'; 255]), Ok(()));
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::TooLong));
        assert_eq!(check_name(b""), Err(NameError::Empty));
        assert_eq!(check_name(b"a/b"), Err(NameError::BadByte));
        assert_eq!(check_name(b"a\0b"), Err(NameError::BadByte));
        assert_eq!(check_name(b"."), Err(NameError::Dot));
        assert_eq!(check_name(b".."), Err(NameError::Dot));
        assert_eq!(check_name(b"..."), Ok(()));
    }
}
