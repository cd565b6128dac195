//! The `cffs` command line: file operations on a CFFS cluster, each command one transaction,
//! and `cffs bench`. Errors are reported the way coreutils reports them
//! (`cffs: cannot remove '/a': Directory not empty`, exit status 1).

mod bench;
mod bench_data;
mod bench_peer;
mod bench_sessions;
mod transfer;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{Attr, Client, FsError, Kind, Transaction};

#[derive(Parser)]
#[command(
    name = "cffs",
    version,
    about = "Use a CFFS cluster: a transactional file system for serverless functions",
    long_about = "Use a CFFS cluster: a transactional file system for serverless functions.\n\n\
        Every command runs as one transaction: it takes effect whole or not at all, and is\n\
        re-run if it conflicts with a concurrent one. Paths are absolute (/dir/file).\n\
        Start a local cluster with `cffs-server dev`, then export the CFFS_ENDPOINTS it prints."
)]
struct Cli {
    /// Metadata replicas to contact, HOST:PORT[,HOST:PORT...]; any one is enough.
    #[arg(long, env = "CFFS_ENDPOINTS", global = true, default_value = "127.0.0.1:7101")]
    endpoints: String,
    /// Addresses to dial instead of those the cluster names, CLUSTER_ADDR=REACHABLE_ADDR,...
    /// For a client outside the cluster's network: the replicas and block servers advertise
    /// addresses of that network (e.g. cffs1:7100 on a compose network), reached from the
    /// host through published ports (cffs1:7100=127.0.0.1:7101).
    #[arg(long, env = "CFFS_ADDRESS_MAP", global = true, default_value = "")]
    address_map: String,
    /// Output format for commands that print data.
    #[arg(short, long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Commands the `cffs` binary takes from a crate built on this one: the FUSE mount and the
/// function runner live in `cffs-fuse`, which depends on this crate.
pub trait Extensions {
    /// `cffs mount`: serves the cluster at a directory until unmounted or signalled.
    fn mount(&self, client: Client, runtime: &tokio::runtime::Runtime, args: MountArgs) -> ExitCode;
    /// `cffs run`: one command as one transaction.
    fn run(&self, client: Client, runtime: &tokio::runtime::Runtime, args: RunArgs) -> ExitCode;
    /// `cffs bench-mount`: the small-file workload on a mount, through the crate, and on a
    /// local directory.
    fn bench_mount(&self, client: Client, runtime: &tokio::runtime::Runtime, args: BenchMountArgs) -> ExitCode;
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchMountArgs {
    /// Files in the small-file workload (each created, written 4 KiB, closed, stat'ed, read
    /// and unlinked), on each of the mount, the client crate and the local directory.
    #[arg(long, default_value_t = 500)]
    pub files: u32,
    /// The local directory to run the same workload in, for comparison.
    #[arg(long, default_value = "/tmp")]
    pub local_dir: PathBuf,
    /// A tmpfs directory for the `cat` comparison (and the workload once more).
    #[arg(long, default_value = "/dev/shm")]
    pub tmpfs_dir: PathBuf,
    /// `cat` runs of the warm file on the mount and on tmpfs.
    #[arg(long, default_value_t = 200)]
    pub cat_runs: u32,
    /// The size of the file `cat` reads.
    #[arg(long, default_value_t = 1 << 20)]
    pub cat_bytes: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// The directory to mount at (it must exist).
    pub mountpoint: PathBuf,
    /// Let other users than the one mounting use the mount (needs user_allow_other in
    /// /etc/fuse.conf when not root).
    #[arg(long)]
    pub allow_other: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Re-runs allowed when the command's reads went stale by the time it exited.
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
    /// Where the command sees CFFS (created when missing; only the command's private mount
    /// namespace sees the mount).
    #[arg(long, default_value = "/cffs")]
    pub at: PathBuf,
    /// Stream the output of every attempt as it is written, including attempts that are then
    /// re-run (by default the output of a re-run attempt is discarded and only the attempt
    /// that counts is shown, after it ends).
    #[arg(long)]
    pub keep_failed_output: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the cluster at a directory, for any program to use (runs until unmounted, or
    /// until SIGINT/SIGTERM, which unmount).
    ///
    /// Each file operation is a transaction of its own; data written to an open file commits
    /// when the file is closed or fsynced (close-to-open), each commit atomic. If another
    /// client changed the file meanwhile, the ranges written here are applied over its
    /// version. Needs /dev/fuse and root (or fusermount3).
    Mount(MountArgs),
    /// Run a command as one function invocation: one transaction over everything it does in
    /// CFFS, seen at /cffs.
    ///
    /// The command runs in a private mount namespace where CFFS is mounted at --at. All its
    /// reads and writes there form one transaction, committed when it exits 0 and discarded
    /// when it exits otherwise (its exit status is passed on). If its reads went stale by the
    /// time it exited, it is run again from the start, up to --retries times (exit status 75
    /// when they run out). Only the file system is rolled back: what the command does
    /// elsewhere (network, other files, other processes) stays, once per attempt.
    Run(RunArgs),
    /// Benchmark the mount: the same small-file workload (create, write 4 KiB, close, stat,
    /// read, unlink) on a temporary mount, through the client crate directly, and on a
    /// local directory and tmpfs, in one run; then `cat` of a warm file on the mount against
    /// `cat` of the same file on tmpfs. Needs what `cffs mount` needs. Prints figures only:
    /// it checks no goal.
    BenchMount(BenchMountArgs),
    /// Create directories.
    Mkdir {
        /// Create missing parents too, and accept existing directories.
        #[arg(short, long)]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// List a directory (or show one file).
    Ls {
        /// Long format: kind, mode, links, size, modification time.
        #[arg(short, long)]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show a file's attributes.
    Stat { path: String },
    /// Copy a local file (or `-`: standard input) into CFFS, replacing REMOTE.
    ///
    /// Streams: memory stays at a few blocks whatever the file's size. The whole copy is
    /// one transaction: REMOTE is replaced at once or not at all. Shows progress on a
    /// terminal and prints size and throughput at the end.
    Put {
        /// The local file to copy, or `-` for standard input.
        local: PathBuf,
        /// The CFFS path to write (created, or replaced whole).
        remote: String,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Copy a CFFS file to a local file (or `-`: standard output).
    ///
    /// Streams, fetching a few blocks ahead; every block's crc32 is checked. Fails, rather
    /// than writing a torn copy, if the file changed while it was read.
    Get {
        /// The CFFS file to copy.
        remote: String,
        /// The local file to write (created or truncated), or `-` for standard output.
        local: PathBuf,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print files' contents.
    Cat {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Write standard input to a CFFS file (replacing it); `put - REMOTE` with no output.
    Write { remote: String },
    /// Remove files (and, with -r, directories and their contents).
    Rm {
        #[arg(short, long)]
        recursive: bool,
        /// Ignore missing paths.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Remove empty directories.
    Rmdir {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Rename or move a file or directory.
    Mv { source: String, target: String },
    /// Make a hard link (or, with -s, a symbolic link) TARGET at LINK.
    Ln {
        #[arg(short, long)]
        symbolic: bool,
        target: String,
        link: String,
    },
    /// Print a symbolic link's target.
    Readlink { path: String },
    /// Show a directory tree.
    Tree {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Measure the cluster: creates, stats, read-modify-write transactions, and read-only
    /// transactions with the cache warm and off beside the same reads on tmpfs.
    ///
    /// Prints per workload: operations per second, latency percentiles (µs), the client
    /// cache's hit rate and the requests sent per operation (a warm read-only transaction
    /// sends none). Each operation is one whole transaction.
    ///
    /// With `--peer etcd`, creates and read-modify-writes run on CFFS and then on a running
    /// etcd cluster (`--etcd-endpoints`) at each client count, side by side, with their ratio
    /// and each system's CPU time per operation and memory; `ops/scripts/bench-peer.sh`
    /// starts both clusters on loopback and runs it.
    Bench(bench::BenchArgs),
    /// Measure file data on the block service: sequential write and read of one large file,
    /// the read again from a warm block cache, 4 KiB random reads cold and warm, beside the
    /// disk's own write bandwidth (dd with O_DIRECT) measured in the same run; and the
    /// writer's and block servers' memory.
    ///
    /// With three replicas on one disk, writes are bounded by the disk's bandwidth / 3: the
    /// write figure is printed as a share of that limit.
    BenchData(bench_data::DataBenchArgs),
    /// Measure what idle clients cost the metadata replicas: many clients (each its own
    /// session) run one transaction and then idle; the replicas' CPU (from /proc, so run it
    /// on the replicas' machine), the leader's keepalives and its open session streams are
    /// printed while the sessions are alive and after they rest.
    BenchSessions(bench_sessions::SessionsBenchArgs),
    /// Check the file system: walk the tree and read every file whole, every block's crc32
    /// checked (by the server and by this client; a bad copy is read from another replica).
    /// Prints what it checked; exit status 1 if anything could not be listed or read.
    Fsck {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Workloads that check their own results, for chaos runs on a real cluster.
    #[command(subcommand)]
    Workload(WorkloadCommand),
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Workers append unique elements to a few list files, one transaction per append,
    /// recording every acknowledged commit; at the end every list is read and checked (no
    /// acknowledged append lost or duplicated, nothing that failed definitely present, each
    /// worker's appends in order). Prints a line per second and the longest stretch without
    /// an acknowledgement; exit status 1 on any violation.
    Append(workload::AppendArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, leader, term and applied index, as each endpoint sees them; then the block
    /// groups (each server's blocks, bytes and bad copies found) and the scrubber's and
    /// collector's progress (as `cluster blocks`).
    Status,
    /// Add a metadata replica as a voter: it joins as a learner, catches up with the log, then
    /// becomes a voter. Start it first with `cffs-server meta --id ID` and the current members
    /// as --peers. Refused (nothing changed) unless a majority of the new voters answer and
    /// are caught up. (Block servers are not added one by one: a block group has three; add
    /// a group with `add-block-group`, or swap a server with `replace-node --block-group`.)
    AddNode {
        /// The new replica's id (unused in the cluster).
        id: u64,
        /// Its address, HOST:PORT, as the other replicas reach it.
        addr: String,
        /// Refused with the reason: block groups have three servers each.
        #[arg(long, value_name = "G", hide = true)]
        block_group: Option<u32>,
    },
    /// Remove a metadata replica from the group. Refused (nothing changed) unless a majority
    /// of the remaining voters answer and are caught up. (A block server is never removed
    /// alone, which would leave its group two: replace it with `replace-node --block-group`.)
    RemoveNode {
        id: u64,
        /// Refused with the reason: block groups have three servers each.
        #[arg(long, value_name = "G", hide = true)]
        block_group: Option<u32>,
    },
    /// Replace metadata replica OLD by a new one (e.g. on an empty disk, with a new id): the
    /// new one joins as a learner and catches up, then one change of voters swaps them.
    /// Refused (nothing changed) unless a majority of the new voters answer and are caught up.
    /// A replica that also serves a block group (`--block-dir`) is replaced there too.
    ///
    /// With `--block-group G`: replace block server OLD of group G instead (block groups
    /// have three servers each: add capacity with `add-block-group`). The new server starts
    /// empty and the scrubber refills it from the group; `cffs cluster blocks` shows the
    /// refill, and the group takes no other change before it ends. Refused unless the new
    /// server and a majority of the group's new members answer.
    ReplaceNode {
        /// The id of the replica (or, with --block-group, the block server) to replace.
        old: u64,
        /// The new one's id, used by no member yet.
        new_id: u64,
        /// The new server's address, HOST:PORT.
        new_addr: String,
        /// Replace a member of this block group (not a metadata replica).
        #[arg(long, value_name = "G")]
        block_group: Option<u32>,
    },
    /// Add a replica as a learner (it receives the log but does not vote yet). Start it first
    /// with `cffs-server meta --id ID --peers` listing the current members and itself.
    AddLearner {
        /// The new replica's id (unused in the cluster).
        id: u64,
        /// Its address, HOST:PORT, as the other replicas reach it.
        addr: String,
    },
    /// Set the voters of the metadata group (e.g. promote learners, or remove a replica).
    ChangeMembership {
        /// Every voter of the new configuration.
        #[arg(required = true, value_delimiter = ',')]
        voters: Vec<u64>,
    },
    /// Add a block group: three block servers (started with `cffs-server block`, or a
    /// replica with `--block-dir`) that will hold file data. Prints the cluster map.
    AddBlockGroup {
        /// The group's servers: ID=HOST:PORT,ID=HOST:PORT,ID=HOST:PORT.
        members: String,
        /// The cluster's block size in bytes, set by the first group (later groups keep it).
        #[arg(long)]
        block_size: Option<u32>,
        /// Succeed without change when a group of exactly these servers exists already (for
        /// scripts that set a cluster up and may run again).
        #[arg(long)]
        if_absent: bool,
    },
    /// Show the cluster map: block groups, their servers, and each server's blocks and
    /// bytes.
    Blocks,
}

/// A failed command: coreutils-style message, exit status 1.
struct Failure(String);

fn fail(verb: &str, path: &str, error: FsError) -> Failure {
    Failure(format!("cannot {verb} '{path}': {error}"))
}

/// The `cffs` command line, with the commands `extensions` adds.
pub fn main(extensions: &dyn Extensions) -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if matches!(cli.command, Command::Mount(_) | Command::Run(_) | Command::BenchMount(_)) {
        let client = match runtime.block_on(async { connect(&cli) }) {
            Ok(client) => client,
            Err(Failure(message)) => {
                eprintln!("cffs: {message}");
                return ExitCode::from(1);
            }
        };
        return match cli.command {
            Command::Mount(args) => extensions.mount(client, &runtime, args),
            Command::Run(args) => extensions.run(client, &runtime, args),
            Command::BenchMount(args) => extensions.bench_mount(client, &runtime, args),
            _ => unreachable!("matched above"),
        };
    }
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("cffs: {message}");
            ExitCode::from(1)
        }
    }
}

/// The client the global options describe.
fn connect(cli: &Cli) -> Result<Client, Failure> {
    let endpoints = crate::client::parse_endpoints(&cli.endpoints).map_err(|e| Failure(format!("--endpoints: {e}")))?;
    let address_map =
        crate::calls::parse_address_map(&cli.address_map).map_err(|e| Failure(format!("--address-map: {e}")))?;
    crate::calls::set_address_map(address_map);
    // Leases on commit only for the commands that go on after a commit; a one-shot command
    // (and `cffs run`, whose transaction commits as its process ends) would leave leases
    // for the next writer to wait out.
    let lease_writes = matches!(
        cli.command,
        Command::Mount(_) | Command::Bench(_) | Command::BenchMount(_) | Command::BenchData(_) | Command::Workload(_)
    );
    let options = crate::ClientOptions { lease_writes, ..Default::default() };
    Client::connect_with(&endpoints, options).map_err(|e| Failure(e.to_string()))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let client = connect(&cli)?;
    let endpoints = crate::client::parse_endpoints(&cli.endpoints).map_err(|e| Failure(format!("--endpoints: {e}")))?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Mkdir { parents, paths } => {
            for path in paths {
                let p = path.clone();
                client
                    .run(|txn| {
                        let p = p.clone();
                        async move {
                            match parents {
                                true => txn.mkdir_all(&p, 0o755).await,
                                false => txn.mkdir(&p, 0o755).await.map(|_| ()),
                            }
                        }
                    })
                    .await
                    .map_err(|e| fail("create directory", &path, e))?;
            }
        }
        Command::Ls { long, path } => ls(&client, &path, long, json).await?,
        Command::Stat { path } => {
            let p = path.clone();
            let attr = client
                .run(|txn| {
                    let p = p.clone();
                    async move { txn.lstat(&p).await }
                })
                .await
                .map_err(|e| fail("stat", &path, e))?;
            print_stat(&path, &attr, json);
        }
        Command::Put { local, remote, quiet } => transfer::put(&client, &local, &remote, quiet).await?,
        Command::Get { remote, local, quiet } => transfer::get(&client, &remote, &local, quiet).await?,
        Command::Cat { paths } => {
            let mut stdout = std::io::stdout().lock();
            for path in paths {
                let data = read_remote(&client, &path).await?;
                stdout.write_all(&data).map_err(|e| Failure(format!("write standard output: {e}")))?;
            }
        }
        Command::Write { remote } => transfer::put(&client, std::path::Path::new("-"), &remote, true).await?,
        Command::Rm { recursive, force, paths } => {
            for path in paths {
                let p = path.clone();
                let result = client
                    .run(|txn| {
                        let p = p.clone();
                        async move { remove(&txn, &p, recursive).await }
                    })
                    .await;
                match result {
                    Err(FsError::NotFound) if force => {}
                    Err(error) => return Err(fail("remove", &path, error)),
                    Ok(()) => {}
                }
            }
        }
        Command::Rmdir { paths } => {
            for path in paths {
                let p = path.clone();
                client
                    .run(|txn| {
                        let p = p.clone();
                        async move { txn.rmdir(&p).await }
                    })
                    .await
                    .map_err(|e| fail("remove", &path, e))?;
            }
        }
        Command::Mv { source, target } => {
            let (s, t) = (source.clone(), target.clone());
            client
                .run(|txn| {
                    let (s, t) = (s.clone(), t.clone());
                    async move { txn.rename(&s, &t).await }
                })
                .await
                .map_err(|e| Failure(format!("cannot move '{source}' to '{target}': {e}")))?;
        }
        Command::Ln { symbolic, target, link } => {
            let (t, l) = (target.clone(), link.clone());
            client
                .run(|txn| {
                    let (t, l) = (t.clone(), l.clone());
                    async move {
                        match symbolic {
                            true => txn.symlink(&t, &l).await,
                            false => txn.link(&t, &l).await,
                        }
                    }
                })
                .await
                .map_err(|e| Failure(format!("failed to create link '{link}' -> '{target}': {e}")))?;
        }
        Command::Readlink { path } => {
            let p = path.clone();
            let target = client
                .run(|txn| {
                    let p = p.clone();
                    async move { txn.readlink(&p).await }
                })
                .await
                .map_err(|e| fail("read link", &path, e))?;
            println!("{target}");
        }
        Command::Tree { path } => tree(&client, &path, json).await?,
        Command::Cluster { command: ClusterCommand::Status } => {
            cluster_status(&client, json).await?;
            if !json {
                println!();
                block_status(&client, false).await?;
            }
        }
        Command::Cluster {
            command:
                ClusterCommand::AddNode { block_group: Some(_), .. }
                | ClusterCommand::RemoveNode { block_group: Some(_), .. },
        } => {
            return Err(Failure(
                "a block group has exactly three servers: swap one with `cffs cluster replace-node --block-group G OLD NEW_ID NEW_ADDR`, or add capacity with `cffs cluster add-block-group`".into(),
            ));
        }
        Command::Cluster { command: ClusterCommand::AddNode { id, addr, .. } } => {
            crate::membership::add_node(&client, id, &addr).await.map_err(Failure)?;
            cluster_status(&client, json).await?;
        }
        Command::Cluster { command: ClusterCommand::RemoveNode { id, .. } } => {
            crate::membership::remove_node(&client, id).await.map_err(Failure)?;
            cluster_status(&client, json).await?;
        }
        Command::Cluster { command: ClusterCommand::ReplaceNode { old, new_id, new_addr, block_group } } => {
            let member = cffs_proto::BlockMember { id: new_id, addr: new_addr.clone() };
            if let Some(group) = block_group {
                client
                    .replace_block_server(group, old, member)
                    .await
                    .map_err(|e| Failure(format!("cannot replace block server {old} of group {group}: {e}")))?;
                return block_status(&client, json).await;
            }
            // A replica with both roles is a member of a block group under its replica id.
            let map = client.cluster_map(true).await.map_err(|e| Failure(format!("cluster map: {e}")))?;
            let serves = map.groups.iter().find(|g| g.members.iter().any(|m| m.id == old)).map(|g| g.id);
            crate::membership::replace_node(&client, old, new_id, &new_addr).await.map_err(Failure)?;
            if let Some(group) = serves {
                client.replace_block_server(group, old, member).await.map_err(|e| {
                    Failure(format!(
                        "replica {old} was replaced by {new_id}, but not in block group {group}: {e}; \
                         finish it with `cffs cluster replace-node --block-group {group} {old} {new_id} {new_addr}`"
                    ))
                })?;
            }
            cluster_status(&client, json).await?;
        }
        Command::Cluster { command: ClusterCommand::AddLearner { id, addr } } => {
            client
                .add_learner(id, &addr)
                .await
                .map_err(|e| Failure(format!("cannot add replica {id} at {addr}: {e}")))?;
            cluster_status(&client, json).await?;
        }
        Command::Cluster { command: ClusterCommand::ChangeMembership { voters } } => {
            client
                .change_membership(&voters)
                .await
                .map_err(|e| Failure(format!("cannot change the voters to {voters:?}: {e}")))?;
            cluster_status(&client, json).await?;
        }
        Command::Cluster { command: ClusterCommand::AddBlockGroup { members, block_size, if_absent } } => {
            let members = parse_block_members(&members).map_err(|e| Failure(format!("add-block-group: {e}")))?;
            let present = if_absent && {
                let map = client.cluster_map(false).await.map_err(|e| Failure(format!("cluster map: {e}")))?;
                has_group(&map, &members)
            };
            if !present {
                client
                    .add_block_group(members, block_size.unwrap_or(0))
                    .await
                    .map_err(|e| Failure(format!("cannot add the block group: {e}")))?;
            }
            block_status(&client, json).await?;
        }
        Command::Cluster { command: ClusterCommand::Blocks } => block_status(&client, json).await?,
        Command::BenchData(args) => {
            bench_data::run(&client, &endpoints, args).await.map_err(|e| Failure(format!("bench-data: {e}")))?
        }
        Command::BenchSessions(args) => {
            bench_sessions::run(&client, &endpoints, args).await.map_err(|e| Failure(format!("bench-sessions: {e}")))?
        }
        Command::Bench(args) => bench::run(&client, args, json).await.map_err(|e| Failure(format!("bench: {e}")))?,
        Command::Fsck { path } => match workload::fsck(&client, &path).await {
            Ok((dirs, files, bytes)) => {
                println!("fsck: clean: {dirs} directories, {files} files, {bytes} bytes read and checked")
            }
            Err(problems) => {
                for problem in &problems {
                    println!("fsck: {problem}");
                }
                return Err(Failure(format!("fsck: {} problems", problems.len())));
            }
        },
        Command::Workload(WorkloadCommand::Append(args)) => {
            workload::append(&endpoints, args).await.map_err(|e| Failure(format!("workload: {e}")))?
        }
        Command::Mount(_) | Command::Run(_) | Command::BenchMount(_) => {
            unreachable!("main hands these to the extensions")
        }
    }
    Ok(())
}

/// True when `map` has a group of exactly `members` (ids and addresses).
fn has_group(map: &cffs_proto::ClusterMap, members: &[cffs_proto::BlockMember]) -> bool {
    let key = |group: &[cffs_proto::BlockMember]| {
        group.iter().map(|m| (m.id, m.addr.clone())).collect::<std::collections::BTreeSet<_>>()
    };
    let wanted = key(members);
    map.groups.iter().any(|group| key(&group.members) == wanted)
}

fn parse_block_members(text: &str) -> Result<Vec<cffs_proto::BlockMember>, String> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (id, addr) = part.split_once('=').ok_or_else(|| format!("'{part}' is not ID=HOST:PORT"))?;
            let id = id.trim().parse().map_err(|_| format!("'{id}' is not a block server id"))?;
            Ok(cffs_proto::BlockMember { id, addr: addr.trim().to_string() })
        })
        .collect()
}

/// The cluster map, with each block server's own figures.
async fn block_status(client: &Client, json: bool) -> Result<(), Failure> {
    let map = client.cluster_map(true).await.map_err(|e| Failure(format!("cluster map: {e}")))?;
    let servers = client.block_server_status(&map).await;
    let leader = client.cluster_status().await.ok();
    let scrub = leader.as_ref().and_then(|s| s.scrub).unwrap_or_default();
    let gc = leader.as_ref().and_then(|s| s.gc).unwrap_or_default();
    if json {
        let groups: Vec<serde_json::Value> = map
            .groups
            .iter()
            .map(|group| {
                let members: Vec<serde_json::Value> = group
                    .members
                    .iter()
                    .map(|m| {
                        let status = servers.get(&m.addr).and_then(|s| s.as_ref().ok());
                        serde_json::json!({
                            "id": m.id, "addr": m.addr, "up": status.is_some(),
                            "blocks": status.map(|s| s.blocks), "bytes": status.map(|s| s.bytes),
                            "checksum_failures": status.map(|s| s.checksum_failures),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "group": group.id, "members": members, "changed_at": group.changed_at,
                    "refilling": (group.refilling != 0).then_some(group.refilling),
                    "replaced": group.replaced.as_ref().map(|m| m.id),
                })
            })
            .collect();
        let scrub = serde_json::json!({
            "passes": scrub.passes, "blocks_checked": scrub.blocks_checked, "bytes_read": scrub.bytes_read,
            "copies_bad": scrub.copies_bad, "copies_missing": scrub.copies_missing,
            "copies_repaired": scrub.copies_repaired, "blocks_lost": scrub.blocks_lost,
            "pass_blocks": scrub.pass_blocks, "refills_done": scrub.refills_done,
        });
        let gc = serde_json::json!({
            "rounds": gc.rounds, "blocks_listed": gc.blocks_listed, "tombstoned": gc.tombstoned,
            "deleted": gc.deleted, "tombstones_pending": gc.tombstones_pending,
        });
        let out = serde_json::json!({
            "version": map.version, "block_size": map.block_size, "groups": groups, "scrub": scrub, "gc": gc,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "cluster map version {}, block size {} bytes, {} block groups",
        map.version,
        map.block_size,
        map.groups.len()
    );
    for group in &map.groups {
        match (group.refilling, group.replaced.as_ref()) {
            (0, _) => println!("group {}:", group.id),
            (new, replaced) => println!(
                "group {}: refilling server {new} (in place of {}, since index {}): the scrubber's next whole pass ends it",
                group.id,
                replaced.map_or(0, |m| m.id),
                group.changed_at
            ),
        }
        for member in &group.members {
            match servers.get(&member.addr) {
                Some(Ok(s)) => println!(
                    "  server {} {}: {} blocks, {} bytes, {} bad copies found",
                    member.id, member.addr, s.blocks, s.bytes, s.checksum_failures
                ),
                Some(Err(e)) => println!("  server {} {}: unreachable ({e})", member.id, member.addr),
                None => println!("  server {} {}: not asked", member.id, member.addr),
            }
        }
    }
    println!(
        "scrubber (on the leader): {} passes, {} blocks checked ({} in this pass), {} bytes read; copies bad {}, missing {}, repaired {}; blocks lost {}; refills ended {}",
        scrub.passes,
        scrub.blocks_checked,
        scrub.pass_blocks,
        scrub.bytes_read,
        scrub.copies_bad,
        scrub.copies_missing,
        scrub.copies_repaired,
        scrub.blocks_lost,
        scrub.refills_done
    );
    println!(
        "collector (on the leader): {} rounds, {} blocks listed, {} unreferenced blocks marked, {} copies deleted, {} tombstones pending",
        gc.rounds, gc.blocks_listed, gc.tombstoned, gc.deleted, gc.tombstones_pending
    );
    Ok(())
}

async fn read_remote(client: &Client, path: &str) -> Result<Vec<u8>, Failure> {
    let p = path.to_string();
    client
        .run(|txn| {
            let p = p.clone();
            async move { txn.read_file(&p).await }
        })
        .await
        .map_err(|e| fail("read", path, e))
}

/// Removes `path`; with `recursive`, a directory and everything under it, in this one
/// transaction (so at most `TXN_KEYS_MAX` keys' worth of tree).
async fn remove(txn: &Transaction, path: &str, recursive: bool) -> Result<(), FsError> {
    let attr = txn.lstat(path).await?;
    if attr.kind != Kind::Dir {
        return txn.unlink(path).await;
    }
    if !recursive {
        return Err(FsError::IsDir);
    }
    // Depth first, without recursion: (path, children listed yet?).
    let mut stack = vec![(path.trim_end_matches('/').to_string(), false)];
    while let Some((dir, listed)) = stack.pop() {
        if listed {
            if dir.is_empty() {
                return Err(FsError::Busy("cannot remove the root directory".into()));
            }
            txn.rmdir(&dir).await?;
            continue;
        }
        stack.push((dir.clone(), true));
        for entry in txn.readdir(if dir.is_empty() { "/" } else { &dir }).await? {
            let child = format!("{dir}/{}", entry.name);
            match entry.kind {
                Kind::Dir => stack.push((child, false)),
                _ => txn.unlink(&child).await?,
            }
        }
    }
    Ok(())
}

fn kind_char(kind: Kind) -> char {
    match kind {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink => 'l',
    }
}

fn mode_string(attr: &Attr) -> String {
    let mut text = String::new();
    text.push(kind_char(attr.kind));
    for shift in [6, 3, 0] {
        let bits = (attr.mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

fn time_string(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

async fn ls(client: &Client, path: &str, long: bool, json: bool) -> Result<(), Failure> {
    let p = path.to_string();
    let listing = client
        .run(|txn| {
            let p = p.clone();
            async move {
                let attr = txn.stat(&p).await?;
                if attr.kind != Kind::Dir {
                    let name = p.rsplit('/').next().unwrap_or(&p).to_string();
                    return Ok(vec![(name, attr)]);
                }
                let mut rows = Vec::new();
                for entry in txn.readdir(&p).await? {
                    let child = format!("{}/{}", p.trim_end_matches('/'), entry.name);
                    let attr = if long { txn.lstat(&child).await? } else { placeholder_attr(&entry) };
                    rows.push((entry.name, attr));
                }
                Ok(rows)
            }
        })
        .await
        .map_err(|e| fail("access", path, e))?;
    if json {
        let rows: Vec<_> = listing
            .iter()
            .map(|(name, attr)| serde_json::json!({ "name": name, "attr": if long { serde_json::to_value(attr).unwrap_or_default() } else { serde_json::json!({"ino": attr.ino, "kind": attr.kind}) } }))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for (name, attr) in listing {
        if long {
            println!(
                "{} {:>3} {:>5} {:>5} {:>8} {} {}",
                mode_string(&attr),
                attr.nlink,
                attr.uid,
                attr.gid,
                attr.size,
                time_string(attr.mtime_ns),
                name
            );
        } else {
            println!("{name}");
        }
    }
    Ok(())
}

fn placeholder_attr(entry: &crate::DirEntry) -> Attr {
    Attr {
        ino: entry.ino,
        kind: entry.kind,
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 0,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: 0,
    }
}

fn print_stat(path: &str, attr: &Attr, json: bool) {
    if json {
        println!("{}", serde_json::to_string(attr).unwrap_or_default());
        return;
    }
    let kind = match attr.kind {
        Kind::File => "regular file",
        Kind::Dir => "directory",
        Kind::Symlink => "symbolic link",
    };
    println!("  File: {path}");
    println!("  Size: {:<10} Inode: {:<10} Links: {}  {kind}", attr.size, attr.ino, attr.nlink);
    println!("Access: ({:04o}/{})  Uid: {}  Gid: {}", attr.mode, mode_string(attr), attr.uid, attr.gid);
    println!("Access: {}", time_string(attr.atime_ns));
    println!("Modify: {}", time_string(attr.mtime_ns));
    println!("Change: {}", time_string(attr.ctime_ns));
}

async fn tree(client: &Client, path: &str, json: bool) -> Result<(), Failure> {
    let p = path.to_string();
    let lines = client
        .run(|txn| {
            let p = p.clone();
            async move {
                let mut lines: Vec<(usize, String, Kind, String)> = Vec::new();
                let mut stack = vec![(p.trim_end_matches('/').to_string(), 0usize)];
                while let Some((dir, depth)) = stack.pop() {
                    let entries = txn.readdir(if dir.is_empty() { "/" } else { &dir }).await?;
                    for entry in entries.into_iter().rev() {
                        let child = format!("{dir}/{}", entry.name);
                        lines.push((depth, entry.name.clone(), entry.kind, child.clone()));
                        if entry.kind == Kind::Dir {
                            stack.push((child, depth + 1));
                        }
                    }
                }
                Ok(lines)
            }
        })
        .await
        .map_err(|e| fail("access", path, e))?;
    // The walk above visits children in reverse; rebuild the depth-first order.
    let ordered = order_tree(lines);
    if json {
        let rows: Vec<_> =
            ordered.iter().map(|(_, _, kind, full)| serde_json::json!({"path": full, "kind": kind})).collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{path}");
    let (mut dirs, mut files) = (0, 0);
    for (depth, name, kind, _) in &ordered {
        let suffix = if *kind == Kind::Dir { "/" } else { "" };
        println!("{}{name}{suffix}", "    ".repeat(*depth + 1));
        if *kind == Kind::Dir {
            dirs += 1
        } else {
            files += 1
        }
    }
    println!("\n{dirs} directories, {files} files");
    Ok(())
}

fn order_tree(mut lines: Vec<(usize, String, Kind, String)>) -> Vec<(usize, String, Kind, String)> {
    // Component-wise, so that "/a/b" sorts right after "/a" (before "/a-b").
    lines.sort_by(|a, b| a.3.split('/').cmp(b.3.split('/')));
    lines
}

async fn cluster_status(client: &Client, json: bool) -> Result<(), Failure> {
    let all = client.cluster_status_all().await;
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|(addr, result)| match result {
                Ok(s) => serde_json::json!({"endpoint": addr, "node_id": s.node_id, "state": s.state, "leader_id": s.leader_id, "term": s.term, "last_applied": s.last_applied, "last_log_index": s.last_log_index, "log_committed": s.log_committed, "members": s.members.iter().map(|m| serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter})).collect::<Vec<_>>(),
                    "leases": s.leases.as_ref().map(|l| serde_json::json!({"sessions": l.sessions, "leased_keys": l.leased_keys, "granted": l.granted, "invalidations_sent": l.invalidations_sent, "invalidations_acked": l.invalidations_acked, "commits_waited": l.commits_waited, "commit_wait_ms": l.commit_wait_ms, "streams": l.streams, "keepalives": l.keepalives}))}),
                Err(e) => serde_json::json!({"endpoint": addr, "error": e.to_string()}),
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    let mut members = None;
    let mut leases = None;
    println!(
        "{:<22} {:>4} {:<10} {:>6} {:>6} {:>12} {:>12}",
        "ENDPOINT", "ID", "STATE", "LEADER", "TERM", "APPLIED", "LAST LOG"
    );
    let mut reachable = 0;
    for (addr, result) in &all {
        match result {
            Ok(s) => {
                reachable += 1;
                println!(
                    "{:<22} {:>4} {:<10} {:>6} {:>6} {:>12} {:>12}",
                    addr, s.node_id, s.state, s.leader_id, s.term, s.last_applied, s.last_log_index
                );
                members.get_or_insert_with(|| s.members.clone());
                if s.leases.is_some() {
                    leases = s.leases;
                }
            }
            Err(e) => println!("{addr:<22} unreachable: {e}"),
        }
    }
    if let Some(members) = members {
        println!();
        println!("members:");
        for m in members {
            println!("  {} {} {}", m.id, m.addr, if m.voter { "voter" } else { "learner" });
        }
    }
    if let Some(l) = leases {
        println!();
        println!(
            "leases (leader): {} sessions ({} streams open), {} keys leased; {} granted; {} keepalives answered; \
             invalidations {} sent, {} acknowledged; {} commits waited for an expiry ({} ms in all)",
            l.sessions,
            l.streams,
            l.leased_keys,
            l.granted,
            l.keepalives,
            l.invalidations_sent,
            l.invalidations_acked,
            l.commits_waited,
            l.commit_wait_ms
        );
    }
    if reachable == 0 {
        return Err(Failure("no endpoint answered".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(time_string(0), "1970-01-01 00:00:00");
        assert_eq!(time_string(1_700_000_000 * 1_000_000_000), "2023-11-14 22:13:20");
    }
}
