//! TLS for every listener and client, with rustls and the ring provider (no C toolchain, no
//! OpenSSL).
//!
//! * [`ServerTlsSettings`] / [`ClientTlsSettings`]: Mimir's `*-tls-*` settings of a listener
//!   and of a client, checked and turned into rustls configs.
//! * [`Reloading`]: a config that is rebuilt when one of its files changes. The files' mtime
//!   and size are looked at, at most once a second, when a connection asks for the config
//!   (per handshake), so a rotated certificate (or client CA) is served from the next
//!   connection on without a restart and without a timer task. A file that does not parse
//!   keeps the previous config, is logged, and counted in `norn_tls_config_reloads_total`.
//! * [`listen`]: the HTTP and gRPC servers' TLS accept paths.
//! * [`client`]: the connector every gRPC client uses when its `tls-enabled` is set.
//!
//! Certificates are PEM; keys PKCS#8, PKCS#1 (RSA) or SEC1 (EC).

pub mod client;
mod expiry;
pub mod listen;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

pub use client::{ClientTls, ClientTlsSettings};

/// How often (at most) the files of a [`Reloading`] config are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A TLS setting or file is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {msg}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("{0}")]
    Config(String),
}

/// The crypto provider of every Norn TLS config: ring, so nothing needs cmake or a C
/// toolchain beyond ring's own.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Go's `tls.ClientAuthType`, as Mimir names it (`client_auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    NoClientCert,
    /// One is asked for, not required, not verified.
    RequestClientCert,
    /// One is required, not verified.
    RequireAnyClientCert,
    /// One is verified against the client CA if sent.
    VerifyClientCertIfGiven,
    /// One is required and verified against the client CA.
    RequireAndVerifyClientCert,
}

impl FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            "RequireAnyClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            other => {
                return Err(format!(
                    "unknown client auth type {other:?} (want NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
                ));
            }
        })
    }
}

/// A listener's TLS settings (Mimir's `http_tls_config` / `grpc_tls_config`). Empty paths
/// mean plain text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// PEM certificate chain served (leaf first).
    pub cert_file: String,
    /// PEM private key of the certificate.
    pub key_file: String,
    /// PEM CA bundle client certificates are verified against (mTLS).
    pub client_ca_file: String,
    /// Empty: `RequireAndVerifyClientCert` with a client CA, `NoClientCert` without.
    pub client_auth_type: String,
}

impl ServerTlsSettings {
    /// Whether the listener serves TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }

    /// The client-auth policy in force, checked against the other settings.
    pub fn client_auth(&self) -> Result<ClientAuth, TlsError> {
        let auth = if self.client_auth_type.is_empty() {
            if self.client_ca_file.is_empty() {
                ClientAuth::NoClientCert
            } else {
                ClientAuth::RequireAndVerifyClientCert
            }
        } else {
            self.client_auth_type.parse().map_err(TlsError::Config)?
        };
        let verifies = matches!(
            auth,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        );
        if verifies && self.client_ca_file.is_empty() {
            return Err(TlsError::Config(format!(
                "client auth type {auth:?} needs a client CA file"
            )));
        }
        Ok(auth)
    }

    /// Checks the settings and loads the files once, for a clear error at startup; the
    /// returned config then reloads itself when the files change.
    pub fn load(
        &self,
        listener: &str,
        alpn: &[&[u8]],
        metrics: &Arc<TlsMetrics>,
    ) -> Result<Arc<Reloading<ServerConfig>>, TlsError> {
        if self.cert_file.is_empty() || self.key_file.is_empty() {
            return Err(TlsError::Config(format!(
                "{listener} TLS needs both a certificate and a key file (got cert {:?}, key {:?})",
                self.cert_file, self.key_file
            )));
        }
        let auth = self.client_auth()?;
        let (cert, key, ca) = (
            PathBuf::from(&self.cert_file),
            PathBuf::from(&self.key_file),
            (!self.client_ca_file.is_empty()).then(|| PathBuf::from(&self.client_ca_file)),
        );
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let mut paths = vec![cert.clone(), key.clone()];
        paths.extend(ca.clone());
        Reloading::new(
            listener,
            paths,
            Box::new(move || build_server(&cert, &key, ca.as_deref(), auth, &alpn)),
            Arc::clone(metrics),
        )
    }
}

fn build_server(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    auth: ClientAuth,
    alpn: &[Vec<u8>],
) -> Result<Built<ServerConfig>, TlsError> {
    let (certified, expiry) = load_certified_key(cert, key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert => Arc::new(verify::AnyClientCert { mandatory: false }),
        ClientAuth::RequireAnyClientCert => Arc::new(verify::AnyClientCert { mandatory: true }),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = ca.ok_or_else(|| TlsError::Config("no client CA file".into()))?;
            let roots = Arc::new(load_roots(ca, "client CA file")?);
            let b = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let b = if auth == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| TlsError::Invalid {
                what: "client CA file",
                path: ca.to_path_buf(),
                msg: e.to_string(),
            })?
        }
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = alpn.to_vec();
    Ok(Built {
        value: config,
        expiry,
    })
}

/// Reads a certificate chain and its key, and checks that they belong together.
pub(crate) fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(CertifiedKey, Option<f64>), TlsError> {
    let chain = load_certs(cert, "certificate file")?;
    let key_der = load_key(key)?;
    let signer = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Invalid {
            what: "key file",
            path: key.to_path_buf(),
            msg: e.to_string(),
        })?;
    let expiry = expiry::not_after(&chain[0]);
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| TlsError::Invalid {
        what: "key file",
        path: key.to_path_buf(),
        msg: format!("does not match the certificate {}: {e}", cert.display()),
    })?;
    Ok((certified, expiry))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
pub(crate) fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let invalid = |msg: String| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        msg,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        what: "key file",
        path: path.to_path_buf(),
        msg: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })
}

/// A CA bundle as a root store; every certificate must parse.
pub(crate) fn load_roots(path: &Path, what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            what,
            path: path.to_path_buf(),
            msg: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// What a build of a [`Reloading`] config yields.
pub struct Built<T> {
    pub value: T,
    /// `notAfter` of the certificate served, Unix seconds, when there is one.
    pub expiry: Option<f64>,
}

type Builder<T> = Box<dyn Fn() -> Result<Built<T>, TlsError> + Send + Sync>;

/// A config rebuilt from its files when they change (see the module doc).
pub struct Reloading<T> {
    name: String,
    paths: Vec<PathBuf>,
    build: Builder<T>,
    state: Mutex<State<T>>,
    metrics: Arc<TlsMetrics>,
}

struct State<T> {
    current: Arc<T>,
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("name", &self.name)
            .field("paths", &self.paths)
            .finish()
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl<T> Reloading<T> {
    /// Builds the config once (an error here is the caller's startup error).
    pub fn new(
        name: &str,
        paths: Vec<PathBuf>,
        build: Builder<T>,
        metrics: Arc<TlsMetrics>,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(&paths);
        let built = build()?;
        metrics.set_expiry(name, built.expiry);
        Ok(Arc::new(Self {
            name: name.to_string(),
            paths,
            build,
            state: Mutex::new(State {
                current: Arc::new(built.value),
                stamps,
                checked: Instant::now(),
            }),
            metrics,
        }))
    }

    /// The config to use for a new connection, rebuilt first if a file changed.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamps(&self.paths);
            if now != state.stamps {
                // Remembered even when the build fails: the next change (the second half of a
                // rotation that writes the certificate, then the key) triggers another try,
                // and a broken file is reported once rather than every second.
                state.stamps = now;
                match (self.build)() {
                    Ok(built) => {
                        state.current = Arc::new(built.value);
                        self.metrics.set_expiry(&self.name, built.expiry);
                        self.metrics.reloaded(&self.name, true);
                        tracing::info!(tls = %self.name, "TLS certificates reloaded");
                    }
                    Err(e) => {
                        self.metrics.reloaded(&self.name, false);
                        tracing::error!(tls = %self.name, error = %e, "TLS reload failed; keeping the previous certificates");
                    }
                }
            }
        }
        Arc::clone(&state.current)
    }

    /// The label this config reports under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts a failed handshake on a connection that used this config.
    pub fn handshake_failed(&self) {
        self.metrics
            .handshake_failures
            .with_label_values(&[&self.name])
            .inc();
    }
}

/// The TLS metrics of the process, one set for every listener and client.
pub struct TlsMetrics {
    expiry: GaugeVec,
    reloads: IntCounterVec,
    handshake_failures: IntCounterVec,
}

impl TlsMetrics {
    /// Registers the metrics on `registry` (once per registry).
    pub fn new(registry: &Registry) -> prometheus::Result<Arc<Self>> {
        let expiry = GaugeVec::new(
            Opts::new(
                "norn_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate a TLS listener or client presents, Unix seconds.",
            ),
            &["listener"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "norn_tls_config_reloads_total",
                "TLS configs rebuilt because a certificate, key or CA file changed, by result; a failure keeps the previous certificates.",
            ),
            &["listener", "result"],
        )?;
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "norn_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out (a plain-text client, an unknown or missing client certificate).",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(handshake_failures.clone()))?;
        Ok(Arc::new(Self {
            expiry,
            reloads,
            handshake_failures,
        }))
    }

    /// Metrics on a registry of their own (tests, tools).
    pub fn unregistered() -> Arc<Self> {
        Self::new(&Registry::new()).expect("a fresh registry holds no TLS metrics")
    }

    fn set_expiry(&self, name: &str, expiry: Option<f64>) {
        if let Some(t) = expiry {
            self.expiry.with_label_values(&[name]).set(t);
        }
    }

    fn reloaded(&self, name: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.with_label_values(&[name, result]).inc();
    }

    /// Reloads of `name` with `result` (`success`, `failure`) so far.
    pub fn reloads(&self, name: &str, result: &str) -> u64 {
        self.reloads.with_label_values(&[name, result]).get()
    }

    /// The expiry reported for `name`.
    pub fn expiry(&self, name: &str) -> f64 {
        self.expiry.with_label_values(&[name]).get()
    }
}
