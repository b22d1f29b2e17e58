//! The client side: Mimir's `<prefix>.tls-*` settings of a gRPC (or HTTP) client, and the
//! connector tonic channels dial through when TLS is enabled.
//!
//! The connector (rather than tonic's `tls-*` features, which pull in a second rustls setup
//! and a roots crate) makes the TCP connection and the handshake itself, with the client's
//! current config: a rotated client certificate or CA is used from the next connection on.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::{Built, Reloading, TlsError, TlsMetrics, load_certified_key, load_roots, verify};

/// CA bundles of the usual distributions, used when no `tls-ca-path` is given.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A client's TLS settings (Mimir's `tls_enabled`, `tls_ca_path`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsSettings {
    pub tls_enabled: bool,
    /// PEM CA bundle the server's certificate is verified against (system bundle if empty).
    pub tls_ca_path: String,
    /// PEM client certificate, for servers that require one (mTLS).
    pub tls_cert_path: String,
    /// PEM key of the client certificate.
    pub tls_key_path: String,
    /// Name the server's certificate must carry (the address's host if empty).
    pub tls_server_name: String,
    /// Skips verifying the server's certificate (its handshake signature is still checked).
    pub tls_insecure_skip_verify: bool,
}

impl ClientTlsSettings {
    /// The client's TLS, `None` when not enabled; files are read now (a bad one is a startup
    /// error) and again when they change. `alpn`: `h2` for gRPC.
    pub fn load(
        &self,
        name: &str,
        alpn: &[&[u8]],
        metrics: &Arc<TlsMetrics>,
    ) -> Result<Option<Arc<ClientTls>>, TlsError> {
        if !self.tls_enabled {
            return Ok(None);
        }
        if self.tls_cert_path.is_empty() != self.tls_key_path.is_empty() {
            return Err(TlsError::Config(format!(
                "{name}: tls-cert-path and tls-key-path go together (got {:?} and {:?})",
                self.tls_cert_path, self.tls_key_path
            )));
        }
        let server_name = if self.tls_server_name.is_empty() {
            None
        } else {
            Some(
                ServerName::try_from(self.tls_server_name.clone()).map_err(|e| {
                    TlsError::Config(format!(
                        "{name}: tls-server-name {:?}: {e}",
                        self.tls_server_name
                    ))
                })?,
            )
        };
        let s = self.clone();
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let paths: Vec<PathBuf> = [&s.tls_ca_path, &s.tls_cert_path, &s.tls_key_path]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let config = Reloading::new(
            name,
            paths,
            Box::new(move || build_client(&s, &alpn)),
            Arc::clone(metrics),
        )?;
        Ok(Some(Arc::new(ClientTls {
            config,
            server_name,
        })))
    }

    /// A fixed rustls config for clients that take one (the ruler's HTTP clients): not
    /// reloaded.
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Result<Option<ClientConfig>, TlsError> {
        if !self.tls_enabled {
            return Ok(None);
        }
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(build_client(self, &alpn)?.value))
    }
}

fn build_client(s: &ClientTlsSettings, alpn: &[Vec<u8>]) -> Result<Built<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if s.tls_insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::AnyServerCert))
    } else if s.tls_ca_path.is_empty() {
        builder.with_root_certificates(system_roots()?)
    } else {
        builder.with_root_certificates(load_roots(Path::new(&s.tls_ca_path), "CA file")?)
    };
    let (mut config, expiry) = if s.tls_cert_path.is_empty() {
        (builder.with_no_client_auth(), None)
    } else {
        let (certified, expiry) =
            load_certified_key(Path::new(&s.tls_cert_path), Path::new(&s.tls_key_path))?;
        (
            builder.with_client_cert_resolver(Arc::new(SingleClientCert(Arc::new(certified)))),
            expiry,
        )
    };
    config.alpn_protocols = alpn.to_vec();
    Ok(Built {
        value: config,
        expiry,
    })
}

/// Always presents the one client certificate configured.
#[derive(Debug)]
struct SingleClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for SingleClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    for bundle in SYSTEM_BUNDLES {
        let Ok(pem) = std::fs::read(bundle) else {
            continue;
        };
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).flatten());
        if !roots.is_empty() {
            return Ok(roots);
        }
    }
    Err(TlsError::Config(format!(
        "no tls-ca-path given and no system CA bundle found (looked at {})",
        SYSTEM_BUNDLES.join(", ")
    )))
}

/// A client's TLS: its reloading config and the server name to verify.
pub struct ClientTls {
    config: Arc<Reloading<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("config", &self.config)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A lazily connecting channel to `endpoint`, over TLS when `tls` is given.
pub fn connect_lazy(endpoint: Endpoint, tls: Option<&Arc<ClientTls>>) -> Channel {
    match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector(Arc::clone(tls))),
    }
}

/// Dials TCP, then TLS, for a tonic channel.
#[derive(Clone)]
pub struct TlsConnector(Arc<ClientTls>);

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let tls = Arc::clone(&self.0);
        Box::pin(async move {
            let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
            let host = uri
                .host()
                .ok_or_else(|| bad(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = match &tls.server_name {
                Some(n) => n.clone(),
                None => ServerName::try_from(host.clone())
                    .map_err(|e| bad(format!("{host:?} is not a TLS server name: {e}")))?,
            };
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(tls.config.current());
            match connector.connect(name, tcp).await {
                Ok(s) => Ok(TokioIo::new(s)),
                Err(e) => {
                    tls.config.handshake_failed();
                    Err(e)
                }
            }
        })
    }
}
