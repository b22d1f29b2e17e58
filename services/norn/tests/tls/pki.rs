//! Test certificates made with the `openssl` CLI (no certificate crate in the build): CAs,
//! server certificates for 127.0.0.1 (IP SAN) and client certificates, all EC P-256.

// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and key on disk.
#[derive(Clone, Debug)]
pub struct Pair {
    pub crt: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the `openssl` CLI is here (the tests print SKIP otherwise, unless peers are
/// required).
pub fn available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("NORN_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("the openssl CLI is missing but NORN_REQUIRE_PEERS=1");
    }
    if !ok {
        eprintln!("SKIP: no openssl CLI to make test certificates");
    }
    ok
}

/// A self-signed CA named `name` in `dir`.
pub fn ca(dir: &Path, name: &str) -> Pair {
    let p = Pair {
        crt: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "3",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        p.key.to_str().unwrap(),
        "-out",
        p.crt.to_str().unwrap(),
    ]);
    p
}

/// A certificate for `name` signed by `ca`, valid for 127.0.0.1 and localhost as a server
/// and as a client.
pub fn leaf(dir: &Path, name: &str, ca: &Pair) -> Pair {
    let p = Pair {
        crt: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        p.key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    let serial = format!(
        "0x{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.crt.to_str().unwrap(),
        "-CAkey",
        ca.key.to_str().unwrap(),
        "-set_serial",
        &serial,
        "-days",
        "3",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        p.crt.to_str().unwrap(),
    ]);
    p
}

/// The DER of the first certificate of a PEM file.
pub fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// A blocking rustls client config trusting `ca`, presenting `client` when given.
pub fn client_config(ca: &Path, client: Option<&Pair>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some(p) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(&p.crt)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&p.key).unwrap())
                .unwrap()
        }
    };
    Arc::new(cfg)
}
