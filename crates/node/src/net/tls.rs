//! TLS with rustls: the listener's server configuration (`SLIPSTREAM_TLS_CERT`,
//! `SLIPSTREAM_TLS_KEY`, and `SLIPSTREAM_TLS_CLIENT_CA` for mutual TLS) and each `wss://` peer's
//! client configuration (`ca`, `cert`, `key`, `rejectUnauthorized`).
//!
//! Every PEM setting is either PEM text or a path to a PEM file.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Reads a PEM setting: the text itself when it holds a PEM block, else a file path.
fn pem(value: &str) -> Result<Vec<u8>, String> {
    if value.contains("-----BEGIN") {
        Ok(value.as_bytes().to_vec())
    } else {
        std::fs::read(value).map_err(|e| format!("cannot read {value:?}: {e}"))
    }
}

fn certs(value: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = pem(value)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(certs)
}

fn key(value: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(&pem(value)?).map_err(|e| format!("not a PEM private key: {e}"))
}

fn roots(value: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs(value)? {
        store
            .add(c)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which setting is wrong, and why.
pub type TlsError = (&'static str, String);

/// The listener's configuration: serve `wss://`, and with `client_ca` require client
/// certificates it signed.
pub fn server_config(
    cert: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(cert).map_err(|e| ("SLIPSTREAM_TLS_CERT", e))?;
    let key = key(key_pem).map_err(|e| ("SLIPSTREAM_TLS_KEY", e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("SLIPSTREAM_TLS_CERT", e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = roots(ca).map_err(|e| ("SLIPSTREAM_TLS_CLIENT_CA", e))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| ("SLIPSTREAM_TLS_CLIENT_CA", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        (
            "SLIPSTREAM_TLS_KEY",
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(Arc::new(config))
}

/// A `wss://` peer's configuration. Without `ca` the system's trusted roots are used.
pub fn client_config(
    ca: Option<&str>,
    cert: Option<&str>,
    key_pem: Option<&str>,
    reject_unauthorized: bool,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if reject_unauthorized {
        let roots = match ca {
            Some(ca) => roots(ca).map_err(|e| format!("ca: {e}"))?,
            None => {
                let mut store = RootCertStore::empty();
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = store.add(c);
                }
                store
            }
        };
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
    };
    let config = match (cert, key_pem) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(
                certs(c).map_err(|e| format!("cert: {e}"))?,
                key(k).map_err(|e| format!("key: {e}"))?,
            )
            .map_err(|e| format!("cert and key do not match: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("cert and key go together: give both or neither".to_owned()),
    };
    Ok(Arc::new(config))
}

/// `rejectUnauthorized: false`: any server certificate is accepted (signatures are still
/// checked). Logged loudly at start and on every connect.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
