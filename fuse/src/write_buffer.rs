//! The bytes written to an open file and not yet handed to its transaction: disjoint extents
//! by offset, merged as writes arrive. A pure structure (no I/O), so that the kernel's small
//! writes (128 KiB at most) reach the transaction as a few large ones: a 4 MiB block is
//! written once, not patched 32 times copy-on-write.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent extents: start offset → bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteBuffer {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl WriteBuffer {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// The end of the furthest extent (0 when empty): the file is at least this long.
    pub fn end(&self) -> u64 {
        self.extents.last_key_value().map_or(0, |(start, data)| start + data.len() as u64)
    }

    /// Records `data` written at `offset`, over whatever was buffered there.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Every extent that overlaps or touches [offset, end) merges into one.
        let touching: Vec<u64> = self
            .extents
            .range(..=end)
            .rev()
            .take_while(|(start, bytes)| **start + bytes.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let start = touching.last().map_or(offset, |first| (*first).min(offset));
        let mut merged_end = end;
        let mut old: Vec<(u64, Vec<u8>)> = Vec::new();
        for key in touching {
            let bytes = self.extents.remove(&key).expect("listed above");
            self.bytes -= bytes.len();
            merged_end = merged_end.max(key + bytes.len() as u64);
            old.push((key, bytes));
        }
        let mut merged = vec![0u8; (merged_end - start) as usize];
        for (key, bytes) in old {
            let at = (key - start) as usize;
            merged[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.extents.insert(start, merged);
    }

    /// A read of `len` bytes at `offset` of a file of `size` bytes (its view's size or the
    /// buffer's end, whichever is larger): `view`, the bytes the transaction's view holds
    /// there, padded with zeros and overlaid with what was written since.
    pub fn overlay(&self, offset: u64, len: usize, mut view: Vec<u8>, size: u64) -> Vec<u8> {
        let end = (offset + len as u64).min(size);
        view.resize(end.saturating_sub(offset) as usize, 0);
        for (start, bytes) in self.extents.range(..end) {
            let extent_end = start + bytes.len() as u64;
            if extent_end <= offset {
                continue;
            }
            let (from, to) = ((*start).max(offset), extent_end.min(end));
            view[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
        }
        view
    }

    /// Cuts every extent at `size` (a truncate while bytes are buffered).
    pub fn truncate(&mut self, size: u64) {
        let past: Vec<u64> = self.extents.range(..).map(|(start, _)| *start).filter(|s| *s >= size).collect();
        for start in past {
            self.bytes -= self.extents.remove(&start).expect("listed").len();
        }
        if let Some((start, bytes)) = self.extents.iter_mut().next_back() {
            let keep = size.saturating_sub(*start) as usize;
            if bytes.len() > keep {
                self.bytes -= bytes.len() - keep;
                bytes.truncate(keep);
            }
        }
    }

    /// Takes every extent out, in offset order.
    pub fn take(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.extents).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(buffer: &WriteBuffer) -> Vec<(u64, Vec<u8>)> {
        buffer.clone().take()
    }

    #[test]
    fn sequential_writes_merge_into_one_extent() {
        let mut buffer = WriteBuffer::default();
        for i in 0..4u8 {
            buffer.write(u64::from(i) * 3, &[i; 3]);
        }
        assert_eq!(flat(&buffer), vec![(0, vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])]);
        assert_eq!((buffer.len(), buffer.end()), (12, 12));
    }

    #[test]
    fn an_overwrite_replaces_bytes_and_joins_neighbours() {
        let mut buffer = WriteBuffer::default();
        buffer.write(0, b"aaaa");
        buffer.write(10, b"cccc");
        assert_eq!(buffer.len(), 8);
        buffer.write(2, b"bbbbbbbbb"); // 2..11: joins both
        assert_eq!(flat(&buffer), vec![(0, b"aabbbbbbbbbccc".to_vec())]);
        assert_eq!(buffer.len(), 14);
        buffer.write(20, b"z");
        assert_eq!(buffer.end(), 21);
        assert_eq!(flat(&buffer).len(), 2);
    }

    #[test]
    fn a_write_inside_an_extent_keeps_its_length() {
        let mut buffer = WriteBuffer::default();
        buffer.write(5, b"0123456789");
        buffer.write(7, b"xy");
        assert_eq!(flat(&buffer), vec![(5, b"01xy456789".to_vec())]);
        assert_eq!(buffer.len(), 10);
    }

    #[test]
    fn overlay_patches_a_read_and_extends_it_past_the_view() {
        let mut buffer = WriteBuffer::default();
        buffer.write(2, b"XY");
        buffer.write(8, b"Z");
        // The view holds 6 bytes; a read of 16 from 0 sees the view, the writes, zeros between.
        assert_eq!(buffer.overlay(0, 16, b"abcdef".to_vec(), 9), b"abXYef\0\0Z".to_vec());
        // A read that starts inside an extent, and one past the end.
        assert_eq!(buffer.overlay(3, 2, b"de".to_vec(), 9), b"Ye".to_vec());
        assert_eq!(buffer.overlay(9, 4, Vec::new(), 9), Vec::<u8>::new());
    }

    #[test]
    fn truncate_cuts_extents() {
        let mut buffer = WriteBuffer::default();
        buffer.write(0, b"0123");
        buffer.write(10, b"abcd");
        buffer.truncate(2);
        assert_eq!(flat(&buffer), vec![(0, b"01".to_vec())]);
        assert_eq!(buffer.len(), 2);
        buffer.truncate(0);
        assert!(buffer.is_empty());
        assert_eq!(buffer.len(), 0);
    }
}
