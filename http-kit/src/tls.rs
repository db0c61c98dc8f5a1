//! HTTPS serving: a rustls server configuration from `TLS_CERT` and `TLS_KEY`, PEM files
//! (the certificate chain, leaf first; the private key, PKCS#8, PKCS#1 or SEC1).
//! TLS 1.2 and 1.3 with rustls' safe defaults; the crypto is aws-lc-rs, the provider
//! reqwest uses too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setting that cannot be used, with the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS_CERT {}: {why}", path.display())]
    Cert { path: PathBuf, why: String },
    #[error("TLS_KEY {}: {why}", path.display())]
    Key { path: PathBuf, why: String },
    #[error("TLS_CERT and TLS_KEY do not go together: {0}")]
    Mismatch(String),
}

/// `TLS_CERT` and `TLS_KEY`: the files to serve HTTPS with (both set, or neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The server configuration these files make (see [`server_config`]).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        server_config(&self.cert, &self.key)
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server configuration from a certificate chain and a private key (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            why: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_owned(),
            why: "no CERTIFICATE in the file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        why: format!("not a PEM private key: {e}"),
    })?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Mismatch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_and_its_key_make_a_server_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        server_config(&cert, &key).unwrap();

        // Another key than the certificate's.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let wrong = dir.path().join("wrong.pem");
        std::fs::write(&wrong, other.signing_key.serialize_pem()).unwrap();
        let e = server_config(&cert, &wrong).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch(_)), "{e}");

        // The files swapped, a missing file.
        let e = server_config(&key, &cert).unwrap_err();
        assert!(e.to_string().starts_with("TLS_CERT"), "{e}");
        let e = server_config(&cert, &dir.path().join("nope.pem")).unwrap_err();
        assert!(e.to_string().starts_with("TLS_KEY"), "{e}");
    }
}
