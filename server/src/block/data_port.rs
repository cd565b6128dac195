//! The block server's data port: block writes over plain TCP (the framing is
//! `cffs_proto::data_port`), read from the socket straight into the buffer the store writes
//! to disk from. Every put goes through the same checks as a gRPC `PutBlock`
//! (`BlockService::store_block`): length, crc, durable before the reply.
//!
//! Bounds: at most `DATA_PUTS_MAX` puts are read at once (each holds a buffer of its block's
//! size, so their memory is at most that many blocks); a block's bytes must arrive within
//! `DATA_BODY_TIMEOUT` of its head; an idle connection costs a task and a socket, no buffer.

use std::sync::Arc;
use std::time::Duration;

use cffs_proto::data_port::{reply_encode, PutHead, REQUEST_HEAD_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::service::{BlockService, Incoming};

/// Puts one block server reads at once over its data port.
pub const DATA_PUTS_MAX: usize = 32;
/// How long a block's bytes may take to arrive once its head has.
pub const DATA_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until the process ends, one task each.
pub(super) async fn serve(listener: TcpListener, service: BlockService) {
    let puts = Arc::new(Semaphore::new(DATA_PUTS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(%error, "block data port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (service, puts) = (service.clone(), puts.clone());
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &service, &puts).await {
                tracing::debug!(%peer, %error, "block data port: connection ended");
            }
        });
    }
}

/// One connection's requests, one at a time, until the client closes it or breaks framing.
async fn connection(mut stream: TcpStream, service: &BlockService, puts: &Semaphore) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; REQUEST_HEAD_LEN];
        match stream.read_exact(&mut head).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
        let head = match PutHead::decode(&head) {
            Ok(head) => head,
            Err(refused) => {
                // The bytes that follow cannot be framed: answer, then close.
                stream.write_all(&reply_encode(Some((refused.code, &refused.message)))).await?;
                stream.flush().await?;
                return Ok(());
            }
        };
        let _permit = puts.acquire().await.expect("the data port's semaphore is never closed");
        let mut buffer = service.put_buffer(head.len as usize);
        match tokio::time::timeout(DATA_BODY_TIMEOUT, stream.read_exact(buffer.data_mut())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "a block's bytes came too slowly")),
        }
        let stored = service.store_block(head.id, head.crc, Incoming::Buffer(buffer), false).await;
        let reply = match &stored {
            Ok(()) => reply_encode(None),
            Err((code, message)) => reply_encode(Some((*code, message))),
        };
        stream.write_all(&reply).await?;
        stream.flush().await?;
    }
}
