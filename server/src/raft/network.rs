//! The Raft transport between replicas: openraft's RPCs over the `cffs.v1.Raft` gRPC
//! service, for every group. Payloads are openraft's request and response types in bincode,
//! each call carrying its group's id; the reply carries the remote `Result`, so a remote Raft
//! error comes back as itself. One `RaftService` per server routes each call to the group it
//! names, and answers the probes elections and bootstraps send.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::prompt_election::LeaderContact;
use super::{GroupId, GroupTypes};
use crate::constants::{RAFT_RPC_TIMEOUT, RPC_MESSAGE_BYTES_MAX};
use cffs_proto::raft_client::RaftClient;
use cffs_proto::{RaftPayload, RaftProbeRequest, RaftProbeResponse};

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
/// The channels of one server to its peers, shared by every group it hosts and by the probes.
#[derive(Clone, Default)]
pub struct Channels {
    channels: Arc<std::sync::Mutex<BTreeMap<String, Channel>>>,
}

impl Channels {
    fn channel_to(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().expect("raft channels lock");
        if let Some(channel) = channels.get(addr) {
            return Some(channel.clone());
        }
        let opened = channel(addr).ok()?;
        channels.insert(addr.to_string(), opened.clone());
        Some(opened)
    }

    /// A Raft client to `addr`, on the shared channel; None for an address that cannot be one.
    pub fn client(&self, addr: &str) -> Option<RaftClient<Channel>> {
        self.channel_to(addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
        })
    }

    /// Asks the replica at `addr` for its log in `group`; None when it does not answer within
    /// `timeout` (or does not host the group).
    pub async fn probe(&self, addr: &str, group: GroupId, timeout: std::time::Duration) -> Option<RaftProbeResponse> {
        let mut client = self.client(addr)?;
        match tokio::time::timeout(timeout, client.probe(RaftProbeRequest { group })).await {
            Ok(Ok(reply)) => Some(reply.into_inner()),
            _ => None,
        }
    }
}

/// openraft's network factory for one group: its calls name the group, over the server's
/// shared channels.
pub struct Network<C> {
    channels: Channels,
    group: GroupId,
    _types: std::marker::PhantomData<fn() -> C>,
}

impl<C> Network<C> {
    pub fn new(channels: Channels, group: GroupId) -> Self {
        Network { channels, group, _types: std::marker::PhantomData }
    }
}

impl<C: GroupTypes> RaftNetworkFactory<C> for Network<C> {
    type Network = Connection<C>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let client = self.channels.client(&node.addr);
        Connection { target, addr: node.addr.clone(), group: self.group, client, _types: std::marker::PhantomData }
    }
}

pub struct Connection<C> {
    target: NodeId,
    addr: String,
    group: GroupId,
    client: Option<RaftClient<Channel>>,
    _types: std::marker::PhantomData<fn() -> C>,
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

impl<C> Connection<C> {
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
        let payload = RaftPayload { data: encode(request), group: self.group };
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

impl<C: GroupTypes> RaftNetwork<C> for Connection<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call::<_, _, RaftError<NodeId>>(Rpc::AppendEntries, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
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

/// One group as the server side sees it: its calls decoded, handed to its Raft, and the
/// `Result` encoded; each append or snapshot chunk it accepted, and each vote it granted,
/// noted as contact with a leader (see `prompt_election`).
#[tonic::async_trait]
trait GroupEndpoint: Send + Sync + 'static {
    async fn append_entries(&self, data: &[u8]) -> Result<Vec<u8>, tonic::Status>;
    async fn vote(&self, data: &[u8]) -> Result<Vec<u8>, tonic::Status>;
    async fn install_snapshot(&self, data: &[u8]) -> Result<Vec<u8>, tonic::Status>;
    fn probe(&self) -> RaftProbeResponse;
}

struct Hosted<C: GroupTypes> {
    raft: Raft<C>,
    contact: LeaderContact,
}

#[tonic::async_trait]
impl<C: GroupTypes> GroupEndpoint for Hosted<C> {
    async fn append_entries(&self, data: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let request: AppendEntriesRequest<C> = decode_request(data)?;
        let result = self.raft.append_entries(request).await;
        if matches!(result, Ok(ref response) if !matches!(response, AppendEntriesResponse::HigherVote(_))) {
            self.contact.touch();
        }
        Ok(encode(&result))
    }

    async fn vote(&self, data: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let request: VoteRequest<NodeId> = decode_request(data)?;
        let result = self.raft.vote(request).await;
        if matches!(result, Ok(ref response) if response.vote_granted) {
            self.contact.touch();
        }
        Ok(encode(&result))
    }

    async fn install_snapshot(&self, data: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let request: InstallSnapshotRequest<C> = decode_request(data)?;
        let vote = request.vote;
        let result = self.raft.install_snapshot(request).await;
        if matches!(result, Ok(ref response) if response.vote == vote) {
            self.contact.touch();
        }
        Ok(encode(&result))
    }

    fn probe(&self) -> RaftProbeResponse {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        RaftProbeResponse {
            last_log_index: metrics.last_log_index.unwrap_or(0),
            initialized: metrics.last_log_index.is_some() || metrics.vote.leader_id().term > 0,
        }
    }
}

/// The server side of the transport: every group this server hosts, by id.
#[derive(Clone, Default)]
pub struct RaftService {
    groups: BTreeMap<GroupId, Arc<dyn GroupEndpoint>>,
}

impl RaftService {
    /// Adds `group`, served by `raft`; `contact` is told of each leader's call it accepts.
    pub fn with_group<C: GroupTypes>(mut self, group: GroupId, raft: Raft<C>, contact: LeaderContact) -> Self {
        self.groups.insert(group, Arc::new(Hosted { raft, contact }));
        self
    }

    fn group(&self, group: GroupId) -> Result<&Arc<dyn GroupEndpoint>, tonic::Status> {
        self.groups.get(&group).ok_or_else(|| {
            cffs_proto::error_code::status(
                cffs_proto::ErrorCode::InvalidArgument,
                format!("this server hosts no raft group {group}"),
            )
        })
    }
}

fn decode_request<T: DeserializeOwned>(data: &[u8]) -> Result<T, tonic::Status> {
    bincode::deserialize(data).map_err(|e| {
        cffs_proto::error_code::status(cffs_proto::ErrorCode::InvalidArgument, format!("decode raft rpc: {e}"))
    })
}

fn reply(group: GroupId, data: Vec<u8>) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    Ok(tonic::Response::new(RaftPayload { data, group }))
}

#[tonic::async_trait]
impl cffs_proto::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let RaftPayload { data, group } = request.into_inner();
        reply(group, self.group(group)?.append_entries(&data).await?)
    }

    async fn vote(&self, request: tonic::Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let RaftPayload { data, group } = request.into_inner();
        reply(group, self.group(group)?.vote(&data).await?)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let RaftPayload { data, group } = request.into_inner();
        reply(group, self.group(group)?.install_snapshot(&data).await?)
    }

    async fn probe(
        &self,
        request: tonic::Request<RaftProbeRequest>,
    ) -> Result<tonic::Response<RaftProbeResponse>, tonic::Status> {
        let group = request.into_inner().group;
        Ok(tonic::Response::new(self.group(group)?.probe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cffs_proto::raft_server::Raft as _;

    #[tokio::test]
    async fn a_call_for_a_group_the_server_does_not_host_is_refused() {
        let service = RaftService::default();
        let status = service.probe(tonic::Request::new(RaftProbeRequest { group: 7 })).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("hosts no raft group 7"), "{status:?}");
        let payload = RaftPayload { data: encode(&"anything"), group: 7 };
        let status = service.append_entries(tonic::Request::new(payload)).await.unwrap_err();
        assert!(status.message().contains("hosts no raft group 7"), "{status:?}");
    }
}
