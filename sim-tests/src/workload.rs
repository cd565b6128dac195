//! Workloads run by simulated clients, recorded as histories of (operation, outcome) for the
//! checkers: counters, bank transfers and audits, namespace churn, list-append, and listings
//! read through the cache. A timed-out or otherwise unknown outcome is recorded as unknown,
//! never as a failure. What the checkers decide is theirs (`checker/`); the workloads only
//! record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cffs_client::{Client, FsError};
use tokio::time::Instant;

use crate::checker::bank::{Account, Audit, Transfer};
use crate::checker::elle::{Op, Txn};
use crate::checker::listing::{Change, DirRead, EntryKind, EntryOp};
use crate::checker::Outcome;
use crate::cluster::Cluster;

/// What one client saw of its increments, per counter file.
#[derive(Debug, Default, Clone)]
pub struct CounterHistory {
    /// Increments acknowledged as committed.
    pub acked: Vec<u64>,
    /// Increments whose outcome is unknown (may or may not have been applied, at most once).
    pub unknown: Vec<u64>,
    /// Increments that definitely failed (nothing applied).
    pub failed: u64,
    /// Acknowledged increments: (counter, value written, when acknowledged).
    pub writes: Vec<(usize, u64, tokio::time::Instant)>,
    /// Committed read-only reads: (counter, value read, when the read was invoked).
    pub reads: Vec<(usize, u64, tokio::time::Instant)>,
}

pub fn counter_path(file: usize) -> String {
    format!("/counters/c{file}")
}

/// Creates the counter files, all zero.
pub async fn counter_setup(client: &Client, files: usize) -> Result<(), FsError> {
    client
        .run(|txn| async move {
            txn.mkdir_all("/counters", 0o755).await?;
            for file in 0..files {
                txn.write_file(&counter_path(file), b"0").await?;
            }
            Ok(())
        })
        .await
}

/// Reads every counter in one transaction.
pub async fn counter_values(client: &Client, files: usize) -> Result<Vec<u64>, FsError> {
    client
        .run(|txn| async move {
            let mut values = Vec::new();
            for file in 0..files {
                let data = txn.read_file(&counter_path(file)).await?;
                values
                    .push(String::from_utf8_lossy(&data).parse::<u64>().map_err(|e| FsError::Internal(e.to_string()))?);
            }
            Ok(values)
        })
        .await
}

async fn read_counter(txn: &cffs_client::Transaction, file: usize) -> Result<u64, FsError> {
    let data = txn.read_file(&counter_path(file)).await?;
    String::from_utf8_lossy(&data).parse().map_err(|_| FsError::Internal("counter is garbled".into()))
}

/// One client: `ops` operations on counters chosen at random, each one `Client::run`: two in
/// three are increments (read, add one, write back), one in three a read-only read.
pub async fn counter_client(client: Client, files: usize, ops: usize, pause: Duration) -> CounterHistory {
    use rand::Rng;
    let mut history = CounterHistory { acked: vec![0; files], unknown: vec![0; files], ..Default::default() };
    for _ in 0..ops {
        let (file, read_only) = {
            let mut rng = madsim::rand::thread_rng();
            (rng.gen_range(0..files), rng.gen_ratio(1, 3))
        };
        if read_only {
            let invoked = tokio::time::Instant::now();
            if let Ok(value) = client.run(|txn| async move { read_counter(&txn, file).await }).await {
                history.reads.push((file, value, invoked));
            }
            tokio::time::sleep(pause).await;
            continue;
        }
        let result = client
            .run(|txn| async move {
                let n = read_counter(&txn, file).await?;
                txn.write_file(&counter_path(file), (n + 1).to_string().as_bytes()).await?;
                Ok(n + 1)
            })
            .await;
        match result {
            Ok(value) => {
                history.acked[file] += 1;
                history.writes.push((file, value, tokio::time::Instant::now()));
            }
            Err(FsError::OutcomeUnknown(_)) => history.unknown[file] += 1,
            Err(error) => {
                tracing::info!(%error, "increment failed");
                history.failed += 1
            }
        }
        tokio::time::sleep(pause).await;
    }
    history
}

/// A lease watcher: read-only reads of counter 0, `pause` apart, for as long as `writing`
/// (the counter clients still running) is not zero, served from its cache while its leases
/// hold. The nemesis cuts it off or pauses it more often than other clients
/// (`Cluster::set_watcher`), so that a write the leader lets through before the watcher's
/// lease ends shows as a stale read (checked with the counters' real-time order).
pub async fn counter_watcher(
    client: Client,
    files: usize,
    writing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pause: Duration,
) -> CounterHistory {
    let mut history = CounterHistory { acked: vec![0; files], unknown: vec![0; files], ..Default::default() };
    while writing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        let invoked = tokio::time::Instant::now();
        if let Ok(value) = client.run(|txn| async move { read_counter(&txn, 0).await }).await {
            history.reads.push((0, value, invoked));
        }
        tokio::time::sleep(pause).await;
    }
    history
}

/// Runs `clients` counter clients on their own nodes; returns their join handles.
pub fn counter_clients(
    cluster: &Cluster,
    clients: usize,
    files: usize,
    ops: usize,
    pause: Duration,
) -> Vec<madsim::task::JoinHandle<CounterHistory>> {
    (0..clients)
        .map(|_| {
            let endpoints = cluster.endpoints();
            cluster.client_node().spawn(async move {
                let client = Client::connect(&endpoints).expect("endpoints are valid");
                counter_client(client, files, ops, pause).await
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Bank: transfers between account files; read-only audits of every account. Each account
// file holds its balance and the ids of the transfers applied to it, oldest first
// ("balance;id,id,..."), so that an audit says exactly which transfers it saw
// (`checker::bank`).

pub const BANK_BALANCE_INITIAL: u64 = 100;

pub fn account_path(account: usize) -> String {
    format!("/bank/a{account}")
}

pub async fn bank_setup(client: &Client, accounts: usize) -> Result<(), FsError> {
    client
        .run(|txn| async move {
            txn.mkdir_all("/bank", 0o755).await?;
            for account in 0..accounts {
                let initial = Account { balance: BANK_BALANCE_INITIAL, transfers: Vec::new() };
                txn.write_file(&account_path(account), &account_encode(&initial)).await?;
            }
            Ok(())
        })
        .await
}

fn account_encode(account: &Account) -> Vec<u8> {
    let ids: Vec<String> = account.transfers.iter().map(|id| id.to_string()).collect();
    format!("{};{}", account.balance, ids.join(",")).into_bytes()
}

fn account_decode(account: usize, data: &[u8]) -> Result<Account, FsError> {
    let garbled = || FsError::Internal(format!("account {account} is garbled: {}", String::from_utf8_lossy(data)));
    let text = std::str::from_utf8(data).map_err(|_| garbled())?;
    let (balance, ids) = text.split_once(';').ok_or_else(garbled)?;
    let balance = balance.parse().map_err(|_| garbled())?;
    let transfers = ids
        .split(',')
        .filter(|id| !id.is_empty())
        .map(|id| id.parse().map_err(|_| garbled()))
        .collect::<Result<_, _>>()?;
    Ok(Account { balance, transfers })
}

async fn account_read(txn: &cffs_client::Transaction, account: usize) -> Result<Account, FsError> {
    account_decode(account, &txn.read_file(&account_path(account)).await?)
}

/// What one bank client saw: every transfer it made (with its outcome), its committed
/// audits, and its outcome counts.
#[derive(Debug, Default, Clone)]
pub struct BankHistory {
    /// Transfers that would write (a transfer that finds too little money, or names one
    /// account twice, writes nothing and is not recorded).
    pub transfers: Vec<Transfer<Instant>>,
    pub audits: Vec<Audit<Instant>>,
    /// Committed transfer transactions, those that wrote nothing included.
    pub transfers_acked: u64,
    pub unknown: u64,
    pub unavailable: u64,
    /// Errors no correct cluster gives a bank client (a missing or garbled account).
    pub errors: Vec<String>,
}

/// One bank client: `ops` operations, each a transfer between two random accounts or (one in
/// four) an audit reading every account in one transaction. `client_id` makes its transfer
/// ids unique.
pub async fn bank_client(client: Client, client_id: u64, accounts: usize, ops: usize, pause: Duration) -> BankHistory {
    use rand::Rng;
    let mut history = BankHistory::default();
    for seq in 1..=ops as u64 {
        let (audit, from, to, amount) = {
            let mut rng = madsim::rand::thread_rng();
            (rng.gen_ratio(1, 4), rng.gen_range(0..accounts), rng.gen_range(0..accounts), rng.gen_range(1..=30u64))
        };
        let invoked = Instant::now();
        if audit {
            let result = client
                .run(|txn| async move {
                    let mut state = Vec::with_capacity(accounts);
                    for account in 0..accounts {
                        state.push(account_read(&txn, account).await?);
                    }
                    Ok(state)
                })
                .await;
            match result {
                Ok(state) => history.audits.push(Audit { accounts: state, invoked, completed: Instant::now() }),
                Err(error) => note_error(&mut history, error),
            }
        } else {
            let id = client_id << 32 | seq;
            let result = client
                .run(|txn| async move {
                    if from == to {
                        return Ok(false);
                    }
                    let (mut a, mut b) = (account_read(&txn, from).await?, account_read(&txn, to).await?);
                    if a.balance < amount {
                        return Ok(false);
                    }
                    a.balance -= amount;
                    b.balance += amount;
                    a.transfers.push(id);
                    b.transfers.push(id);
                    txn.write_file(&account_path(from), &account_encode(&a)).await?;
                    txn.write_file(&account_path(to), &account_encode(&b)).await?;
                    Ok(true)
                })
                .await;
            let completed = Instant::now();
            let transfer = |outcome| Transfer { id, from, to, amount, outcome, invoked, completed };
            match result {
                Ok(wrote) => {
                    history.transfers_acked += 1;
                    if wrote {
                        history.transfers.push(transfer(Outcome::Committed));
                    }
                }
                Err(FsError::OutcomeUnknown(_)) => {
                    history.transfers.push(transfer(Outcome::Unknown));
                    history.unknown += 1;
                }
                Err(error) => {
                    history.transfers.push(transfer(Outcome::Failed));
                    note_error(&mut history, error);
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
    history
}

fn note_error(history: &mut BankHistory, error: FsError) {
    match error {
        FsError::OutcomeUnknown(_) => history.unknown += 1,
        FsError::Unavailable(_) | FsError::Busy(_) => history.unavailable += 1,
        // The accounts exist from the start: any other error means the state went wrong.
        other => history.errors.push(other.to_string()),
    }
}

/// Every account, read in one transaction.
pub async fn bank_accounts(client: &Client, accounts: usize) -> Result<Vec<Account>, FsError> {
    client
        .run(|txn| async move {
            let mut state = Vec::with_capacity(accounts);
            for account in 0..accounts {
                state.push(account_read(&txn, account).await?);
            }
            Ok(state)
        })
        .await
}

// ---------------------------------------------------------------------------------------
// Namespace: random create, mkdir, rename (directories too), unlink, link, rmdir, truncate
// in a small tree, so that operations collide. Failures such as ENOENT are expected
// outcomes; fsck judges the result.

#[derive(Debug, Default, Clone)]
pub struct NamespaceHistory {
    pub committed: u64,
    pub refused: u64,
    pub unknown: u64,
    pub unavailable: u64,
}

fn random_path(rng: &mut impl rand::Rng) -> String {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    let depth = rng.gen_range(1..=3);
    let mut path = String::from("/ns");
    for _ in 0..depth {
        path.push('/');
        path.push_str(NAMES[rng.gen_range(0..NAMES.len())]);
    }
    path
}

pub async fn namespace_client(client: Client, ops: usize, pause: Duration) -> NamespaceHistory {
    use rand::Rng;
    let mut history = NamespaceHistory::default();
    let _ = client.run(|txn| async move { txn.mkdir_all("/ns", 0o755).await }).await;
    for _ in 0..ops {
        let (op, first, second) = {
            let mut rng = madsim::rand::thread_rng();
            let op = rng.gen_range(0..7);
            let first = random_path(&mut rng);
            // Half the renames try to move a path under itself, which must always fail.
            let second = if op == 2 && rng.gen_bool(0.5) {
                format!("{first}/{}", ["a", "b", "c", "d"][rng.gen_range(0..4)])
            } else {
                random_path(&mut rng)
            };
            (op, first, second)
        };
        let result = client
            .run(|txn| {
                let (first, second) = (first.clone(), second.clone());
                async move {
                    match op {
                        0 => txn.create(&first, 0o644, true).await.map(|_| ()),
                        1 => txn.mkdir(&first, 0o755).await.map(|_| ()),
                        2 => txn.rename(&first, &second).await,
                        3 => txn.unlink(&first).await,
                        4 => txn.link(&first, &second).await,
                        5 => txn.rmdir(&first).await,
                        _ => txn.write_file(&first, b"data").await,
                    }
                }
            })
            .await;
        match result {
            Ok(()) => history.committed += 1,
            Err(FsError::OutcomeUnknown(_)) => history.unknown += 1,
            Err(FsError::Unavailable(_)) | Err(FsError::Busy(_)) => history.unavailable += 1,
            Err(_) => history.refused += 1,
        }
        tokio::time::sleep(pause).await;
    }
    history
}

// ---------------------------------------------------------------------------------------
// List-append: each file holds a list of values; transactions append unique values to some
// files and read others, recorded for the Elle-style checker.

pub const LIST_KEYS: usize = 6;

pub fn list_path(key: usize) -> String {
    format!("/la/k{key}")
}

fn parse_list(data: &[u8]) -> Result<Vec<u64>, FsError> {
    let text = String::from_utf8_lossy(data);
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| FsError::Internal(format!("list is garbled: {text}"))))
        .collect()
}

async fn read_list(txn: &cffs_client::Transaction, key: usize) -> Result<Vec<u64>, FsError> {
    match txn.read_file(&list_path(key)).await {
        Ok(data) => parse_list(&data),
        Err(FsError::NotFound) => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

pub async fn list_setup(client: &Client) -> Result<(), FsError> {
    client.run(|txn| async move { txn.mkdir_all("/la", 0o755).await }).await
}

/// One list-append client; `client_id` makes its values unique. Each transaction touches one
/// to three files: a read, or a read-modify-write that appends one value (one in four
/// appends, two values, written one after the other: the first is an intermediate state no
/// other transaction may see). Every read is recorded, the read half of an append included.
pub async fn list_append_client(client: Client, client_id: u64, txns: usize, pause: Duration, record: Arc<ListRecord>) {
    use rand::seq::SliceRandom;
    use rand::Rng;
    let mut counter = 0u64;
    for _ in 0..txns {
        let plan: Vec<(usize, Vec<u64>)> = {
            let mut rng = madsim::rand::thread_rng();
            let mut keys: Vec<usize> = (0..LIST_KEYS).collect();
            keys.shuffle(&mut rng);
            let n = rng.gen_range(1..=3);
            keys.into_iter()
                .take(n)
                .map(|key| {
                    let count = if !rng.gen_bool(0.5) {
                        0
                    } else if rng.gen_ratio(1, 4) {
                        2
                    } else {
                        1
                    };
                    let values = (0..count)
                        .map(|_| {
                            counter += 1;
                            client_id << 32 | counter
                        })
                        .collect();
                    (key, values)
                })
                .collect()
        };
        let appends_only = || {
            plan.iter()
                .flat_map(|(key, values)| values.iter().map(|value| Op::Append { key: *key, value: *value }))
                .collect()
        };
        let invoked = Instant::now();
        // Entered as unknown before it starts: if the client is killed in it, so it stays.
        let entry = {
            let mut txns = record.txns.lock().expect("list record lock");
            txns.push(Txn { ops: appends_only(), outcome: Outcome::Unknown, invoked, completed: invoked });
            txns.len() - 1
        };
        let result = client
            .run(|txn| {
                let plan = plan.clone();
                let committing = record.committing.clone();
                async move {
                    let mut ops = Vec::new();
                    for (key, values) in plan {
                        let list = read_list(&txn, key).await?;
                        let mut text: String = list.iter().map(|v| format!("{v},")).collect();
                        ops.push(Op::Read { key, list });
                        for value in values {
                            text.push_str(&format!("{value},"));
                            txn.write_file(&list_path(key), text.as_bytes()).await?;
                            ops.push(Op::Append { key, value });
                        }
                    }
                    // The commit follows at once.
                    committing.store(true, Ordering::SeqCst);
                    Ok(ops)
                }
            })
            .await;
        record.committing.store(false, Ordering::SeqCst);
        let completed = Instant::now();
        let (ops, outcome) = match result {
            Ok(ops) => (ops, Outcome::Committed),
            Err(FsError::OutcomeUnknown(_)) => (appends_only(), Outcome::Unknown),
            Err(_) => (appends_only(), Outcome::Failed),
        };
        record.txns.lock().expect("list record lock")[entry] = Txn { ops, outcome, invoked, completed };
        tokio::time::sleep(pause).await;
    }
}

/// A list-append client's history, kept outside its node so that a client the nemesis kills
/// (`nemesis::kill_clients`) leaves what it did. Each transaction is entered as unknown (its
/// appends) before it starts and settled when it returns, so one the kill cuts off stays
/// unknown: it may have committed at any time after it was invoked, as Elle treats it.
#[derive(Debug, Default)]
pub struct ListRecord {
    pub txns: Mutex<Vec<Txn>>,
    /// Raised when a transaction's body is done and its commit follows, lowered when it
    /// returns: the nemesis kills a client in its commit.
    pub committing: Arc<AtomicBool>,
}

/// Every list, read in one transaction after the run.
pub async fn list_finals(client: &Client) -> Result<std::collections::BTreeMap<usize, Vec<u64>>, FsError> {
    client
        .run(|txn| async move {
            let mut finals = std::collections::BTreeMap::new();
            for key in 0..LIST_KEYS {
                finals.insert(key, read_list(&txn, key).await?);
            }
            Ok(finals)
        })
        .await
}

// ---------------------------------------------------------------------------------------
// Listings: writers create and remove entries (files and subdirectories, under names never
// used twice) in a few directories; readers list those directories and stat them and their
// entries in read-only transactions, which a warm client serves from its cache and commits
// locally. Recorded for the stale-listing checker (`checker::listing`).

/// Directories the listing workload uses.
pub const LISTING_DIRS: usize = 2;
/// Most entries one writer keeps at once.
pub const LISTING_ENTRIES_PER_WRITER_MAX: usize = 4;

pub fn listing_dir(dir: usize) -> String {
    format!("/ls/d{dir}")
}

pub async fn listing_setup(client: &Client) -> Result<(), FsError> {
    client
        .run(|txn| async move {
            for dir in 0..LISTING_DIRS {
                txn.mkdir_all(&listing_dir(dir), 0o755).await?;
            }
            Ok(())
        })
        .await
}

/// The entry name writer `writer` gives its `seq`-th entry.
pub fn listing_name(kind: EntryKind, writer: u64, seq: u64) -> String {
    let prefix = match kind {
        EntryKind::File => 'f',
        EntryKind::Dir => 'd',
    };
    format!("{prefix}{writer}-{seq}")
}

/// Wall-clock time on this node, in ns since the epoch (what the client stamps into a
/// directory's mtime when it changes the directory).
fn wall_clock_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// One listing writer: `ops` creates and removals of its own entries.
pub async fn listing_writer(client: Client, writer: u64, ops: usize, pause: Duration) -> Vec<EntryOp<Instant>> {
    use rand::Rng;
    let mut history = Vec::new();
    // Entries that may exist: (dir, name, kind).
    let mut live: Vec<(usize, String, EntryKind)> = Vec::new();
    for seq in 1..=ops as u64 {
        let (create, dir, kind, victim) = {
            let mut rng = madsim::rand::thread_rng();
            let create = live.is_empty() || (live.len() < LISTING_ENTRIES_PER_WRITER_MAX && rng.gen_bool(0.6));
            let kind = if rng.gen_bool(0.5) { EntryKind::File } else { EntryKind::Dir };
            (create, rng.gen_range(0..LISTING_DIRS), kind, rng.gen_range(0..live.len().max(1)))
        };
        let (dir, name, kind) =
            if create { (dir, listing_name(kind, writer, seq), kind) } else { live[victim].clone() };
        let path = format!("{}/{name}", listing_dir(dir));
        let change = if create { Change::Create } else { Change::Remove };
        let (invoked, clock_ns) = (Instant::now(), wall_clock_ns());
        let result = client
            .run(|txn| {
                let path = path.clone();
                async move {
                    match (change, kind) {
                        (Change::Create, EntryKind::File) => txn.create(&path, 0o644, true).await.map(|_| ()),
                        (Change::Create, EntryKind::Dir) => txn.mkdir(&path, 0o755).await.map(|_| ()),
                        (Change::Remove, EntryKind::File) => txn.unlink(&path).await,
                        (Change::Remove, EntryKind::Dir) => txn.rmdir(&path).await,
                    }
                }
            })
            .await;
        let completed = Instant::now();
        let outcome = match &result {
            Ok(()) => Outcome::Committed,
            Err(FsError::OutcomeUnknown(_)) => Outcome::Unknown,
            Err(_) => Outcome::Failed,
        };
        // A create that may have applied joins the entries that may exist; a removal takes its
        // entry out unless it definitely changed nothing for a reason other than finding
        // nothing to remove (then it is tried again later).
        match (change, &result) {
            (Change::Create, Ok(()) | Err(FsError::OutcomeUnknown(_))) => live.push((dir, name.clone(), kind)),
            (Change::Create, Err(_)) => {}
            (Change::Remove, Err(FsError::Unavailable(_) | FsError::Busy(_))) => {}
            (Change::Remove, _) => {
                live.remove(victim);
            }
        }
        history.push(EntryOp { dir, name, kind, change, outcome, invoked, completed, clock_ns });
        tokio::time::sleep(pause).await;
    }
    history
}

/// One listing reader: `ops` read-only transactions on a random directory, each one of:
/// list it and stat it; stat it; stat entries in it (one it listed before, one guessed);
/// list it. Entry names are guessed among those `writers` writers give in `ops` operations.
pub async fn listing_reader(client: Client, writers: u64, ops: usize, pause: Duration) -> Vec<DirRead<Instant>> {
    use rand::Rng;
    let mut history = Vec::new();
    let mut listed: Vec<Vec<String>> = vec![Vec::new(); LISTING_DIRS];
    for _ in 0..ops {
        let (dir, shape, probes) = {
            let mut rng = madsim::rand::thread_rng();
            let dir = rng.gen_range(0..LISTING_DIRS);
            let shape = rng.gen_range(0..4u8);
            let mut probes = Vec::new();
            if shape == 2 {
                if !listed[dir].is_empty() {
                    probes.push(listed[dir][rng.gen_range(0..listed[dir].len())].clone());
                }
                let kind = if rng.gen_bool(0.5) { EntryKind::File } else { EntryKind::Dir };
                probes.push(listing_name(kind, rng.gen_range(1..=writers.max(1)), rng.gen_range(1..=ops as u64)));
            }
            (dir, shape, probes)
        };
        let (list, stat) = (shape == 0 || shape == 3, shape <= 1);
        let invoked = Instant::now();
        let result = client
            .run(|txn| {
                let probes = probes.clone();
                async move {
                    let path = listing_dir(dir);
                    let listing = match list {
                        true => {
                            let entries = txn.readdir(&path).await?;
                            Some(entries.into_iter().map(|e| (e.name, kind_of(e.kind))).collect::<Vec<_>>())
                        }
                        false => None,
                    };
                    let attr = match stat {
                        true => Some(txn.stat(&path).await.map(|a| (a.nlink, a.mtime_ns))?),
                        false => None,
                    };
                    let mut seen = Vec::new();
                    for name in probes {
                        let shown = match txn.stat(&format!("{path}/{name}")).await {
                            Ok(attr) => Some(kind_of(attr.kind)),
                            Err(FsError::NotFound) => None,
                            Err(error) => return Err(error),
                        };
                        seen.push((name, shown));
                    }
                    Ok((listing, attr, seen))
                }
            })
            .await;
        if let Ok((listing, attr, probes)) = result {
            if let Some(listing) = &listing {
                listed[dir] = listing.iter().map(|(name, _): &(String, EntryKind)| name.clone()).collect();
            }
            history.push(DirRead { dir, invoked, completed: Instant::now(), listing, attr, probes });
        }
        tokio::time::sleep(pause).await;
    }
    history
}

fn kind_of(kind: cffs_client::Kind) -> EntryKind {
    match kind {
        cffs_client::Kind::Dir => EntryKind::Dir,
        // The writers make no symlinks: a symlink would show as a file, and be wrong.
        cffs_client::Kind::File | cffs_client::Kind::Symlink => EntryKind::File,
    }
}
