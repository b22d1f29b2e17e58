//! Test support (cargo feature `testing`): a real S3 server, `moto_server` from PyPI
//! `moto[server]`, on a free 127.0.0.1 port.
//!
//! ```no_run
//! # async fn demo() -> norn_storage::Result<()> {
//! use norn_storage::{Bucket, testing::MotoServer};
//! let Some(moto) = MotoServer::start() else { return Ok(()) }; // "SKIP: …" when absent
//! let bucket = Bucket::from_config(&moto.storage_config("blocks"))?;
//! moto.pause(); // the server stops answering (SIGSTOP) but keeps its data
//! moto.resume();
//! # Ok(()) }
//! ```
//!
//! `start` returns `None` when `moto_server` is not on `PATH`, unless `NORN_REQUIRE_PEERS=1`,
//! which turns the skip into a panic (CI must not silently skip). The server is killed when
//! the handle is dropped. Only loopback is used.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{BACKEND_S3, S3Config, StorageConfig};

/// The bucket [`MotoServer::start`] creates.
pub const DEFAULT_BUCKET: &str = "norn";
/// Access key id and secret the harness uses (moto accepts any).
pub const TEST_KEY: &str = "test";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `moto_server` child process.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts `moto_server` on a free port, waits until it answers and creates
    /// [`DEFAULT_BUCKET`]. `None` (after printing `SKIP: moto_server not found`) when the binary
    /// is missing; panics instead when `NORN_REQUIRE_PEERS=1`. Panics when the binary exists
    /// but does not come up.
    pub fn start() -> Option<Self> {
        let Some(binary) = find_on_path("moto_server") else {
            if std::env::var("NORN_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!(
                    "moto_server not found on PATH and NORN_REQUIRE_PEERS=1 \
                     (install it with: pip install 'moto[server]')"
                );
            }
            eprintln!("SKIP: moto_server not found");
            return None;
        };
        // The port is free when we look; another process may take it before moto binds it,
        // so try a few times.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::spawn(&binary) {
                Ok(server) => {
                    server
                        .create_bucket(DEFAULT_BUCKET)
                        .unwrap_or_else(|e| panic!("moto_server: creating a bucket: {e}"));
                    return Some(server);
                }
                Err(e) => last_error = e,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    fn spawn(binary: &Path) -> Result<Self, String> {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("norn-moto-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let log = dir.path().join("moto_server.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", binary.display()))?;
        let mut server = MotoServer {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let agent = agent(Duration::from_secs(2));
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited with {status}; log:\n{}", server.log_tail()));
            }
            if agent.get(&server.endpoint()).call().is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let tail = server.log_tail();
                return Err(format!(
                    "not answering on {} after {READY_TIMEOUT:?}; log:\n{tail}",
                    server.endpoint()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Creates `bucket` (a plain, unsigned `PUT /<bucket>`, which moto accepts). Creating an
    /// existing bucket is fine.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let url = format!("{}/{bucket}", self.endpoint());
        let response = agent(Duration::from_secs(10))
            .put(&url)
            .send_empty()
            .map_err(|e| format!("PUT {url}: {e}"))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) || status == 409 {
            Ok(())
        } else {
            Err(format!("PUT {url}: status {status}"))
        }
    }

    /// A storage config for `bucket` on this server (created when missing): backend s3,
    /// keys `test`/`test`, region `us-east-1`, plain HTTP.
    pub fn storage_config(&self, bucket: &str) -> StorageConfig {
        self.create_bucket(bucket)
            .unwrap_or_else(|e| panic!("moto_server: creating bucket {bucket}: {e}"));
        StorageConfig {
            backend: BACKEND_S3.into(),
            s3: S3Config {
                endpoint: self.endpoint(),
                bucket_name: bucket.into(),
                access_key_id: TEST_KEY.into(),
                secret_access_key: TEST_KEY.into(),
                region: "us-east-1".into(),
                insecure: true,
            },
            ..Default::default()
        }
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel but nothing
    /// answers, as with a hung or partitioned server. Its data is kept.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a [`paused`](Self::pause) server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with the pid of our own child, which we have not reaped (we hold
        // the `Child`), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "moto_server log ({}):\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Loopback only: never through a proxy from the environment.
            .proxy(None)
            .http_status_as_error(false)
            .build(),
    )
}

/// A port on 127.0.0.1 that is free for both TCP and UDP, for a test to hand to a process it
/// starts (servers, gossip, moto, memcached, Alertmanager).
///
/// Not "bind port 0 and release it": the kernel picks those from the ephemeral range, where
/// every outgoing connection's local port also comes from, so between the release and the
/// child's bind some client socket can take it (CI saw a gossip bind fail with EADDRINUSE).
/// These ports come from below the ephemeral range, each at most once per test process, from
/// a start that differs per process so test binaries running side by side rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low < LOWEST + 1_000 {
        // An unusual host whose ephemeral range starts low: fall back to the kernel's pick.
        return TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0");
    }
    let span = ephemeral_low - LOWEST;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let port = (LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpListener::bind(at).is_ok() && std::net::UdpSocket::bind(at).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOWEST} and {ephemeral_low}");
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
