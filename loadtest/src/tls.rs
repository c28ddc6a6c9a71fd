//! TLS for the load tester's clients: `https://` targets verified against the web PKI's
//! roots plus an optional extra CA file, or — only when asked for by name — not verified at
//! all (self-signed test setups).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The connector every client of a run uses: plain TCP for `http://`, rustls for `https://`.
pub type Connector = HttpsConnector<HttpConnector>;

/// TLS flags of `miqat loadtest` (they matter only for `https://` targets).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// For `https://` targets: also trust the CA certificates in this PEM file (besides the
    /// web PKI's roots).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// For `https://` targets: accept ANY server certificate without checking it. Only for a
    /// self-signed test setup; never against a server whose identity matters.
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure_skip_verify: bool,
}

/// A client's TLS settings, built once and shared by every connection.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    insecure: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl Default for ClientTls {
    /// The web PKI's roots only.
    fn default() -> ClientTls {
        static WEB_PKI: OnceLock<ClientTls> = OnceLock::new();
        WEB_PKI
            .get_or_init(|| ClientTls {
                config: Arc::new(config_with_roots(web_pki_roots())),
                insecure: false,
            })
            .clone()
    }
}

impl ClientTls {
    /// The settings `args` ask for: an unreadable or empty CA file is an error.
    pub fn from_args(args: &TlsArgs) -> anyhow::Result<ClientTls> {
        if args.insecure_skip_verify {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
                .with_no_client_auth();
            return Ok(ClientTls {
                config: Arc::new(config),
                insecure: true,
            });
        }
        let Some(path) = &args.ca_file else {
            return Ok(ClientTls::default());
        };
        let mut roots = web_pki_roots();
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("--ca-file {}: cannot read it", path.display()))?
        {
            let cert = cert.with_context(|| {
                format!("--ca-file {}: not a PEM certificate file", path.display())
            })?;
            roots.add(cert).with_context(|| {
                format!(
                    "--ca-file {}: a certificate is not a usable CA",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            bail!("--ca-file {}: no PEM certificate in it", path.display());
        }
        Ok(ClientTls {
            config: Arc::new(config_with_roots(roots)),
            insecure: false,
        })
    }

    /// Whether certificates go unchecked (`--insecure-skip-verify`).
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// A connector for `http://` and `https://` (HTTP/1.1), TCP_NODELAY set.
    pub fn connector(&self) -> Connector {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        // The TLS layer sees `https://` URLs; the TCP layer below must not refuse them.
        tcp.enforce_http(false);
        HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp)
    }
}

/// Checks that `target` is `http://host:port` or `https://host:port`.
pub fn check_target(target: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = target
        .parse()
        .map_err(|e| anyhow::anyhow!("target {target:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        bail!("target {target:?} must be http://host:port or https://host:port");
    }
    Ok(())
}

/// If `error` failed on TLS (a certificate the client does not trust, a handshake the server
/// refused), a sentence saying so and what to do; `None` for other failures.
pub fn tls_failure(error: &anyhow::Error) -> Option<String> {
    const UNTRUSTED_HINT: &str = "; pass --ca-file PEM with the CA that signed the server's \
         certificate (or, for a self-signed test setup only, --insecure-skip-verify)";
    for cause in error.chain() {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) => UNTRUSTED_HINT,
                _ => "",
            };
            return Some(format!("TLS handshake failed: {tls}{hint}"));
        }
        // The connector's error may reach here boxed in a way that hides its type; its
        // words are rustls's own.
        let words = cause.to_string();
        if words.starts_with("invalid peer certificate") {
            return Some(format!("TLS handshake failed: {words}{UNTRUSTED_HINT}"));
        }
        if words.starts_with("received fatal alert") || words.contains("InvalidContentType") {
            return Some(format!("TLS handshake failed: {words}"));
        }
    }
    None
}

fn web_pki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn config_with_roots(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        // The ring provider supports the safe defaults; this cannot fail at run time.
        .unwrap_or_else(|e| panic!("ring lacks TLS 1.2/1.3: {e}"))
}

/// `--insecure-skip-verify`: any certificate passes; signatures are still checked, so the
/// handshake itself stays sound.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
