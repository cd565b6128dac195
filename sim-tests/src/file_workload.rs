//! The large-file workload: each client owns its files (`/files/c<client>-<n>`) and changes
//! them with whole writes, writes at an offset, appends and truncates, spanning many blocks;
//! every byte it writes is a function of the file, the offset and the write
//! (`content_byte`), so the client keeps an exact model of each file and checks every read
//! against it. A write whose outcome is unknown retires the file: the final check accepts
//! either content for it (the write applied, or not), and the client moves to a new file.

use std::time::Duration;

use cffs_client::{Client, FsError};
use madsim::rand::Rng;

/// Largest file the workload makes (with 16 KiB blocks: about 25 blocks).
pub const FILE_SIZE_MAX: u64 = 400 * 1024;
/// Longest single write.
const WRITE_MAX: u64 = 60 * 1024;

/// The byte at `offset` of write `write` to file `file`.
pub fn content_byte(file: u64, offset: u64, write: u64) -> u8 {
    let mut z = (file << 48) ^ (write << 32) ^ offset;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u8
}

fn content(file: u64, offset: u64, len: u64, write: u64) -> Vec<u8> {
    (offset..offset + len).map(|o| content_byte(file, o, write)).collect()
}

/// A file's expected content: None = absent.
pub type Model = Option<Vec<u8>>;

/// What one file client recorded.
#[derive(Debug, Default, Clone)]
pub struct FileHistory {
    /// Reads whose bytes differ from what was written (path, what differed).
    pub bad_reads: Vec<String>,
    /// Every file and the contents it may have now: one, or two for a file whose last write
    /// has an unknown outcome.
    pub files: Vec<(String, Vec<Model>)>,
    pub writes_committed: u64,
    pub writes_unknown: u64,
    pub writes_failed: u64,
    pub reads_checked: u64,
    pub reads_failed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Replace { len: u64 },
    WriteAt { offset: u64, len: u64 },
    Append { len: u64 },
    Truncate { size: u64 },
}

fn apply(model: &Model, file: u64, write: u64, change: Change) -> Vec<u8> {
    let mut data = model.clone().unwrap_or_default();
    match change {
        Change::Replace { len } => data = content(file, 0, len, write),
        Change::WriteAt { offset, len } => {
            let end = (offset + len) as usize;
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset as usize..end].copy_from_slice(&content(file, offset, len, write));
        }
        Change::Append { len } => {
            let offset = data.len() as u64;
            data.extend(content(file, offset, len, write));
        }
        Change::Truncate { size } => data.resize(size as usize, 0),
    }
    data
}

/// One client: `ops` operations on its current file, `pause` apart.
pub async fn file_client(client: Client, client_id: u64, ops: usize, pause: Duration) -> FileHistory {
    let mut history = FileHistory::default();
    let mut number = 0u64;
    let mut model: Model = None;
    let path_of = |n: u64| format!("/files/c{client_id}-{n}");
    let file_of = |n: u64| client_id * 1000 + n;
    for write in 1..=ops as u64 {
        let path = path_of(number);
        let file = file_of(number);
        let size = model.as_ref().map_or(0, |m| m.len() as u64);
        let (roll, a, b) = {
            let mut rng = madsim::rand::thread_rng();
            (rng.gen_range(0..10), rng.gen_range(0..=FILE_SIZE_MAX), rng.gen_range(1..=WRITE_MAX))
        };
        let change = match roll {
            _ if model.is_none() => Some(Change::Replace { len: a / 2 }),
            0 => Some(Change::Replace { len: a / 2 }),
            1..=3 => Some(Change::WriteAt { offset: a.min(size + WRITE_MAX), len: b }),
            4 | 5 => Some(Change::Append { len: b }),
            6 => Some(Change::Truncate { size: a.min(size * 3 / 2 + 1000) }),
            _ => None,
        };
        let change = change.filter(|c| match *c {
            Change::WriteAt { offset, len } => offset + len <= FILE_SIZE_MAX,
            Change::Append { len } => size + len <= FILE_SIZE_MAX,
            _ => true,
        });
        let Some(change) = change else {
            // A read: a range, or the whole file; checked against the model.
            if model.is_none() {
                continue;
            }
            let (offset, len) = if roll == 7 { (0, size) } else { (a.min(size), b) };
            let p = path.clone();
            let result = client.run(|txn| {
                let p = p.clone();
                async move { txn.read_at(&p, offset, len as usize).await }
            });
            let result = result.await;
            if std::env::var_os("CFFS_DEBUG_FILES").is_some() {
                eprintln!(
                    "{:?} {path} read {len} at {offset} (size {size}) -> {:?}",
                    tokio::time::Instant::now(),
                    result.as_ref().map(|d| d.len())
                );
            }
            match result {
                Ok(data) => {
                    history.reads_checked += 1;
                    let expected = model.as_ref().map(|m| {
                        let end = (offset + len).min(m.len() as u64) as usize;
                        m[(offset as usize).min(end)..end].to_vec()
                    });
                    if let Some(expected) = expected.filter(|e| *e != data) {
                        let first = expected.iter().zip(&data).position(|(a, b)| a != b);
                        if std::env::var_os("CFFS_DEBUG_FILES").is_some() {
                            if let Some(i) = first {
                                let at = offset + i as u64;
                                let writers: Vec<u64> =
                                    (1..=write).filter(|w| content_byte(file, at, *w) == data[i]).collect();
                                let last_bad =
                                    expected.iter().zip(&data).rposition(|(a, b)| a != b).map(|j| offset + j as u64);
                                eprintln!("bad read at {at}..={last_bad:?}: the byte read is what writes {writers:?} wrote there");
                            }
                        }
                        history.bad_reads.push(format!(
                            "{path}: {len} bytes at {offset} of a {size}-byte file read {} bytes (expected {}) that differ from what was written, first at byte {:?} of the range (read {:?}, expected {:?})",
                            data.len(),
                            expected.len(),
                            first.map(|i| offset + i as u64),
                            first.map(|i| data[i]),
                            first.map(|i| expected[i]),
                        ));
                    }
                }
                // Every member answered and none had an intact copy: a committed block is lost.
                Err(FsError::DataLost(why)) => history.bad_reads.push(format!("{path}: a read lost data: {why}")),
                Err(error) => {
                    tracing::info!(%error, %path, "file read failed");
                    history.reads_failed += 1;
                }
            }
            tokio::time::sleep(pause).await;
            continue;
        };
        let p = path.clone();
        let result = client
            .run(|txn| {
                let p = p.clone();
                async move {
                    match change {
                        Change::Replace { len } => txn.write_file(&p, &content(file, 0, len, write)).await,
                        Change::WriteAt { offset, len } => {
                            txn.write_at(&p, offset, &content(file, offset, len, write)).await
                        }
                        Change::Append { len } => {
                            let size = txn.stat(&p).await?.size;
                            if std::env::var_os("CFFS_DEBUG_FILES").is_some() {
                                eprintln!("  {p} append {write}: the transaction sees size {size}");
                            }
                            txn.write_at(&p, size, &content(file, size, len, write)).await
                        }
                        Change::Truncate { size } => txn.truncate(&p, size).await,
                    }
                }
            })
            .await;
        if std::env::var_os("CFFS_DEBUG_FILES").is_some() {
            eprintln!("{:?} {path} write {write} {change:?} (size {size}) -> {result:?}", tokio::time::Instant::now());
        }
        match result {
            Ok(()) => {
                history.writes_committed += 1;
                model = Some(apply(&model, file, write, change));
            }
            Err(FsError::OutcomeUnknown(_)) => {
                history.writes_unknown += 1;
                let applied = Some(apply(&model, file, write, change));
                history.files.push((path, vec![model.take(), applied]));
                number += 1;
            }
            Err(FsError::DataLost(why)) => {
                // A write that patches a block read it first: that block is lost.
                history.bad_reads.push(format!("{path}: a write lost data: {why}"));
                history.writes_failed += 1;
            }
            Err(error) => {
                tracing::info!(%error, %path, "file write failed");
                history.writes_failed += 1;
            }
        }
        tokio::time::sleep(pause).await;
    }
    history.files.push((path_of(number), vec![model]));
    history
}

/// Creates the workload's directory.
pub async fn setup(client: &Client) -> Result<(), FsError> {
    client.run(|txn| async move { txn.mkdir_all("/files", 0o755).await }).await
}

/// Reads every file back (a fresh client, after healing) and compares it with what it may
/// hold; returns the problems found.
pub async fn check_finals(client: &Client, histories: &[FileHistory]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, models) in histories.iter().flat_map(|h| h.files.iter()) {
        let p = path.clone();
        let read = client
            .run(|txn| {
                let p = p.clone();
                async move {
                    match txn.read_file(&p).await {
                        Ok(data) => Ok(Some(data)),
                        Err(FsError::NotFound) => Ok(None),
                        Err(error) => Err(error),
                    }
                }
            })
            .await;
        match read {
            Ok(found) if models.contains(&found) => {}
            Ok(found) => problems.push(format!(
                "{path}: holds {} bytes, which is none of the {} contents it may hold",
                found.map_or("no file, 0".to_string(), |d| d.len().to_string()),
                models.len()
            )),
            Err(error) => problems.push(format!("{path}: cannot be read back after healing: {error}")),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_follows_each_change() {
        let m = Some(apply(&None, 1, 1, Change::Replace { len: 10 }));
        assert_eq!(m.as_ref().unwrap(), &content(1, 0, 10, 1));
        let m = Some(apply(&m, 1, 2, Change::WriteAt { offset: 15, len: 5 }));
        let data = m.as_ref().unwrap();
        assert_eq!(data.len(), 20);
        assert_eq!(&data[10..15], &[0; 5], "a hole reads as zeros");
        assert_eq!(data[15], content_byte(1, 15, 2));
        let m = Some(apply(&m, 1, 3, Change::Truncate { size: 12 }));
        assert_eq!(m.as_ref().unwrap().len(), 12);
        let m = Some(apply(&m, 1, 4, Change::Append { len: 3 }));
        assert_eq!(m.as_ref().unwrap()[12], content_byte(1, 12, 4));
    }
}
