//! The TLS side of the HTTP and gRPC servers: a handshake per accepted connection, bounded
//! in time, with the listener's current (possibly just reloaded) config.
//!
//! The handshake runs in the connection's own task, so a slow or plain-text client holds up
//! no one else. A plain-text client gets a TLS alert and a closed connection at once (its
//! first bytes are not a ClientHello), not a hang.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::Reloading;

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's TLS: its reloading config.
pub type ServerTls = Arc<Reloading<ServerConfig>>;

/// Runs the server side of a handshake; `None` (counted and logged at debug) if it fails or
/// takes longer than `timeout`.
pub async fn handshake(
    tls: &Reloading<ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tls.handshake_failed();
            tracing::debug!(listener = tls.name(), ?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tls.handshake_failed();
            tracing::debug!(listener = tls.name(), ?peer, "TLS handshake timed out");
            None
        }
    }
}

/// A TLS connection to the gRPC server; tonic learns the peer's addresses from it.
pub struct GrpcTlsStream(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for GrpcTlsStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for GrpcTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The gRPC server's connections: accepted on `listener`, each handshaken in its own task,
/// yielded once secure. Ends when `stop` is cancelled.
pub fn grpc_incoming(
    listener: TcpListener,
    tls: ServerTls,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<GrpcTlsStream>> + Send + 'static {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<GrpcTlsStream>(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => r,
                _ = stop.cancelled() => break,
            };
            match tcp {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let (tls, tx) = (Arc::clone(&tls), tx.clone());
                    tokio::spawn(async move {
                        if let Some(s) = handshake(&tls, tcp, HANDSHAKE_TIMEOUT).await {
                            let _ = tx.send(GrpcTlsStream(s)).await;
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))
}
