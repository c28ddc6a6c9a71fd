//! `miqat loadtest` against an `https://` target: a real `miqat serve` behind a TLS proxy whose
//! certificate is signed by a CA made in the test; the run succeeds with `--ca-file` and stops
//! at once with a clear error without it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::support::{DataSet, OPERATOR_TOKEN, Server, ServerOptions, miqat_bin, text};

/// A CA (its PEM) and a server configuration for `localhost` signed by it.
fn certificates() -> (String, ServerConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Miqat test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    (ca.pem(), config)
}

/// Terminates TLS on a free port and relays each connection to `upstream` in plain TCP.
async fn tls_proxy(config: ServerConfig, upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn loadtest(catalog: &Path, target: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(miqat_bin())
        .args(["loadtest", "--target", target, "--catalog"])
        .arg(catalog)
        .args(["--out"])
        .arg(out)
        .args([
            "--operator-token",
            OPERATOR_TOKEN,
            "--reschedule-in",
            "2",
            "--holders",
            "300",
            "--speed",
            "600",
            "--connections",
            "64",
            // A debug build on a shared machine: lateness is not what this test measures.
            "--max-lag-ms",
            "100000",
            "--quiet",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_reaches_an_https_target_with_its_ca_and_refuses_it_without() {
    let data = DataSet::generate(2000, 400, 11);
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&ServerOptions {
        catalog: data.path(),
        data_dir: &root.path().join("data"),
        log_dir: root.path(),
        name: "server",
        extra_args: vec![],
    });
    let (ca_pem, config) = certificates();
    let ca_file = root.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let proxy = tls_proxy(config, server.addr).await;
    let target = format!("https://localhost:{}", proxy.port());

    // Without the CA: the certificate is unknown, and the tester says what to do.
    let refused = {
        let catalog = data.path().to_owned();
        let out = root.path().join("refused");
        let target = target.clone();
        tokio::task::spawn_blocking(move || loadtest(&catalog, &target, &out, &[]))
            .await
            .unwrap()
    };
    assert!(!refused.status.success(), "an untrusted certificate passed");
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("--ca-file"),
        "unclear error: {stderr}"
    );

    // With the CA: the run plays over TLS and its after-run check passes.
    let accepted = {
        let catalog = data.path().to_owned();
        let out = root.path().join("accepted");
        let target = target.clone();
        let ca = ca_file.to_str().unwrap().to_owned();
        tokio::task::spawn_blocking(move || loadtest(&catalog, &target, &out, &["--ca-file", &ca]))
            .await
            .unwrap()
    };
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.path().join("accepted/summary.json")).unwrap_or_else(|e| {
            panic!(
                "no summary ({e}); stderr:\n{}\nserver:\n{}",
                text(&accepted.stderr),
                server.stderr()
            )
        }),
    )
    .unwrap();
    let reserve = summary["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "reserve")
        .unwrap_or_else(|| panic!("no reserve endpoint in {summary}"));
    assert!(
        reserve["requests"].as_u64().unwrap() > 100,
        "few reserves: {reserve}"
    );
    let checks = summary["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{summary}");
    assert_eq!(checks[0]["passed"], true, "{}", checks[0]);
    assert!(
        checks[0]["acknowledged"].as_u64().unwrap() > 100,
        "{}",
        checks[0]
    );
    assert_eq!(
        summary["verdict"]["correctness"]["status"], "passed",
        "{summary}"
    );

    // A CA file that holds no certificate is refused before anything is sent.
    let empty = root.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let out = Command::new(miqat_bin())
        .args(["loadtest", "--target", &target, "--catalog"])
        .arg(data.path())
        .args(["--ca-file", empty.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no PEM certificate"),
        "{}",
        text(&out.stderr)
    );
}
