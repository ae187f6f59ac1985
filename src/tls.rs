//! Optional TLS for every listener, and the one client that cannot check it.
//!
//! Plaintext is the local default; `TLS_CERT_FILE` and `TLS_KEY_FILE` turn
//! TLS on for the gRPC/grpc-web listener and the metrics listener alike. The
//! handshake is done here rather than by tonic so the listener can offer both
//! `h2` and `http/1.1` in ALPN: tonic's own acceptor offers only `h2`, which
//! would refuse grpc-web clients and proxies that speak HTTP/1.1.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Args;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, DigitallySignedStruct, ServerConfig, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    },
    server::TlsStream,
};

use crate::config::ConfigError;

/// How long a client may take to complete its handshake before the
/// connection is dropped, so idle sockets cannot pin handshake tasks.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's certificate, when TLS is wanted.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) served on every listener; with
    /// TLS_KEY_FILE turns TLS on (unset: plaintext).
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    /// Loads the certificate and key, or `None` for plaintext. Every problem
    /// (missing file, not PEM, key not matching) is reported at start.
    pub fn server(&self) -> Result<Option<ServerTls>, ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => ServerTls::from_files(cert, key).map(Some),
            _ => Err(ConfigError(
                "TLS_CERT_FILE and TLS_KEY_FILE must be set together".into(),
            )),
        }
    }
}

/// A loaded certificate, ready to terminate TLS.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// Reads a PEM certificate chain and its private key.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, ConfigError> {
        let (_, chain) = read_certificates("TLS_CERT_FILE", cert_file)?;
        let key = PrivateKeyDer::from_pem_slice(&read("TLS_KEY_FILE", key_file)?)
            .map_err(|e| ConfigError(format!("TLS_KEY_FILE is not a PEM private key: {e}")))?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                ConfigError(format!(
                    "TLS_CERT_FILE and TLS_KEY_FILE do not form a usable identity: {e}"
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Completes the handshake of one accepted connection.
    pub async fn accept(&self, socket: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(socket))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })?
    }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError(format!("cannot read {setting} {}: {e}", path.display())))
}

/// Reads the PEM certificates in the file `setting` names: the PEM text and
/// the certificates it holds. A file holding none is refused here, at start,
/// rather than leaving a TLS peer that trusts or presents nothing.
pub fn read_certificates(
    setting: &str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), ConfigError> {
    let pem = read(setting, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("{setting} is not a PEM certificate: {e}")))?;
    if certificates.is_empty() {
        return Err(ConfigError(format!(
            "{setting} {} holds no certificate",
            path.display()
        )));
    }
    Ok((pem, certificates))
}

/// A certificate verifier for the `healthcheck` probe alone. The probe runs
/// next to the server (same container or pod) and dials it over loopback to
/// ask whether it is SERVING; the certificate names the service's public
/// name, not `127.0.0.1`, and may be signed by a CA the container does not
/// carry. So the probe checks that the server holds the key of the
/// certificate it presents (the handshake signature) but not who issued it:
/// it asks for liveness, it sends nothing secret.
#[derive(Debug)]
pub struct LoopbackProbeVerifier(Arc<CryptoProvider>);

impl LoopbackProbeVerifier {
    /// A verifier using rustls's process-default crypto (aws-lc-rs).
    pub fn new() -> Arc<Self> {
        Arc::new(Self(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        ))
    }
}

impl ServerCertVerifier for LoopbackProbeVerifier {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
