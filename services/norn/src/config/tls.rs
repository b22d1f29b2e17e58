//! TLS settings: the HTTP and gRPC listeners (`server.http_tls_config`,
//! `server.grpc_tls_config`, Mimir's `--server.{http,grpc}-tls-*` flags) and every gRPC
//! client (`--ingester.client.tls-*`, `--querier.store-gateway-client.tls-*`,
//! `--querier.frontend-client.tls-*`). The settings types live in `norn_server::tls`; the
//! files are read at startup (a bad one stops the process) and reloaded when they change.

use std::sync::Arc;

use anyhow::Context;
use norn_server::tls::{ClientTls, ClientTlsSettings, ServerTlsSettings, TlsMetrics};
use serde::{Deserialize, Serialize};

use super::Config;
use super::flags::set;

/// `ingester_client` in YAML (Mimir's block; Norn reads its TLS settings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngesterClientConfig {
    pub grpc_client_config: ClientTlsSettings,
}

/// The listeners' TLS flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Server TLS")]
pub struct ServerTlsFlags {
    /// PEM certificate (chain) the HTTP server presents; with the key, the HTTP server speaks only TLS.
    #[arg(
        long = "server.http-tls-cert-path",
        env = "NORN_SERVER_HTTP_TLS_CERT_PATH"
    )]
    pub http_cert: Option<String>,
    /// PEM private key of the HTTP server's certificate.
    #[arg(
        long = "server.http-tls-key-path",
        env = "NORN_SERVER_HTTP_TLS_KEY_PATH"
    )]
    pub http_key: Option<String>,
    /// PEM CA bundle HTTP client certificates are verified against (mTLS).
    #[arg(
        long = "server.http-tls-client-ca-path",
        env = "NORN_SERVER_HTTP_TLS_CLIENT_CA_PATH"
    )]
    pub http_client_ca: Option<String>,
    /// HTTP client certificate policy: NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert (default with a client CA).
    #[arg(
        long = "server.http-tls-client-auth",
        env = "NORN_SERVER_HTTP_TLS_CLIENT_AUTH"
    )]
    pub http_client_auth: Option<String>,
    /// PEM certificate (chain) the gRPC server presents; with the key, the gRPC server speaks only TLS.
    #[arg(
        long = "server.grpc-tls-cert-path",
        env = "NORN_SERVER_GRPC_TLS_CERT_PATH"
    )]
    pub grpc_cert: Option<String>,
    /// PEM private key of the gRPC server's certificate.
    #[arg(
        long = "server.grpc-tls-key-path",
        env = "NORN_SERVER_GRPC_TLS_KEY_PATH"
    )]
    pub grpc_key: Option<String>,
    /// PEM CA bundle gRPC client certificates are verified against (mTLS).
    #[arg(
        long = "server.grpc-tls-client-ca-path",
        env = "NORN_SERVER_GRPC_TLS_CLIENT_CA_PATH"
    )]
    pub grpc_client_ca: Option<String>,
    /// gRPC client certificate policy (as --server.http-tls-client-auth).
    #[arg(
        long = "server.grpc-tls-client-auth",
        env = "NORN_SERVER_GRPC_TLS_CLIENT_AUTH"
    )]
    pub grpc_client_auth: Option<String>,
}

impl ServerTlsFlags {
    pub fn apply(&self, http: &mut ServerTlsSettings, grpc: &mut ServerTlsSettings) {
        set(&mut http.cert_file, &self.http_cert);
        set(&mut http.key_file, &self.http_key);
        set(&mut http.client_ca_file, &self.http_client_ca);
        set(&mut http.client_auth_type, &self.http_client_auth);
        set(&mut grpc.cert_file, &self.grpc_cert);
        set(&mut grpc.key_file, &self.grpc_key);
        set(&mut grpc.client_ca_file, &self.grpc_client_ca);
        set(&mut grpc.client_auth_type, &self.grpc_client_auth);
    }
}

/// One client's `<prefix>tls-*` flags; the prefixes are Mimir's.
macro_rules! client_tls_flags {
    ($name:ident, $heading:literal, $flag:literal, $env:literal) => {
        #[derive(Debug, Clone, Default, clap::Args)]
        #[command(next_help_heading = $heading)]
        pub struct $name {
            /// Dial the servers over TLS.
            #[arg(
                id = concat!($flag, "tls-enabled"),
                value_name = "BOOL",
                long = concat!($flag, "tls-enabled"),
                env = concat!($env, "TLS_ENABLED"),
                num_args = 0..=1,
                default_missing_value = "true"
            )]
            pub enabled: Option<bool>,
            /// PEM CA bundle the servers' certificates are verified against (the system bundle when empty).
            #[arg(id = concat!($flag, "tls-ca-path"),
                value_name = "PATH",
                long = concat!($flag, "tls-ca-path"), env = concat!($env, "TLS_CA_PATH"))]
            pub ca: Option<String>,
            /// PEM client certificate, for servers that require one (mTLS).
            #[arg(id = concat!($flag, "tls-cert-path"),
                value_name = "PATH",
                long = concat!($flag, "tls-cert-path"), env = concat!($env, "TLS_CERT_PATH"))]
            pub cert: Option<String>,
            /// PEM key of the client certificate.
            #[arg(id = concat!($flag, "tls-key-path"),
                value_name = "PATH",
                long = concat!($flag, "tls-key-path"), env = concat!($env, "TLS_KEY_PATH"))]
            pub key: Option<String>,
            /// Name the servers' certificates must carry (default: the host of the address dialled).
            #[arg(id = concat!($flag, "tls-server-name"),
                value_name = "NAME",
                long = concat!($flag, "tls-server-name"), env = concat!($env, "TLS_SERVER_NAME"))]
            pub server_name: Option<String>,
            /// Do not verify the servers' certificates (testing only).
            #[arg(
                id = concat!($flag, "tls-insecure-skip-verify"),
                value_name = "BOOL",
                long = concat!($flag, "tls-insecure-skip-verify"),
                env = concat!($env, "TLS_INSECURE_SKIP_VERIFY"),
                num_args = 0..=1,
                default_missing_value = "true"
            )]
            pub insecure_skip_verify: Option<bool>,
        }

        impl $name {
            pub fn apply(&self, c: &mut ClientTlsSettings) {
                set(&mut c.tls_enabled, &self.enabled);
                set(&mut c.tls_ca_path, &self.ca);
                set(&mut c.tls_cert_path, &self.cert);
                set(&mut c.tls_key_path, &self.key);
                set(&mut c.tls_server_name, &self.server_name);
                set(&mut c.tls_insecure_skip_verify, &self.insecure_skip_verify);
            }
        }
    };
}

client_tls_flags!(
    IngesterClientTlsFlags,
    "Ingester client TLS",
    "ingester.client.",
    "NORN_INGESTER_CLIENT_"
);
client_tls_flags!(
    StoreGatewayClientTlsFlags,
    "Store-gateway client TLS",
    "querier.store-gateway-client.",
    "NORN_QUERIER_STORE_GATEWAY_CLIENT_"
);
client_tls_flags!(
    FrontendClientTlsFlags,
    "Query-frontend client TLS",
    "querier.frontend-client.",
    "NORN_QUERIER_FRONTEND_CLIENT_"
);

client_tls_flags!(
    AlertmanagerClientTlsFlags,
    "Ruler Alertmanager client TLS",
    "ruler.alertmanager-client.",
    "NORN_RULER_ALERTMANAGER_CLIENT_"
);

client_tls_flags!(
    RulerQueryFrontendTlsFlags,
    "Ruler query-frontend client TLS",
    "ruler.query-frontend.grpc-client-config.",
    "NORN_RULER_QUERY_FRONTEND_GRPC_CLIENT_CONFIG_"
);

client_tls_flags!(
    RulerClientTlsFlags,
    "Ruler client TLS",
    "ruler.client.",
    "NORN_RULER_CLIENT_"
);

/// Every client TLS flag block.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsFlags {
    #[command(flatten)]
    pub ingester: IngesterClientTlsFlags,
    #[command(flatten)]
    pub store_gateway: StoreGatewayClientTlsFlags,
    #[command(flatten)]
    pub frontend: FrontendClientTlsFlags,
    #[command(flatten)]
    pub alertmanager: AlertmanagerClientTlsFlags,
    #[command(flatten)]
    pub ruler_query_frontend: RulerQueryFrontendTlsFlags,
    #[command(flatten)]
    pub ruler: RulerClientTlsFlags,
}

/// The gRPC ALPN protocol.
const H2: &[u8] = b"h2";

/// The process's TLS, loaded once at startup: the listeners' reloading configs and each
/// client's connector settings.
pub struct Tls {
    pub http: Option<norn_server::tls::listen::ServerTls>,
    pub grpc: Option<norn_server::tls::listen::ServerTls>,
    pub ingester_client: Option<Arc<ClientTls>>,
    pub store_gateway_client: Option<Arc<ClientTls>>,
    pub frontend_client: Option<Arc<ClientTls>>,
}

impl Tls {
    /// Reads every certificate, key and CA file configured; any error names the setting.
    pub fn load(cfg: &Config, metrics: &Arc<TlsMetrics>) -> anyhow::Result<Tls> {
        let server = |s: &ServerTlsSettings, name: &str, key: &str, alpn: &[&[u8]]| {
            s.enabled()
                .then(|| s.load(name, alpn, metrics))
                .transpose()
                .with_context(|| format!("{key} (TLS of the {name} server)"))
        };
        let client = |s: &ClientTlsSettings, name: &str, key: &str| {
            s.load(name, &[H2], metrics)
                .with_context(|| format!("{key} (TLS of the {name})"))
        };
        Ok(Tls {
            http: server(
                &cfg.server.http_tls_config,
                "http",
                "server.http_tls_config",
                &[b"http/1.1"],
            )?,
            grpc: server(
                &cfg.server.grpc_tls_config,
                "grpc",
                "server.grpc_tls_config",
                &[H2],
            )?,
            ingester_client: client(
                &cfg.ingester_client.grpc_client_config,
                "ingester-client",
                "ingester_client.grpc_client_config",
            )?,
            store_gateway_client: client(
                &cfg.querier.store_gateway_client,
                "store-gateway-client",
                "querier.store_gateway_client",
            )?,
            frontend_client: client(
                &cfg.frontend_worker.grpc_client_config.tls,
                "frontend-client",
                "frontend_worker.grpc_client_config",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Args, Config};

    #[test]
    fn tls_settings_from_yaml_in_mimir_layout_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "server:\n  http_tls_config:\n    cert_file: /a.crt\n    key_file: /a.key\n    client_ca_file: /ca.crt\n    client_auth_type: VerifyClientCertIfGiven\n  grpc_tls_config:\n    cert_file: /g.crt\n    key_file: /g.key\ningester_client:\n  grpc_client_config:\n    tls_enabled: true\n    tls_ca_path: /ca.crt\nquerier:\n  store_gateway_client:\n    tls_enabled: true\n    tls_server_name: sg.internal\nfrontend_worker:\n  grpc_client_config:\n    tls_insecure_skip_verify: true\nmemberlist:\n  encryption_key_path: /gossip.key\n",
        )
        .unwrap();
        let a = Args::parse_from([
            "norn",
            "--config.file",
            f.to_str().unwrap(),
            "--server.grpc-tls-client-ca-path=/gca.crt",
            "--querier.frontend-client.tls-enabled",
            "--ingester.client.tls-cert-path=/c.crt",
            "--ingester.client.tls-key-path=/c.key",
            "--server.http-tls-cert-path=/b.crt",
        ]);
        let c = Config::load(&a).unwrap();
        let h = &c.server.http_tls_config;
        assert_eq!(
            (
                h.cert_file.as_str(),
                h.key_file.as_str(),
                h.client_ca_file.as_str()
            ),
            ("/b.crt", "/a.key", "/ca.crt")
        );
        assert_eq!(
            h.client_auth().unwrap(),
            norn_server::tls::ClientAuth::VerifyClientCertIfGiven
        );
        let g = &c.server.grpc_tls_config;
        assert_eq!(g.client_ca_file, "/gca.crt");
        assert_eq!(
            g.client_auth().unwrap(),
            norn_server::tls::ClientAuth::RequireAndVerifyClientCert
        );
        let i = &c.ingester_client.grpc_client_config;
        assert!(i.tls_enabled);
        assert_eq!(
            (i.tls_ca_path.as_str(), i.tls_cert_path.as_str()),
            ("/ca.crt", "/c.crt")
        );
        assert_eq!(
            c.querier.store_gateway_client.tls_server_name,
            "sg.internal"
        );
        let fw = &c.frontend_worker.grpc_client_config.tls;
        assert!(fw.tls_enabled && fw.tls_insecure_skip_verify);
        assert_eq!(c.memberlist.encryption_key_path, "/gossip.key");

        let bad = Args::parse_from(["norn", "--server.http-tls-client-auth=Sometimes"]);
        let e = format!("{:#}", Config::load(&bad).unwrap_err());
        assert!(
            e.contains("server.http_tls_config") && e.contains("Sometimes"),
            "{e}"
        );
    }
}
