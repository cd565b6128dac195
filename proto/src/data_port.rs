//! The block data port's framing: a block's bytes from a client to a block server over a
//! plain TCP connection beside the gRPC service (docs/design/blocks.md, "The data port").
//!
//! gRPC copies a 4 MiB block three times on its way (the client encodes the message into a
//! buffer, the server gathers the HTTP/2 frames into one, and the store copies that into an
//! aligned buffer for direct I/O); on the data port the client writes the block from its own
//! memory to the socket and the server reads it from the socket into the buffer the disk
//! writes from: the kernel's copies only.
//!
//! One connection carries one request at a time, in order: a request head, the block's
//! bytes, then the server's reply head and message. Numbers are little-endian.
//!
//! Request head (32 bytes): `CFD1`, op u8 (1 = put), 3 zero bytes, block id (16 bytes),
//! crc32 u32, length u32. Then `length` bytes of block.
//! Reply head (8 bytes): code u32 (an `ErrorCode`; 0 is success), message length u32 (at most
//! `REPLY_MESSAGE_MAX`). Then the message, UTF-8.
//!
//! A head that cannot be parsed, or names a length outside (0, `BLOCK_SIZE_MAX`], is answered
//! and the connection closed (the server cannot find the next head); a block whose bytes do
//! not match its crc is answered and the connection goes on.

use crate::limits::{BLOCK_ID_LEN, BLOCK_SIZE_MAX};
use crate::v1::ErrorCode;

pub const MAGIC: [u8; 4] = *b"CFD1";
pub const REQUEST_HEAD_LEN: usize = 32;
pub const REPLY_HEAD_LEN: usize = 8;
/// Longest reply message a server sends (a longer one is cut).
pub const REPLY_MESSAGE_MAX: usize = 4096;
/// The op of a block write.
pub const OP_PUT: u8 = 1;

/// The head of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutHead {
    pub id: [u8; BLOCK_ID_LEN],
    pub crc: u32,
    pub len: u32,
}

/// Why a request head was refused, with the code the reply carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub code: ErrorCode,
    pub message: String,
}

impl PutHead {
    pub fn encode(&self) -> [u8; REQUEST_HEAD_LEN] {
        let mut head = [0u8; REQUEST_HEAD_LEN];
        head[..4].copy_from_slice(&MAGIC);
        head[4] = OP_PUT;
        head[8..24].copy_from_slice(&self.id);
        head[24..28].copy_from_slice(&self.crc.to_le_bytes());
        head[28..32].copy_from_slice(&self.len.to_le_bytes());
        head
    }

    pub fn decode(head: &[u8; REQUEST_HEAD_LEN]) -> Result<PutHead, HeadError> {
        let refuse = |code, message: String| Err(HeadError { code, message });
        if head[..4] != MAGIC {
            return refuse(ErrorCode::InvalidArgument, "not a CFFS data port request (bad magic)".into());
        }
        if head[4] != OP_PUT || head[5..8] != [0, 0, 0] {
            return refuse(ErrorCode::InvalidArgument, format!("unknown data port op {}", head[4]));
        }
        let len = u32::from_le_bytes(head[28..32].try_into().expect("4 bytes"));
        if len == 0 {
            return refuse(ErrorCode::InvalidArgument, "a block holds at least one byte".into());
        }
        if len > BLOCK_SIZE_MAX {
            return refuse(
                ErrorCode::TooLarge,
                format!("a block of {len} bytes is over the limit of {BLOCK_SIZE_MAX}"),
            );
        }
        Ok(PutHead {
            id: head[8..24].try_into().expect("16 bytes"),
            crc: u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")),
            len,
        })
    }
}

/// A reply: its head and message, ready to write. `None` is success.
pub fn reply_encode(error: Option<(ErrorCode, &str)>) -> Vec<u8> {
    let (code, message) = match error {
        None => (0, ""),
        Some((code, message)) => (code as i32 as u32, message),
    };
    let mut cut = message.len().min(REPLY_MESSAGE_MAX);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut reply = Vec::with_capacity(REPLY_HEAD_LEN + cut);
    reply.extend_from_slice(&code.to_le_bytes());
    reply.extend_from_slice(&(cut as u32).to_le_bytes());
    reply.extend_from_slice(&message.as_bytes()[..cut]);
    reply
}

/// A reply head: Ok(None) for success, Ok(Some((code, message length))) for a refusal, Err
/// for a head no server sends.
pub fn reply_head_decode(head: &[u8; REPLY_HEAD_LEN]) -> Result<Option<(ErrorCode, usize)>, String> {
    let code = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
    if len > REPLY_MESSAGE_MAX {
        return Err(format!("a data port reply message of {len} bytes"));
    }
    if code == 0 {
        return Ok(None);
    }
    let code = i32::try_from(code)
        .ok()
        .and_then(|code| ErrorCode::try_from(code).ok())
        .ok_or_else(|| format!("unknown data port reply code {code}"))?;
    Ok(Some((code, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_bad_ones_are_refused_with_their_code() {
        let head = PutHead { id: [9; 16], crc: 0xdead_beef, len: 4 << 20 };
        assert_eq!(PutHead::decode(&head.encode()), Ok(head));
        let refused = |bytes: [u8; REQUEST_HEAD_LEN]| PutHead::decode(&bytes).unwrap_err().code;
        let mut bad = head.encode();
        bad[0] = b'X';
        assert_eq!(refused(bad), ErrorCode::InvalidArgument);
        let mut bad = head.encode();
        bad[4] = 2;
        assert_eq!(refused(bad), ErrorCode::InvalidArgument);
        assert_eq!(refused(PutHead { len: 0, ..head }.encode()), ErrorCode::InvalidArgument);
        assert_eq!(refused(PutHead { len: BLOCK_SIZE_MAX + 1, ..head }.encode()), ErrorCode::TooLarge);
        assert!(PutHead::decode(&PutHead { len: BLOCK_SIZE_MAX, ..head }.encode()).is_ok());
    }

    #[test]
    fn replies_round_trip_and_long_messages_are_cut_on_a_char_boundary() {
        let ok = reply_encode(None);
        assert_eq!(reply_head_decode(&ok[..8].try_into().unwrap()), Ok(None));
        assert_eq!(ok.len(), REPLY_HEAD_LEN);
        let refusal = reply_encode(Some((ErrorCode::Checksum, "bad crc")));
        assert_eq!(reply_head_decode(&refusal[..8].try_into().unwrap()), Ok(Some((ErrorCode::Checksum, 7))));
        assert_eq!(&refusal[8..], b"bad crc");
        let long = "é".repeat(REPLY_MESSAGE_MAX);
        let cut = reply_encode(Some((ErrorCode::Storage, &long)));
        let (_, len) = reply_head_decode(&cut[..8].try_into().unwrap()).unwrap().unwrap();
        assert!(len <= REPLY_MESSAGE_MAX && std::str::from_utf8(&cut[8..]).is_ok());
        let mut unknown = [0u8; 8];
        unknown[0] = 200;
        assert!(reply_head_decode(&unknown).is_err());
    }
}
