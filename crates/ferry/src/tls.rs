//! TLS with rustls (ring): the certificate `ferry serve` presents, reloaded
//! on SIGHUP, and the trust roots of outgoing connections (replication,
//! the CLI): the system's CA store plus an optional PEM bundle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The one crypto provider Ferry uses (ring), shared by both directions.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HTTPS side of `ferry serve`: a certificate chain and key read from
/// PEM files, swapped in place by [`ServerTls::reload`] so the listener
/// stays up and only new connections see the new certificate.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<CurrentCert>,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// The certificate handed to each new handshake.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete certificate: serve it.
        Some(match self.0.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

impl ServerTls {
    /// Reads `cert` (PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1
    /// or SEC1). Errors name the file and what is wrong with it, or say that
    /// the key does not belong to the certificate.
    pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let ck = read_certified_key(cert.to_path_buf(), key.to_path_buf()).await?;
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(ck))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The server speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Accepts TLS handshakes with whatever certificate is current.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the certificate and key files again and serves them to new
    /// connections. On an error the previous certificate stays in service.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let ck = read_certified_key(self.cert.clone(), self.key.clone()).await?;
        match self.current.0.write() {
            Ok(mut k) => *k = Arc::new(ck),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ck),
        }
        Ok(())
    }

    /// Reloads the certificate on every SIGHUP, logging the outcome.
    pub fn reload_on_sighup(self: Arc<Self>) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match self.reload().await {
                    Ok(()) => tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate"),
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "could not reload the TLS certificate; still serving the previous one"
                    ),
                }
            }
        });
        Ok(())
    }
}

/// Reads and checks a certificate chain and its key, on the blocking pool.
async fn read_certified_key(cert: PathBuf, key: PathBuf) -> anyhow::Result<CertifiedKey> {
    tokio::task::spawn_blocking(move || {
        let chain = read_certs(&cert)?;
        let key_pem = crate::config::read_small_file(&key, MAX_PEM_FILE, true)
            .with_context(|| format!("reading the TLS key {}", key.display()))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("reading the TLS key {}: {e}", key.display()))?;
        CertifiedKey::from_der(chain, key_der, &provider()).with_context(|| {
            format!(
                "the TLS key {} does not fit the certificate {}",
                key.display(),
                cert.display()
            )
        })
    })
    .await
    .context("certificate loading task")?
}

/// Largest PEM file read (a certificate chain, a key, a CA bundle), in
/// bytes. Like the configuration file these are read again on SIGHUP:
/// a regular file only, so that a FIFO or a device put in their place is
/// refused instead of holding the reload (see `config::read_small_file`).
const MAX_PEM_FILE: u64 = 4 << 20;

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = crate::config::read_small_file(path, MAX_PEM_FILE, true)
        .with_context(|| format!("reading {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The client side of TLS for outgoing connections: the system's CA store
/// (Mozilla's roots where the system has none) plus every certificate in
/// `ca_file` (PEM). Blocking: reads the system store and the file.
///
/// Errors: `ca_file` unreadable, not PEM, or holding no usable certificate.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .with_context(|| format!("a certificate in {} is not a usable CA", path.display()))?;
        }
    }
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the certificate verifier")?;
    let verifier = Explaining {
        inner,
        has_ca_file: ca_file.is_some(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The standard WebPKI verification, unchanged; a refused certificate is
/// also logged with the fix, since HTTP clients report it only as a failed
/// request.
#[derive(Debug)]
struct Explaining {
    inner: Arc<WebPkiServerVerifier>,
    has_ca_file: bool,
}

impl ServerCertVerifier for Explaining {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(e) = &verdict {
            let hint = if self.has_ca_file {
                "it is not signed by a CA in tls_ca_file (FERRY_TLS_CA_FILE) nor in the system's store"
            } else {
                "if a private CA signed it, give its PEM bundle in tls_ca_file (FERRY_TLS_CA_FILE)"
            };
            tracing::warn!(
                server = server_name.to_str().as_ref(),
                "TLS: the other side's certificate is not trusted ({e}); {hint}"
            );
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
