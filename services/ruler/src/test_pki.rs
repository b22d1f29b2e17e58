//! Test certificates for the ruler's HTTPS clients, made by the `openssl` CLI (no
//! certificate crate in the build): a CA (`ca.crt`) and leaf certificates for 127.0.0.1.

/// `openssl` with `args` in `dir`; false (the caller skips) when the CLI is missing.
pub(crate) fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    match std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
    {
        Ok(o) => {
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            true
        }
        Err(_) => false,
    }
}

/// A CA and a certificate for 127.0.0.1 it signed (`<name>.crt`, `<name>.key`), by the
/// `openssl` CLI; false when it is missing.
pub(crate) fn make_pki(dir: &std::path::Path, names: &[&str]) -> bool {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec[..],
        &[
            "-days",
            "2",
            "-subj",
            "/CN=ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ][..],
    ]
    .concat();
    if !openssl(dir, &ca) {
        return false;
    }
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    for (i, name) in names.iter().enumerate() {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subj = format!("/CN={name}");
        let req = [
            &["req"][..],
            &ec[..],
            &["-subj", &subj, "-keyout", &key, "-out", &csr][..],
        ]
        .concat();
        assert!(openssl(dir, &req));
        let serial = format!("{}", i + 10);
        assert!(openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                "ext",
                "-out",
                &crt
            ]
        ));
    }
    true
}
