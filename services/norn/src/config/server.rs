//! `server`: the HTTP and gRPC listeners, their timeouts, and the log level.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::bail;
use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

use norn_server::tls::ServerTlsSettings;

use super::flags::{Deferred, set, set_duration};
use super::tls::ServerTlsFlags;

/// `server` in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub http_listen_address: String,
    pub http_listen_port: u16,
    pub grpc_listen_address: String,
    pub grpc_listen_port: u16,
    pub log_level: String,
    #[serde(with = "serde_duration")]
    pub graceful_shutdown_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_read_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_read_header_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_write_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_idle_timeout: Duration,
    /// 0 = no limit.
    pub http_listen_conn_limit: usize,
    /// Where the admin endpoints are served; empty: on the HTTP listener with the rest.
    pub admin_listen_address: String,
    pub admin_listen_port: u16,
    pub http_tls_config: ServerTlsSettings,
    pub grpc_tls_config: ServerTlsSettings,
    /// Largest gRPC message the process's gRPC server accepts (bytes).
    pub grpc_server_max_recv_msg_size: usize,
    /// Largest gRPC message the process's gRPC server sends (bytes).
    pub grpc_server_max_send_msg_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen_address: String::new(),
            http_listen_port: 8080,
            grpc_listen_address: String::new(),
            grpc_listen_port: 9095,
            log_level: "info".into(),
            graceful_shutdown_timeout: Duration::from_secs(30),
            http_server_read_timeout: Duration::from_secs(120),
            http_server_read_header_timeout: Duration::from_secs(30),
            // Longer than querier.timeout (2m), so a slow query answers with its own timeout.
            http_server_write_timeout: Duration::from_secs(150),
            http_server_idle_timeout: Duration::from_secs(120),
            http_listen_conn_limit: 0,
            admin_listen_address: String::new(),
            admin_listen_port: 8081,
            http_tls_config: ServerTlsSettings::default(),
            grpc_tls_config: ServerTlsSettings::default(),
            grpc_server_max_recv_msg_size: norn_proto::MAX_MESSAGE_SIZE,
            grpc_server_max_send_msg_size: norn_proto::MAX_MESSAGE_SIZE,
        }
    }
}

impl ServerConfig {
    /// The HTTP server's timeouts and connection limit.
    pub fn http_options(&self) -> norn_server::ServerOptions {
        norn_server::ServerOptions {
            read_timeout: self.http_server_read_timeout,
            read_header_timeout: self.http_server_read_header_timeout,
            write_timeout: self.http_server_write_timeout,
            idle_timeout: self.http_server_idle_timeout,
            conn_limit: self.http_listen_conn_limit,
        }
    }

    /// The gRPC services' message bounds.
    pub fn grpc_limits(&self) -> norn_proto::MessageLimits {
        norn_proto::MessageLimits {
            max_recv: self.grpc_server_max_recv_msg_size,
            max_send: self.grpc_server_max_send_msg_size,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        check_message_size(
            "server.grpc_server_max_recv_msg_size (--server.grpc-max-recv-msg-size-bytes)",
            self.grpc_server_max_recv_msg_size,
        )?;
        check_message_size(
            "server.grpc_server_max_send_msg_size (--server.grpc-max-send-msg-size-bytes)",
            self.grpc_server_max_send_msg_size,
        )
    }
}

/// Smallest gRPC message bound accepted: below it ordinary requests (a remote-write batch, a
/// page of series) would not fit.
const MIN_MESSAGE_SIZE: usize = 1 << 20;
/// Largest: a gRPC message's length is a 32-bit field, and Go clients stop at `i32::MAX`.
const MAX_MESSAGE_SIZE_BOUND: usize = i32::MAX as usize;

/// Refuses a gRPC message bound outside 1 MiB..2 GiB, naming the key.
pub fn check_message_size(name: &str, bytes: usize) -> anyhow::Result<()> {
    if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE_BOUND).contains(&bytes) {
        bail!(
            "{name} must be between {MIN_MESSAGE_SIZE} and {MAX_MESSAGE_SIZE_BOUND} bytes, got {bytes}"
        );
    }
    Ok(())
}

/// Refuses a listen or advertise address that is not an IP address (names are not resolved
/// for binding), naming the YAML key.
pub fn check_ip(name: &str, addr: &str) -> anyhow::Result<()> {
    if !addr.is_empty() && addr.parse::<IpAddr>().is_err() {
        bail!("{name} must be an IP address, got {addr:?}");
    }
    Ok(())
}

/// The `server.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Server")]
pub struct ServerFlags {
    /// Address the HTTP server listens on (all interfaces when empty).
    #[arg(
        long = "server.http-listen-address",
        env = "NORN_SERVER_HTTP_LISTEN_ADDRESS"
    )]
    pub http_listen_address: Option<String>,
    /// HTTP port (default 8080).
    #[arg(long = "server.http-listen-port", env = "NORN_SERVER_HTTP_LISTEN_PORT")]
    pub http_listen_port: Option<u16>,
    /// Address the gRPC server listens on.
    #[arg(
        long = "server.grpc-listen-address",
        env = "NORN_SERVER_GRPC_LISTEN_ADDRESS"
    )]
    pub grpc_listen_address: Option<String>,
    /// gRPC port (default 9095).
    #[arg(long = "server.grpc-listen-port", env = "NORN_SERVER_GRPC_LISTEN_PORT")]
    pub grpc_listen_port: Option<u16>,
    #[command(flatten)]
    pub log: LogFlags,
    /// Longest from the start of an HTTP request to the end of its body (0 disables).
    #[arg(
        long = "server.http-server-read-timeout",
        env = "NORN_SERVER_HTTP_SERVER_READ_TIMEOUT"
    )]
    pub http_server_read_timeout: Option<Deferred>,
    /// Longest to receive an HTTP request's headers (0: the read timeout).
    #[arg(
        long = "server.http-server-read-header-timeout",
        env = "NORN_SERVER_HTTP_SERVER_READ_HEADER_TIMEOUT"
    )]
    pub http_server_read_header_timeout: Option<Deferred>,
    /// Longest from the end of an HTTP request's headers to the end of its response (0 disables).
    #[arg(
        long = "server.http-server-write-timeout",
        env = "NORN_SERVER_HTTP_SERVER_WRITE_TIMEOUT"
    )]
    pub http_server_write_timeout: Option<Deferred>,
    /// Longest an HTTP keep-alive connection waits for its next request (0: the read timeout).
    #[arg(
        long = "server.http-server-idle-timeout",
        env = "NORN_SERVER_HTTP_SERVER_IDLE_TIMEOUT"
    )]
    pub http_server_idle_timeout: Option<Deferred>,
    /// Most HTTP connections served at once; more wait to be accepted (0 = no limit).
    #[arg(long = "server.http-conn-limit", env = "NORN_SERVER_HTTP_CONN_LIMIT")]
    pub http_conn_limit: Option<usize>,
    /// Serve the admin endpoints (/config, /services, /runtime_config, rings, memberlist, /ingester/*) only on a listener at this IP address; empty: on the HTTP listener.
    #[arg(
        long = "server.admin-listen-address",
        env = "NORN_SERVER_ADMIN_LISTEN_ADDRESS"
    )]
    pub admin_listen_address: Option<String>,
    /// Port of the admin listener (default 8081; 0 picks a free one).
    #[arg(
        long = "server.admin-listen-port",
        env = "NORN_SERVER_ADMIN_LISTEN_PORT"
    )]
    pub admin_listen_port: Option<u16>,
    /// Largest gRPC message (bytes) the gRPC server accepts: pushes to an ingester, a querier's answer to the query-frontend (default 104857600).
    #[arg(
        long = "server.grpc-max-recv-msg-size-bytes",
        env = "NORN_SERVER_GRPC_MAX_RECV_MSG_SIZE_BYTES"
    )]
    pub grpc_max_recv_msg_size: Option<usize>,
    /// Largest gRPC message (bytes) the gRPC server sends (default 104857600).
    #[arg(
        long = "server.grpc-max-send-msg-size-bytes",
        env = "NORN_SERVER_GRPC_MAX_SEND_MSG_SIZE_BYTES"
    )]
    pub grpc_max_send_msg_size: Option<usize>,
    #[command(flatten)]
    pub tls: ServerTlsFlags,
}

impl ServerFlags {
    pub fn apply(&self, c: &mut ServerConfig) -> anyhow::Result<()> {
        set(&mut c.http_listen_address, &self.http_listen_address);
        set(&mut c.http_listen_port, &self.http_listen_port);
        set(&mut c.grpc_listen_address, &self.grpc_listen_address);
        set(&mut c.grpc_listen_port, &self.grpc_listen_port);
        set(&mut c.admin_listen_address, &self.admin_listen_address);
        set(&mut c.admin_listen_port, &self.admin_listen_port);
        self.log.apply(c);
        set_duration(
            &mut c.http_server_read_timeout,
            &self.http_server_read_timeout,
        )?;
        set_duration(
            &mut c.http_server_read_header_timeout,
            &self.http_server_read_header_timeout,
        )?;
        set_duration(
            &mut c.http_server_write_timeout,
            &self.http_server_write_timeout,
        )?;
        set_duration(
            &mut c.http_server_idle_timeout,
            &self.http_server_idle_timeout,
        )?;
        set(&mut c.http_listen_conn_limit, &self.http_conn_limit);
        set(
            &mut c.grpc_server_max_recv_msg_size,
            &self.grpc_max_recv_msg_size,
        );
        set(
            &mut c.grpc_server_max_send_msg_size,
            &self.grpc_max_send_msg_size,
        );
        self.tls
            .apply(&mut c.http_tls_config, &mut c.grpc_tls_config);
        Ok(())
    }
}

/// `--log.level`, a block of its own because `norn tools` takes it too.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogFlags {
    /// Log level (stderr): debug, info, warn, error; RUST_LOG overrides it.
    #[arg(long = "log.level", env = "NORN_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl LogFlags {
    pub fn apply(&self, c: &mut ServerConfig) {
        set(&mut c.log_level, &self.log_level);
    }
}
