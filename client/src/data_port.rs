//! Block writes over a block server's data port (`cffs_proto::data_port`): the block goes
//! from the client's memory to the socket and from the socket into the server's disk buffer,
//! without gRPC's three copies on the way (docs/design/blocks.md, "The data port").
//!
//! A server announces its data port in `BlockStatus`; the client asks once per server and
//! keeps the answer, with a few idle connections per server. A connection that breaks (the
//! server restarted, perhaps on another port) is dropped with every idle one to that server,
//! the port is asked again next time, and that one put goes over gRPC instead: a put is
//! idempotent (same id, same bytes), so sending it twice is safe. A port the client cannot
//! connect to at all (a client outside the cluster's network, reaching it through published
//! gRPC ports and `--address-map`) counts as absent for a while, so such a client writes
//! over gRPC without a failed connect per block. The address map applies to data addresses
//! too. A put that times out is not sent again over gRPC: the server is slow or cut off, and
//! the write's majority rule decides.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use cffs_proto::data_port::{reply_head_decode, PutHead, REPLY_HEAD_LEN};
use cffs_proto::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::FsError;

/// Idle data connections kept per block server.
pub const IDLE_CONNECTIONS_PER_SERVER: usize = 8;
/// How long "this server has no data port" (or none this client can reach) is believed
/// before it is asked again: a restarted server that refused connections while down is
/// written over gRPC for at most this long.
const NO_PORT_RECHECK: Duration = Duration::from_secs(10);

/// What is known of one server's data port.
#[derive(Clone)]
enum Known {
    /// HOST:PORT of the data port.
    At(String),
    /// The server has none (an older server): puts go over gRPC until `since` is old.
    Absent { since: Instant },
}

/// How a put over the data port ended.
pub(crate) enum PutOutcome {
    /// The server stored the block, or refused it (`Err`): a definite answer.
    Answered(Result<(), FsError>),
    /// The server has no data port, or its connection broke before an answer: send the put
    /// over gRPC.
    UseGrpc,
}

#[derive(Default)]
pub(crate) struct DataPorts {
    known: Mutex<BTreeMap<String, Known>>,
    idle: Mutex<BTreeMap<String, Vec<TcpStream>>>,
}

/// `host:port` with the port replaced.
fn with_port(addr: &str, port: u32) -> Option<String> {
    let (host, _) = addr.rsplit_once(':')?;
    Some(format!("{host}:{port}"))
}

impl DataPorts {
    /// The data port of the server at `addr` (its gRPC address) as far as known; `None`
    /// when it must be asked.
    fn known(&self, addr: &str) -> Option<Known> {
        let known = self.known.lock().expect("data ports").get(addr).cloned()?;
        match known {
            Known::Absent { since } if since.elapsed() >= NO_PORT_RECHECK => None,
            known => Some(known),
        }
    }

    /// Records the server's answer to `BlockStatus`.
    pub(crate) fn learn(&self, addr: &str, data_port: u32) {
        let known = match with_port(addr, data_port).filter(|_| data_port != 0) {
            Some(data_addr) => Known::At(data_addr),
            None => Known::Absent { since: Instant::now() },
        };
        self.known.lock().expect("data ports").insert(addr.to_string(), known);
    }

    /// Forgets the server's port and its idle connections (its connection broke), or, when
    /// the port could not be reached at all, holds it absent for a while.
    fn forget(&self, addr: &str, data_addr: &str, unreachable: bool) {
        let mut known = self.known.lock().expect("data ports");
        match unreachable {
            true => known.insert(addr.to_string(), Known::Absent { since: Instant::now() }),
            false => known.remove(addr),
        };
        drop(known);
        self.idle.lock().expect("data connections").remove(data_addr);
    }

    /// True when `addr`'s data port must be asked before a put can use it.
    pub(crate) fn needs_asking(&self, addr: &str) -> bool {
        self.known(addr).is_none()
    }

    /// Puts a block on the server whose gRPC address is `addr`, over its data port.
    pub(crate) async fn put(&self, addr: &str, head: PutHead, data: &[u8], timeout: Duration) -> PutOutcome {
        let data_addr = match self.known(addr) {
            Some(Known::At(data_addr)) => data_addr,
            Some(Known::Absent { .. }) | None => return PutOutcome::UseGrpc,
        };
        let idle = self.idle.lock().expect("data connections").get_mut(&data_addr).and_then(Vec::pop);
        // Err((error, true)) when no connection could be made at all.
        let exchange = async {
            let mut stream = match idle {
                Some(stream) => stream,
                None => {
                    let stream = TcpStream::connect(crate::calls::dialed(&data_addr)).await.map_err(|e| (e, true))?;
                    let _ = stream.set_nodelay(true);
                    stream
                }
            };
            let answer = exchange(&mut stream, &head, data).await.map_err(|e| (e, false))?;
            Ok::<_, (std::io::Error, bool)>((stream, answer))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => PutOutcome::Answered(Err(FsError::Unavailable(format!(
                "block server {addr} (data port {data_addr}) timed out"
            )))),
            Ok(Err((error, unreachable))) => {
                tracing::debug!(%addr, %data_addr, %error, unreachable, "block data port failed; this put goes over gRPC");
                self.forget(addr, &data_addr, unreachable);
                PutOutcome::UseGrpc
            }
            Ok(Ok((stream, answer))) => {
                // A refused head closes the connection on the server's side; any other
                // answer leaves it ready for the next request.
                let framing_kept = !matches!(&answer, Some((ErrorCode::InvalidArgument | ErrorCode::TooLarge, _)));
                if framing_kept {
                    let mut idle = self.idle.lock().expect("data connections");
                    let kept = idle.entry(data_addr).or_default();
                    if kept.len() < IDLE_CONNECTIONS_PER_SERVER {
                        kept.push(stream);
                    }
                }
                PutOutcome::Answered(match answer {
                    None => Ok(()),
                    Some((code, message)) => Err(FsError::from_status(&cffs_proto::error_code::status(code, message))),
                })
            }
        }
    }
}

/// One request on a connection: the head, the block, then the reply. `Some` is a refusal.
async fn exchange(stream: &mut TcpStream, head: &PutHead, data: &[u8]) -> std::io::Result<Option<(ErrorCode, String)>> {
    stream.write_all(&head.encode()).await?;
    stream.write_all(data).await?;
    stream.flush().await?;
    let mut reply = [0u8; REPLY_HEAD_LEN];
    stream.read_exact(&mut reply).await?;
    match reply_head_decode(&reply) {
        Err(why) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why)),
        Ok(None) => Ok(None),
        Ok(Some((code, len))) => {
            let mut message = vec![0u8; len];
            stream.read_exact(&mut message).await?;
            Ok(Some((code, String::from_utf8_lossy(&message).into_owned())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_address_keeps_the_host_the_client_knows() {
        assert_eq!(with_port("10.0.0.4:7101", 40001).as_deref(), Some("10.0.0.4:40001"));
        assert_eq!(with_port("block-3:7100", 7300).as_deref(), Some("block-3:7300"));
        assert_eq!(with_port("[::1]:7100", 9).as_deref(), Some("[::1]:9"));
        assert_eq!(with_port("nohost", 9), None);
    }

    #[tokio::test]
    async fn a_server_without_a_data_port_is_written_over_grpc_and_a_known_port_keeps_its_host() {
        let ports = DataPorts::default();
        assert!(ports.needs_asking("h:1"));
        ports.learn("h:1", 0);
        assert!(!ports.needs_asking("h:1"));
        let head = PutHead { id: [1; 16], crc: 0, len: 1 };
        assert!(matches!(ports.put("h:1", head, b"x", Duration::from_secs(1)).await, PutOutcome::UseGrpc));
        ports.learn("h:2", 7300);
        assert!(matches!(ports.known("h:2"), Some(Known::At(a)) if a == "h:7300"));
    }

    #[tokio::test]
    async fn a_data_port_that_cannot_be_reached_is_not_tried_for_every_block() {
        let ports = DataPorts::default();
        // Nothing listens on port 1 of loopback: the connect is refused.
        ports.learn("127.0.0.1:7101", 1);
        let head = PutHead { id: [1; 16], crc: 0, len: 1 };
        assert!(matches!(ports.put("127.0.0.1:7101", head, b"x", Duration::from_secs(5)).await, PutOutcome::UseGrpc));
        assert!(!ports.needs_asking("127.0.0.1:7101"), "held absent, not asked again at the next put");
        assert!(matches!(ports.known("127.0.0.1:7101"), Some(Known::Absent { .. })));
    }
}
