//! HTTPS (the `tls` feature): [`Server::tls`](crate::Server::tls) and
//! [`tls_config_from_pem`], with rustls.
//!
//! Over TLS every request is served by hyper (HTTP/1.1 or HTTP/2, as ALPN chose), not by the
//! direct path: the direct path writes to the socket itself, and a TLS session is not a socket.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The protocols offered by ALPN, in order of preference (RFC 7301; RFC 9113 §3.2 for `h2`).
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a TLS configuration could not be made: a file that cannot be read, PEM without a
/// certificate or key, or a key rustls cannot use (or, where its provider can tell, one that
/// does not belong to the certificate).
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// A TLS server configuration from PEM files: `cert`, the certificate chain (the server's
/// certificate first, then its intermediates), and `key`, its private key (PKCS#8, PKCS#1 or
/// SEC1). TLS 1.2 and 1.3 with rustls' safe defaults (the aws-lc-rs provider), no client
/// certificates, ALPN offering `h2` then `http/1.1`.
///
/// rustls checks that the key belongs to the certificate only where its provider can derive
/// the key's public half; an ECDSA key of another certificate is accepted here, and every
/// handshake then fails.
///
/// # Errors
///
/// [`TlsError`], naming the file and what is wrong with it: unreadable, over 1 MiB, without a
/// certificate (or a key), an encrypted key, a key rustls cannot use.
pub fn tls_config_from_pem(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read_pem(cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError(format!("{}: {err}", cert.display())))?;
    if certs.is_empty() {
        let hint = if PrivateKeyDer::from_pem_slice(&cert_pem).is_ok() { " (it holds a private key: swapped?)" } else { "" };
        return Err(TlsError(format!("{}: no certificate in it{hint}", cert.display())));
    }
    let key_pem = read_pem(key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
        let found = if CertificateDer::pem_slice_iter(&key_pem).next().is_some() {
            "it holds a certificate, not a key".to_owned()
        } else if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
            "an encrypted key (not supported: decrypt it with openssl first)".to_owned()
        } else {
            err.to_string()
        };
        TlsError(format!(
            "{}: no private key in it ({found}); expected PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| TlsError(format!("the certificate and key do not make a TLS configuration: {err}")))?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The most of a PEM file that is read: a certificate chain or a key is a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM file, at most [`MAX_PEM_BYTES`] (a path such as `/dev/zero` is not read forever).
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|err| TlsError(format!("{}: {err}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError(format!("{}: over {MAX_PEM_BYTES} bytes, not a PEM file", path.display())));
    }
    Ok(bytes)
}

impl crate::Server {
    /// Serves HTTPS with `config` (see [`tls_config_from_pem`]). If `config` offers no ALPN
    /// protocol, the server offers `h2` and `http/1.1`, so that browsers speak HTTP/2: their
    /// limit of 6 HTTP/1.1 connections per origin does not bound the streams a page may open.
    /// The TLS handshake must end within the [`header_timeout`](crate::Server::header_timeout).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> crate::Server {
        let config = if config.alpn_protocols.is_empty() {
            let mut config = (*config).clone();
            config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        } else {
            config
        };
        self.tls = Some(config);
        self
    }
}
