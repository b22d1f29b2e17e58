//! An HTTP proxy in front of the S3 server that holds requests: every request the test's
//! predicate picks (method, path) is read and never answered, and everything else is
//! forwarded.
//!
//! Why: it stops a compactor at an exact step. A block upload puts `meta.json` last, so a
//! compactor whose `meta.json` PUT hangs here has uploaded the rest of its output block and
//! is exactly "mid-upload"; one whose first `deletion-mark.json` PUT hangs has a complete
//! output whose inputs are not marked yet. A `kill -9` there leaves that state in the bucket,
//! which no timing-based pause can promise.
//!
//! One request per connection: each request goes upstream on a fresh connection with
//! `Connection: close`, and the answer goes back with `Connection: close`, so no parsing of
//! response framing is needed (the body ends where the upstream closes).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which requests to hold: `(method, path)`.
pub type Hold = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The proxy; stops (and drops held requests) when dropped.
pub struct HoldProxy {
    port: u16,
    held: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl HoldProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `127.0.0.1:upstream`, holding what
    /// `hold` picks.
    pub fn start(
        upstream: u16,
        hold: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) -> HoldProxy {
        let hold: Hold = Arc::new(hold);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (held, stop) = (Arc::clone(&held), Arc::clone(&stop));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (hold, held, stop) =
                        (Arc::clone(&hold), Arc::clone(&held), Arc::clone(&stop));
                    std::thread::spawn(move || serve(conn, upstream, &*hold, &held, &stop));
                }
            })
        };
        HoldProxy {
            port,
            held,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Paths of the requests held so far.
    pub fn held(&self) -> Vec<String> {
        self.held.lock().unwrap().clone()
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The request head (up to the blank line) and the body bytes read with it.
fn read_head(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).into_owned();
            return Some((head, buf[at + 4..].to_vec()));
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn serve(
    mut conn: TcpStream,
    upstream: u16,
    hold: &(dyn Fn(&str, &str) -> bool + Send + Sync),
    held: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let Some((head, mut body)) = read_head(&mut conn) else {
        return;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let headers: Vec<&str> = lines.collect();
    let length: usize = headers
        .iter()
        .find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }

    if hold(method, path) {
        held.lock().unwrap().push(path.to_string());
        // Never answer: wait until the client goes away (killed) or the proxy stops.
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        while !stop.load(Ordering::SeqCst) {
            match conn.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
        return;
    }

    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(120)));
    let mut out = format!("{request_line}\r\n");
    for h in &headers {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    if up.write_all(out.as_bytes()).is_err() || up.write_all(&body).is_err() {
        return;
    }
    let mut response = Vec::new();
    if up.read_to_end(&mut response).is_err() {
        return;
    }
    let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let mut reply = String::new();
    for h in String::from_utf8_lossy(&response[..at]).split("\r\n") {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            reply.push_str(h);
            reply.push_str("\r\n");
        }
    }
    reply.push_str("Connection: close\r\n\r\n");
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.write_all(&response[at + 4..]);
    let _ = conn.shutdown(Shutdown::Both);
}
