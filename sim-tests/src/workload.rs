//! Workloads run by simulated clients, recorded as histories of (operation, outcome).
//! A timed-out or otherwise unknown outcome is recorded as unknown, never as a failure.

use std::time::Duration;

use cffs_client::{Client, FsError};

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
// Bank: transfers between account files; read-only audits of every account.

pub const BANK_BALANCE_INITIAL: u64 = 100;

pub fn account_path(account: usize) -> String {
    format!("/bank/a{account}")
}

pub async fn bank_setup(client: &Client, accounts: usize) -> Result<(), FsError> {
    client
        .run(|txn| async move {
            txn.mkdir_all("/bank", 0o755).await?;
            for account in 0..accounts {
                txn.write_file(&account_path(account), BANK_BALANCE_INITIAL.to_string().as_bytes()).await?;
            }
            Ok(())
        })
        .await
}

async fn balance(txn: &cffs_client::Transaction, account: usize) -> Result<u64, FsError> {
    let data = txn.read_file(&account_path(account)).await?;
    String::from_utf8_lossy(&data)
        .parse::<u64>()
        .map_err(|_| FsError::Internal(format!("account {account} is garbled")))
}

/// What one bank client saw: the totals of its committed audits, and its outcome counts.
#[derive(Debug, Default, Clone)]
pub struct BankHistory {
    pub audits: Vec<u64>,
    pub transfers_acked: u64,
    pub unknown: u64,
    pub unavailable: u64,
    /// Errors no correct cluster gives a bank client (a missing or garbled account).
    pub errors: Vec<String>,
}

/// One bank client: `ops` operations, each a transfer between two random accounts or (one in
/// four) an audit reading every account in one transaction.
pub async fn bank_client(client: Client, accounts: usize, ops: usize, pause: Duration) -> BankHistory {
    use rand::Rng;
    let mut history = BankHistory::default();
    for _ in 0..ops {
        let (audit, from, to, amount) = {
            let mut rng = madsim::rand::thread_rng();
            (rng.gen_ratio(1, 4), rng.gen_range(0..accounts), rng.gen_range(0..accounts), rng.gen_range(1..=30u64))
        };
        if audit {
            let result = client
                .run(|txn| async move {
                    let mut total = 0;
                    for account in 0..accounts {
                        total += balance(&txn, account).await?;
                    }
                    Ok(total)
                })
                .await;
            match result {
                Ok(total) => history.audits.push(total),
                Err(error) => note_error(&mut history, error),
            }
        } else {
            let result = client
                .run(|txn| async move {
                    if from == to {
                        return Ok(());
                    }
                    let (a, b) = (balance(&txn, from).await?, balance(&txn, to).await?);
                    if a < amount {
                        return Ok(());
                    }
                    txn.write_file(&account_path(from), (a - amount).to_string().as_bytes()).await?;
                    txn.write_file(&account_path(to), (b + amount).to_string().as_bytes()).await
                })
                .await;
            match result {
                Ok(()) => history.transfers_acked += 1,
                Err(error) => note_error(&mut history, error),
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

/// The sum of all balances, read in one transaction.
pub async fn bank_total(client: &Client, accounts: usize) -> Result<u64, FsError> {
    client
        .run(|txn| async move {
            let mut total = 0;
            for account in 0..accounts {
                total += balance(&txn, account).await?;
            }
            Ok(total)
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

/// One list-append client; `client_id` makes its values unique.
pub async fn list_append_client(
    client: Client,
    client_id: u64,
    txns: usize,
    pause: Duration,
) -> Vec<crate::checker::elle::Txn> {
    use crate::checker::elle::{Op, Outcome, Txn};
    use rand::seq::SliceRandom;
    use rand::Rng;
    let mut history = Vec::new();
    let mut counter = 0u64;
    for _ in 0..txns {
        let plan: Vec<(usize, Option<u64>)> = {
            let mut rng = madsim::rand::thread_rng();
            let mut keys: Vec<usize> = (0..LIST_KEYS).collect();
            keys.shuffle(&mut rng);
            let n = rng.gen_range(1..=3);
            keys.into_iter()
                .take(n)
                .map(|key| {
                    let append = rng.gen_bool(0.5).then(|| {
                        counter += 1;
                        client_id << 32 | counter
                    });
                    (key, append)
                })
                .collect()
        };
        let invoked = tokio::time::Instant::now();
        let result = client
            .run(|txn| {
                let plan = plan.clone();
                async move {
                    let mut ops = Vec::new();
                    for (key, append) in plan {
                        let list = read_list(&txn, key).await?;
                        match append {
                            Some(value) => {
                                let mut text: String = list.iter().map(|v| format!("{v},")).collect();
                                text.push_str(&value.to_string());
                                txn.write_file(&list_path(key), text.as_bytes()).await?;
                                ops.push(Op::Append { key, value });
                            }
                            None => ops.push(Op::Read { key, list }),
                        }
                    }
                    Ok(ops)
                }
            })
            .await;
        let completed = tokio::time::Instant::now();
        let appends_only =
            || plan.iter().filter_map(|(key, a)| a.map(|value| Op::Append { key: *key, value })).collect();
        let (ops, outcome) = match result {
            Ok(ops) => (ops, Outcome::Committed),
            Err(FsError::OutcomeUnknown(_)) => (appends_only(), Outcome::Unknown),
            Err(_) => (appends_only(), Outcome::Failed),
        };
        history.push(Txn { ops, outcome, invoked, completed });
        tokio::time::sleep(pause).await;
    }
    history
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
