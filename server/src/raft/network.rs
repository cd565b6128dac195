//! The Raft transport between metadata replicas: openraft's RPCs over the `cffs.v1.Raft`
//! gRPC service. Payloads are openraft's request and response types in bincode; the reply
//! carries the remote `Result`, so a remote Raft error comes back as itself.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::prompt_election::LeaderContact;
use super::{MetaRaft, TypeConfig};
use crate::constants::{RAFT_RPC_TIMEOUT, RPC_MESSAGE_BYTES_MAX};
use cffs_proto::raft_client::RaftClient;
use cffs_proto::RaftPayload;

type NodeId = u64;

/// Opens a lazily connecting channel to `addr` (host:port).
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(RAFT_RPC_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(cffs_proto::limits::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(cffs_proto::limits::HTTP2_CONNECTION_WINDOW_BYTES);
    // The simulated transport has no frames.
    #[cfg(not(madsim))]
    let endpoint = endpoint.max_frame_size(cffs_proto::limits::HTTP2_MAX_FRAME_BYTES);
    Ok(endpoint.connect_lazy())
}

/// Raft RPC payloads are openraft's serde types in bincode: on the wire only, never on disk
/// (`storage/codec.rs` has the disk formats), so both ends must run one openraft version.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always serialize")
}

/// openraft asks for a new client for every replication stream and for every round that
/// confirms leadership (each read index, `ensure_linearizable`): a fresh channel each time
/// would open a TCP connection per peer per read. Channels are kept per address and shared
/// (a tonic channel multiplexes calls over one HTTP/2 connection, and reconnects by itself
/// after the peer restarts).
#[derive(Clone, Default)]
pub struct Network {
    channels: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Channel>>>,
}

impl Network {
    fn channel_to(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().expect("raft channels lock");
        if let Some(channel) = channels.get(addr) {
            return Some(channel.clone());
        }
        let opened = channel(addr).ok()?;
        channels.insert(addr.to_string(), opened.clone());
        Some(opened)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let client = self.channel_to(&node.addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
        });
        Connection { target, addr: node.addr.clone(), client }
    }
}

pub struct Connection {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
}

#[derive(Debug)]
struct TransportError(String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransportError {}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Connection {
    async fn call<Req, Resp, E>(&mut self, rpc: Rpc, request: &Req) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let error = TransportError(format!("bad peer address {}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        };
        let payload = RaftPayload { data: encode(request) };
        let mut request = tonic::Request::new(payload);
        request.set_timeout(RAFT_RPC_TIMEOUT);
        let call = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(RAFT_RPC_TIMEOUT, call).await {
            Err(_) => {
                let error = TransportError(format!("rpc to node {} timed out", self.target));
                return Err(RPCError::Network(NetworkError::new(&error)));
            }
            Ok(Err(status)) => {
                let error = TransportError(format!("rpc to node {}: {status}", self.target));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&error)),
                    _ => RPCError::Network(NetworkError::new(&error)),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, E> = bincode::deserialize(&reply.data).map_err(|e| {
            let error = TransportError(format!("decode reply from node {}: {e}", self.target));
            RPCError::Network(NetworkError::new(&error))
        })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call::<_, _, RaftError<NodeId>>(Rpc::AppendEntries, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call::<_, _, RaftError<NodeId, InstallSnapshotError>>(Rpc::InstallSnapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call::<_, _, RaftError<NodeId>>(Rpc::Vote, &rpc).await
    }
}

/// The server side: hands each RPC to the local Raft and returns its `Result` encoded, and
/// notes each append or snapshot chunk it accepted, and each vote it granted, as contact with
/// a leader (see `prompt_election`).
pub struct RaftService {
    raft: MetaRaft,
    contact: LeaderContact,
}

impl RaftService {
    pub fn new(raft: MetaRaft, contact: LeaderContact) -> Self {
        RaftService { raft, contact }
    }
}

fn decode_request<T: DeserializeOwned>(request: tonic::Request<RaftPayload>) -> Result<T, tonic::Status> {
    bincode::deserialize(&request.into_inner().data).map_err(|e| {
        cffs_proto::error_code::status(cffs_proto::ErrorCode::InvalidArgument, format!("decode raft rpc: {e}"))
    })
}

fn reply<T: Serialize>(result: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    Ok(tonic::Response::new(RaftPayload { data: encode(result) }))
}

#[tonic::async_trait]
impl cffs_proto::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let request: AppendEntriesRequest<TypeConfig> = decode_request(request)?;
        let result = self.raft.append_entries(request).await;
        if matches!(result, Ok(ref response) if !matches!(response, AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch();
        }
        reply(&result)
    }

    async fn vote(&self, request: tonic::Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let request: VoteRequest<NodeId> = decode_request(request)?;
        let result = self.raft.vote(request).await;
        if matches!(result, Ok(ref response) if response.vote_granted) {
            self.contact.touch();
        }
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let request: InstallSnapshotRequest<TypeConfig> = decode_request(request)?;
        let vote = request.vote;
        let result = self.raft.install_snapshot(request).await;
        if matches!(result, Ok(ref response) if response.vote == vote) {
            self.contact.touch();
        }
        reply(&result)
    }
}
