//! Memberlist's TCP frames: `[kind][u32 length][payload]`, or, with an encryption key, one
//! sealed frame whose opened payload is `[kind][payload]` (see [`crate::gossip_key`]).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gossip_key::GossipKey;

/// Largest TCP frame accepted, so a bad peer cannot make us allocate without bound.
const MAX_TCP_FRAME: usize = 256 << 20;

/// Frame type of a sealed frame; its payload, once opened, is `[kind][payload]`.
const TCP_SEALED: u8 = 0xe5;

pub(super) async fn write_frame(
    stream: &mut TcpStream,
    key: Option<&GossipKey>,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let sealed;
    let (kind, payload) = match key {
        None => (kind, payload),
        Some(key) => {
            let mut plain = Vec::with_capacity(payload.len() + 1);
            plain.push(kind);
            plain.extend_from_slice(payload);
            sealed = key
                .seal(&plain)
                .ok_or_else(|| std::io::Error::other("the system RNG failed"))?;
            (TCP_SEALED, sealed.as_slice())
        }
    };
    let mut buf = Vec::with_capacity(payload.len() + 5);
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Reads one frame; with a key, only a frame sealed with it is accepted (`PermissionDenied`
/// otherwise).
pub(super) async fn read_frame(
    stream: &mut TcpStream,
    key: Option<&GossipKey>,
) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = stream.read_u8().await?;
    let len = stream.read_u32().await? as usize;
    if len > MAX_TCP_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit"),
        ));
    }
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await?;
    let Some(key) = key else {
        return Ok((kind, payload));
    };
    let denied = || {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "frame not sealed with this node's memberlist encryption key",
        )
    };
    if kind != TCP_SEALED {
        return Err(denied());
    }
    let mut plain = key.open(&payload).ok_or_else(denied)?;
    if plain.is_empty() {
        return Err(denied());
    }
    let kind = plain.remove(0);
    Ok((kind, plain))
}
