//! `norn tools ready [--url URL] [--timeout D]`: exit 0 when a Norn process answers its
//! readiness endpoint with 200, 1 otherwise — the container image's `HEALTHCHECK`, so the
//! image needs no curl or wget.
//!
//! Plain HTTP/1.1 over `std::net` with one deadline for the whole exchange: a health probe must
//! not pull an async runtime or TLS stack into play, and must never hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// `norn tools ready`.
#[derive(Debug, clap::Args)]
pub struct ReadyArgs {
    /// Readiness URL to probe (`http://` only).
    #[arg(long, default_value = "http://127.0.0.1:8080/ready")]
    pub url: String,
    /// Longest the whole probe may take (connect, send, read the status line).
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    norn_model::parse_duration(s)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            if d.is_zero() {
                Err("must be greater than 0".to_string())
            } else {
                Ok(d)
            }
        })
}

/// Where a probe goes: what `--url` names.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url:?}: only http:// URLs are probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        bail!("{url:?}: needs a host (and no user info)");
    }
    if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        bail!("{url:?}: the path may not contain spaces or control characters");
    }
    // `[v6]:port`, `host:port` or `host` (port 80).
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow!("{url:?}: unclosed '[' in the host"))?;
        match after {
            "" => (h, 80),
            p => (h, parse_port(url, p.strip_prefix(':').unwrap_or(p))?),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(url, p)?),
            None => (authority, 80),
        }
    };
    if host.is_empty() {
        bail!("{url:?}: needs a host");
    }
    Ok(Target {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

fn parse_port(url: &str, p: &str) -> anyhow::Result<u16> {
    p.parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| anyhow!("{url:?}: bad port {p:?}"))
}

/// Probes once: `Ok(())` on a 200, an error naming the status (and the start of the body,
/// which says why a Norn process is not ready) or the failure otherwise.
fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let target = parse_url(url)?;
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("{url}: no answer within {timeout:?}"))
    };
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("{url}: resolving {}", target.host))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(anyhow!("{url}: connecting to {addr}: {e}")),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        last_err.unwrap_or_else(|| anyhow!("{url}: {} has no address", target.host))
    })?;
    stream.set_write_timeout(Some(left()?))?;
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: norn-tools-ready\r\n\
         Connection: close\r\n\r\n",
        target.path
    )
    .with_context(|| format!("{url}: sending the request"))?;
    // Read until the headers end and a little of the body, at most 4 KiB: the status line and
    // the reason are all a probe needs.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 1024];
    while buf.len() < 4096 {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                left()?;
                bail!("{url}: no answer within {timeout:?}")
            }
            Err(e) => return Err(anyhow!("{url}: reading the answer: {e}")),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() >= 512 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("");
    let status: u16 = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") => code
            .parse()
            .map_err(|_| anyhow!("{url}: not an HTTP answer: {status_line:?}"))?,
        _ => bail!("{url}: not an HTTP answer: {status_line:?}"),
    };
    if status == 200 {
        return Ok(());
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim())
        .unwrap_or("");
    let body: String = body.chars().take(200).collect();
    bail!("{url}: {status} {body}")
}

pub fn run(a: ReadyArgs) -> anyhow::Result<ExitCode> {
    probe(&a.url, a.timeout)?;
    println!("ready");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server on 127.0.0.1 that reads the request and answers `reply`; returns its
    /// port and the request it saw.
    fn serve(reply: &'static [u8]) -> (u16, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(reply).unwrap();
            String::from_utf8(req).unwrap()
        });
        (port, h)
    }

    #[test]
    fn ready_on_200() {
        let (port, h) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nready");
        probe(
            &format!("http://127.0.0.1:{port}/ready"),
            Duration::from_secs(5),
        )
        .unwrap();
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /ready HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{req}"
        );
    }

    #[test]
    fn not_ready_names_status_and_reason() {
        let (port, h) = serve(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 27\r\n\r\ningester: replaying the WAL",
        );
        let err = probe(
            &format!("http://127.0.0.1:{port}/ready"),
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("503 ingester: replaying the WAL"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn garbage_answer_is_an_error() {
        let (port, h) = serve(b"SSH-2.0-OpenSSH\r\n\r\n");
        let err = probe(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an HTTP answer"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        // Accepts (the kernel's backlog) but never answers.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let start = Instant::now();
        let err = probe(
            &format!("http://127.0.0.1:{port}/ready"),
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no answer within"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(l);
    }

    #[test]
    fn refused_connection_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = probe(
            &format!("http://127.0.0.1:{port}/ready"),
            Duration::from_secs(2),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("connecting to 127.0.0.1"), "{err}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://ingester-1:8080/ready").unwrap(),
            Target {
                host: "ingester-1".into(),
                port: 8080,
                path: "/ready".into()
            }
        );
        assert_eq!(parse_url("http://h").unwrap().port, 80);
        assert_eq!(parse_url("http://h").unwrap().path, "/");
        assert_eq!(parse_url("http://[::1]:9/x").unwrap().host, "::1");
        for bad in [
            "https://h/ready",
            "h:8080/ready",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:x/",
            "http://u@h/",
            "http://[::1/",
            "http://h/a b",
            "http://h/a\r\nX: y",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }
}
