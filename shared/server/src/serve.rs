//! The HTTP/1.1 server loop, with the timeouts and the connection limit a public endpoint
//! needs (Mimir's `-server.http-server-*-timeout` and `-server.http-conn-limit`).
//!
//! `axum::serve` has none of them: a client that opens a connection and sends half a request
//! line holds a socket (and a file descriptor) forever, and enough of them exhaust the
//! process. Each connection here is served by hyper's HTTP/1 connection directly, watched by
//! its own task:
//!
//! * **header timeout**: from the first byte of a request (or the accept, for the first one)
//!   to the end of its headers;
//! * **idle timeout**: between the end of one response and the first byte of the next;
//! * **read timeout**: from the start of a request to the end of its body (the body fails
//!   when it passes, and the connection is not reused);
//! * **write timeout**: from the end of the headers to the end of the response: a handler
//!   that does not answer in time gets a 503 (the handler itself runs on to its end, as in
//!   Go: an operator's flush is not cut half way), a response body still streaming is cut;
//!   a client that disconnects aborts its handler;
//! * **connection limit**: beyond it, the accept loop waits for a slot (connections queue in
//!   the kernel's backlog, as Go's `netutil.LimitListener` makes them do in Mimir).
//!
//! Hyper's own header timer is off: it also runs while a keep-alive connection is idle, which
//! would make the idle timeout meaningless. Shutdown stops accepting, closes idle connections
//! and lets requests in flight finish.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::IntoResponse;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use norn_model::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::tls::listen::{HANDSHAKE_TIMEOUT, ServerTls, handshake};
use crate::{HttpError, Metrics};

/// Timeouts and limits of the HTTP server. A zero duration disables that timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// Longest from the start of a request to the end of its body.
    pub read_timeout: Duration,
    /// Longest to receive a request's headers (zero: the read timeout).
    pub read_header_timeout: Duration,
    /// Longest from the end of a request's headers to the end of the response.
    pub write_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request (zero: the read timeout).
    pub idle_timeout: Duration,
    /// Most connections served at once (0 = no limit).
    pub conn_limit: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(120),
            read_header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            conn_limit: 0,
        }
    }
}

impl ServerOptions {
    fn header_timeout(&self) -> Option<Duration> {
        nonzero(self.read_header_timeout).or(nonzero(self.read_timeout))
    }

    fn idle(&self) -> Option<Duration> {
        nonzero(self.idle_timeout).or(nonzero(self.read_timeout))
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets requests in flight
/// finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    opts: ServerOptions,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    serve_with_tls(listener, app, shutdown, opts, metrics, None).await
}

/// [`serve`], over TLS when `tls` is given: each connection's handshake runs in its own
/// task, bounded by the header timeout (the time a client has to start talking).
pub async fn serve_with_tls(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    opts: ServerOptions,
    metrics: Arc<Metrics>,
    tls: Option<ServerTls>,
) -> io::Result<()> {
    let opts = Arc::new(opts);
    let slots =
        (opts.conn_limit > 0).then(|| Arc::new(tokio::sync::Semaphore::new(opts.conn_limit)));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = match &slots {
            Some(s) => tokio::select! {
                p = Arc::clone(s).acquire_owned() => Some(p.expect("the semaphore is never closed")),
                _ = shutdown.cancelled() => break,
            },
            None => None,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        match stream {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let (app, opts, shutdown) = (app.clone(), Arc::clone(&opts), shutdown.clone());
                let metrics = Arc::clone(&metrics);
                let tls = tls.clone();
                metrics.http_open_connections.inc();
                conns.spawn(async move {
                    let timed_out = match tls {
                        None => serve_conn(stream, app, &opts, shutdown).await,
                        Some(tls) => {
                            let limit = opts.header_timeout().unwrap_or(HANDSHAKE_TIMEOUT);
                            match handshake(&tls, stream, limit).await {
                                Some(s) => serve_conn(s, app, &opts, shutdown).await,
                                None => None,
                            }
                        }
                    };
                    if let Some(kind) = timed_out {
                        metrics
                            .http_connection_timeouts
                            .with_label_values(&[kind])
                            .inc();
                    }
                    metrics.http_open_connections.dec();
                    drop(permit);
                });
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // Out of file descriptors and the like: accepting again at once would spin.
                tracing::error!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What the watcher of one connection needs to know; written by the socket wrapper and by
/// each request.
struct ConnState {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `start` when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Milliseconds since `start` of the first byte received while idle; `NONE` if none.
    first_byte_ms: AtomicU64,
    changed: tokio::sync::Notify,
}

const NONE: u64 = u64::MAX;

impl ConnState {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            // The first request's header time counts from the accept.
            first_byte_ms: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// When the connection must be closed if nothing changes; `None` while a request is in
    /// flight (its own timeouts apply) or when no timeout is set.
    fn deadline(&self, opts: &ServerOptions) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        match self.first_byte_ms.load(Ordering::SeqCst) {
            NONE => Some(self.at(self.idle_since_ms.load(Ordering::SeqCst)) + opts.idle()?),
            first => Some(self.at(first) + opts.header_timeout()?),
        }
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0
            && self
                .first_byte_ms
                .compare_exchange(NONE, self.now_ms(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            // The header deadline may be sooner than the idle one the watcher sleeps on.
            self.changed.notify_one();
        }
    }
}

/// Aborts a handler task when the request is dropped (the client went away) unless
/// disarmed.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Marks a request in flight until dropped (when hyper has written or dropped the response).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        if s.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            s.idle_since_ms.store(s.now_ms(), Ordering::SeqCst);
            s.first_byte_ms.store(NONE, Ordering::SeqCst);
            s.changed.notify_one();
        }
    }
}

/// Serves one connection to its end; returns the kind of timeout (`idle`, `header`) if the
/// server closed it for one.
async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    app: Router,
    opts: &ServerOptions,
    shutdown: CancellationToken,
) -> Option<&'static str> {
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        state: Arc::clone(&state),
    });
    let svc_state = Arc::clone(&state);
    let (read_timeout, write_timeout) = (nonzero(opts.read_timeout), nonzero(opts.write_timeout));
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        let in_flight = InFlight::new(&svc_state);
        async move {
            let started = Instant::now();
            let read_deadline = read_timeout.map(|d| started + d);
            let write_deadline = write_timeout.map(|d| started + d);
            let req = req.map(|b| Body::new(DeadlineBody::new(b, read_deadline, None)));
            // The handler runs as its own task: a client that goes away aborts it (as when
            // the connection future is dropped), but the write timeout only stops waiting for
            // it, as Go's server does, so an operator's flush or shutdown is never cut half
            // way by the HTTP server.
            let mut task = tokio::spawn(app.oneshot(req));
            let mut abort = AbortOnDrop(Some(task.abort_handle()));
            let joined = match write_deadline {
                Some(d) => match tokio::time::timeout_at(d, &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        abort.disarm();
                        let resp = HttpError::new(
                            ErrorKind::Timeout,
                            "the server's write timeout (-server.http-server-write-timeout) passed before the response was ready",
                        )
                        .into_response();
                        // A small fixed body: let it be written.
                        return Ok(
                            resp.map(|b| Body::new(DeadlineBody::new(b, None, Some(in_flight))))
                        );
                    }
                },
                None => (&mut task).await,
            };
            abort.disarm();
            let resp = match joined {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => match e {},
                Err(e) => {
                    tracing::error!(error = %e, "HTTP handler panicked");
                    HttpError::internal("internal error: the request handler failed")
                        .into_response()
                }
            };
            // Streaming the response counts against the same write deadline.
            Ok::<_, Infallible>(
                resp.map(|b| Body::new(DeadlineBody::new(b, write_deadline, Some(in_flight)))),
            )
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = state.deadline(opts);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return None;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = state.changed.notified() => {}
            _ = sleep_until(deadline), if deadline.is_some() => {
                if state.deadline(opts).is_some_and(|d| d <= Instant::now()) {
                    // Idle, or headers too slow: nothing in flight, so dropping loses nothing.
                    let kind = if state.first_byte_ms.load(Ordering::SeqCst) == NONE {
                        "idle"
                    } else {
                        "header"
                    };
                    tracing::debug!(kind, "closing an HTTP connection on timeout");
                    return Some(kind);
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The socket, telling the connection's watcher when bytes arrive.
struct WatchedIo<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A body that fails once its deadline passes; optionally keeps the request marked in
/// flight until it is dropped.
struct DeadlineBody<B> {
    inner: B,
    sleep: Option<Pin<Box<Sleep>>>,
    _in_flight: Option<InFlight>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, deadline: Option<Instant>, in_flight: Option<InFlight>) -> Self {
        Self {
            inner,
            sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            _in_flight: in_flight,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("HTTP server timeout: the body took too long")]
struct BodyTimeout;

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(s) = self.sleep.as_mut()
            && s.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use std::io::{Read, Write};

    async fn start(opts: ServerOptions, app: Router) -> (u16, CancellationToken) {
        start_with(opts, app, Metrics::new()).await
    }

    async fn start_with(
        opts: ServerOptions,
        app: Router,
        metrics: Arc<Metrics>,
    ) -> (u16, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, app, stop.clone(), opts, metrics));
        (port, stop)
    }

    fn app() -> Router {
        Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/echo",
                post(|b: Bytes| async move { format!("{}", b.len()) }),
            )
    }

    fn opts() -> ServerOptions {
        ServerOptions {
            read_timeout: Duration::from_secs(2),
            read_header_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(600),
            conn_limit: 0,
        }
    }

    /// Reads until EOF (the server closed) or `limit` passes; returns what arrived and
    /// whether the connection was closed.
    fn read_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (String, bool) {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let end = std::time::Instant::now() + limit;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < end {
            match s.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&out).to_string(), true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return (String::from_utf8_lossy(&out).to_string(), true);
                }
                Err(_) => {}
            }
        }
        (String::from_utf8_lossy(&out).to_string(), false)
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_headers_are_closed_after_the_header_timeout() {
        let metrics = Metrics::new();
        let (port, _stop) = start_with(opts(), app(), Arc::clone(&metrics)).await;
        let (text, closed) = blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n").unwrap();
            read_until_closed(&mut s, Duration::from_secs(20))
        })
        .await;
        assert!(
            closed,
            "connection with partial headers still open: {text:?}"
        );
        assert!(!text.contains("200 OK"), "{text}");
        // A connection that sends nothing at all is closed too.
        let closed = blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            read_until_closed(&mut s, Duration::from_secs(20)).1
        })
        .await;
        assert!(closed);
        wait_for("both counted as header timeouts, none open", || {
            let header = metrics
                .http_connection_timeouts
                .with_label_values(&["header"]);
            header.get() == 2 && metrics.http_open_connections.get() == 0
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_keep_alive_connections_are_closed_after_a_full_exchange() {
        let (port, _stop) = start(opts(), app()).await;
        let (text, closed) = blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            read_until_closed(&mut s, Duration::from_secs(20))
        })
        .await;
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(closed, "idle keep-alive connection still open");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_handlers_get_503_and_slow_bodies_fail() {
        let (port, _stop) = start(opts(), app()).await;
        let (text, _) = blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            read_until_closed(&mut s, Duration::from_secs(20))
        })
        .await;
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        // Headers complete, body promised but never sent: the read timeout ends it.
        let opts = ServerOptions {
            write_timeout: Duration::from_secs(30),
            ..opts()
        };
        let (port, _stop2) = start(opts, app()).await;
        let (text, closed) = blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
                .unwrap();
            read_until_closed(&mut s, Duration::from_secs(20))
        })
        .await;
        assert!(text.starts_with("HTTP/1.1 4"), "{text}");
        assert!(closed);
    }

    static FINISHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Sleeps `ms` milliseconds, then counts itself finished.
    fn finishing_app() -> Router {
        Router::new().route(
            "/work/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    FINISHED.fetch_add(1, Ordering::SeqCst);
                    "done"
                },
            ),
        )
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < end, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The write timeout answers 503 but lets the handler finish (an operator's flush must
    /// not stop half way); a client that goes away aborts its handler.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_timeout_detaches_and_disconnect_aborts() {
        let (port, _stop) = start(opts(), finishing_app()).await;
        let before = FINISHED.load(Ordering::SeqCst);
        let (text, _) = blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /work/1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            read_until_closed(&mut s, Duration::from_secs(20))
        })
        .await;
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        wait_for("the timed-out handler finished", || {
            FINISHED.load(Ordering::SeqCst) > before
        })
        .await;
        // Disconnect while the handler sleeps: it never finishes.
        let opts = ServerOptions {
            write_timeout: Duration::from_secs(60),
            ..opts()
        };
        let (port, _stop2) = start(opts, finishing_app()).await;
        let before = FINISHED.load(Ordering::SeqCst);
        blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /work/1500 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
        })
        .await;
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert_eq!(
            FINISHED.load(Ordering::SeqCst),
            before,
            "aborted handler ran on"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_wait_for_a_slot() {
        let opts = ServerOptions {
            conn_limit: 1,
            idle_timeout: Duration::from_secs(60),
            read_header_timeout: Duration::from_secs(60),
            ..opts()
        };
        let (port, _stop) = start(opts, app()).await;
        let (first_answered, second_early, second_late) = blocking(move || {
            let mut a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            a.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 1024];
            let n = a.read(&mut buf).unwrap();
            let first = String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200");
            // `a` stays open (keep-alive): the only slot is taken.
            let mut b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            b.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let (early, _) = read_until_closed(&mut b, Duration::from_millis(700));
            drop(a);
            let (late, _) = read_until_closed(&mut b, Duration::from_secs(20));
            (first, early, late)
        })
        .await;
        assert!(first_answered);
        assert!(
            second_early.is_empty(),
            "served beyond the limit: {second_early}"
        );
        assert!(second_late.starts_with("HTTP/1.1 200"), "{second_late}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_accepting_and_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, app(), stop.clone(), opts(), Metrics::new()));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}
