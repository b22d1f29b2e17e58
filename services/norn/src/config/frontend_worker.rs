//! `frontend_worker`: where a querier's workers connect to pull queries (Mimir's
//! `frontend_worker` YAML block, `--querier.frontend-address`), and the gRPC client's TLS and
//! message bound.

use norn_server::tls::ClientTlsSettings;
use serde::{Deserialize, Serialize};

use super::flags::set;
use super::server::check_message_size;

/// `frontend_worker` in YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontendWorkerConfig {
    /// The query-frontend's gRPC address (`host:port`); empty: the querier serves only its
    /// HTTP API.
    pub frontend_address: String,
    /// TLS to the query-frontend (`--querier.frontend-client.tls-*`) and the largest answer
    /// sent to it.
    pub grpc_client_config: FrontendClientConfig,
}

impl FrontendWorkerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let a = &self.frontend_address;
        if !a.is_empty() && (a.contains("://") || !a.contains(':')) {
            anyhow::bail!(
                "frontend_worker.frontend_address must be the query-frontend's gRPC host:port, got {a:?}"
            );
        }
        check_message_size(
            "frontend_worker.grpc_client_config.max_send_msg_size (--querier.frontend-client.grpc-max-send-msg-size)",
            self.grpc_client_config.max_send_msg_size,
        )
    }
}

/// `frontend_worker.grpc_client_config`: Mimir's keys, the TLS ones and `max_send_msg_size`,
/// in one mapping. The TLS settings are the type every client shares, so this reads the
/// mapping, takes its own key out and hands the rest to them (unknown keys are still refused
/// there).
#[derive(Debug, Clone, PartialEq)]
pub struct FrontendClientConfig {
    pub tls: ClientTlsSettings,
    /// Largest answer a querier sends the frontend; a larger one is answered with a 413.
    pub max_send_msg_size: usize,
}

const MAX_SEND_KEY: &str = "max_send_msg_size";

impl Default for FrontendClientConfig {
    fn default() -> Self {
        Self {
            tls: ClientTlsSettings::default(),
            max_send_msg_size: norn_proto::MAX_MESSAGE_SIZE,
        }
    }
}

impl Serialize for FrontendClientConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut map = match serde_yaml::to_value(&self.tls).map_err(S::Error::custom)? {
            serde_yaml::Value::Mapping(m) => m,
            _ => serde_yaml::Mapping::new(),
        };
        map.insert(MAX_SEND_KEY.into(), self.max_send_msg_size.into());
        map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for FrontendClientConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = Option::<serde_yaml::Mapping>::deserialize(d)?.unwrap_or_default();
        let max_send_msg_size = match map.remove(MAX_SEND_KEY) {
            Some(v) => serde_yaml::from_value(v).map_err(|e| {
                D::Error::custom(format!("{MAX_SEND_KEY}: {e} (bytes, a whole number)"))
            })?,
            None => norn_proto::MAX_MESSAGE_SIZE,
        };
        let tls =
            serde_yaml::from_value(serde_yaml::Value::Mapping(map)).map_err(D::Error::custom)?;
        Ok(Self {
            tls,
            max_send_msg_size,
        })
    }
}

/// The querier's `frontend_worker` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Querier")]
pub struct FrontendWorkerFlags {
    /// The query-frontend's gRPC address (host:port) to pull queries from; each querier runs --querier.max-concurrent workers.
    #[arg(
        long = "querier.frontend-address",
        env = "NORN_QUERIER_FRONTEND_ADDRESS"
    )]
    pub frontend_address: Option<String>,
    /// Largest answer (bytes) a querier sends the query-frontend over gRPC; a larger one is answered with a 413 naming this flag (default 104857600). The frontend's --server.grpc-max-recv-msg-size-bytes must be at least as large.
    #[arg(
        long = "querier.frontend-client.grpc-max-send-msg-size",
        env = "NORN_QUERIER_FRONTEND_CLIENT_GRPC_MAX_SEND_MSG_SIZE"
    )]
    pub max_send_msg_size: Option<usize>,
}

impl FrontendWorkerFlags {
    pub fn apply(&self, c: &mut FrontendWorkerConfig) {
        set(&mut c.frontend_address, &self.frontend_address);
        set(
            &mut c.grpc_client_config.max_send_msg_size,
            &self.max_send_msg_size,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_reads_mimirs_keys_in_one_mapping_and_refuses_unknown_ones() {
        let c: FrontendWorkerConfig = serde_yaml::from_str(
            "grpc_client_config:\n  tls_enabled: true\n  max_send_msg_size: 209715200\n",
        )
        .unwrap();
        assert!(c.grpc_client_config.tls.tls_enabled);
        assert_eq!(c.grpc_client_config.max_send_msg_size, 200 << 20);

        let d: FrontendWorkerConfig =
            serde_yaml::from_str("grpc_client_config:\n  tls_ca_path: /ca.crt\n").unwrap();
        assert_eq!(
            d.grpc_client_config.max_send_msg_size,
            norn_proto::MAX_MESSAGE_SIZE
        );
        assert_eq!(d.grpc_client_config.tls.tls_ca_path, "/ca.crt");

        // What `/config` prints reads back as the same configuration.
        let printed = serde_yaml::to_string(&c).unwrap();
        assert!(
            printed.contains("max_send_msg_size: 209715200"),
            "{printed}"
        );
        assert_eq!(
            serde_yaml::from_str::<FrontendWorkerConfig>(&printed).unwrap(),
            c
        );

        for bad in [
            "grpc_client_config:\n  tls_enabeld: true\n",
            "grpc_client_config:\n  max_send_msg_size: lots\n",
            "grpc_client_config:\n  max_send_msg_size: -1\n",
        ] {
            assert!(
                serde_yaml::from_str::<FrontendWorkerConfig>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn message_size_flags_reach_the_config_and_absurd_sizes_are_refused() {
        use clap::Parser;

        use super::super::{Args, Config};
        let a = Args::parse_from([
            "norn",
            "--server.grpc-max-recv-msg-size-bytes=209715200",
            "--querier.frontend-client.grpc-max-send-msg-size=209715200",
        ]);
        let c = Config::load(&a).unwrap();
        assert_eq!(c.server.grpc_limits().max_recv, 200 << 20);
        assert_eq!(
            c.server.grpc_limits().max_send,
            norn_proto::MAX_MESSAGE_SIZE
        );
        assert_eq!(
            c.frontend_worker.grpc_client_config.max_send_msg_size,
            200 << 20
        );
        for (flag, name) in [
            (
                "--server.grpc-max-recv-msg-size-bytes=10",
                "grpc-max-recv-msg-size-bytes",
            ),
            (
                "--server.grpc-max-send-msg-size-bytes=4294967296",
                "grpc-max-send-msg-size-bytes",
            ),
            (
                "--querier.frontend-client.grpc-max-send-msg-size=0",
                "frontend-client.grpc-max-send-msg-size",
            ),
        ] {
            let e = format!(
                "{:#}",
                Config::load(&Args::parse_from(["norn", flag])).unwrap_err()
            );
            assert!(e.contains(name) && e.contains("between"), "{flag}: {e}");
        }
    }
}
