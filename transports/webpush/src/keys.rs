//! VAPID key pairs (RFC 8292 §3.2): an ECDSA P-256 key that identifies the application server
//! to push services. The public half is the `applicationServerKey` a browser subscribes with.

use std::fmt;
use std::io;
use std::path::Path;

use base64ct::{Base64UrlUnpadded, Encoding};
use p256::ecdsa::SigningKey;
use rand_core::OsRng;

/// An application server's VAPID key pair.
///
/// ```
/// use tidings_webpush::VapidKeys;
/// let keys = VapidKeys::generate();
/// let again = VapidKeys::from_private_base64(&keys.private_key_base64()).unwrap();
/// assert_eq!(keys.public_key_base64(), again.public_key_base64());
/// assert_eq!(keys.public_key_base64().len(), 87); // 65 bytes, unpadded base64url
/// ```
#[derive(Clone)]
pub struct VapidKeys {
    signing: SigningKey,
    public: String,
}

/// Why a VAPID private key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Not base64 (either alphabet of RFC 4648, padded or not).
    NotBase64,
    /// Not a 32-byte P-256 scalar in range.
    NotAKey,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotBase64 => f.write_str("vapid private key is not base64 or base64url"),
            KeyError::NotAKey => f.write_str("vapid private key is not a p-256 private key"),
        }
    }
}

impl std::error::Error for KeyError {}

impl VapidKeys {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> VapidKeys {
        VapidKeys::from_signing(SigningKey::random(&mut OsRng))
    }

    /// The key pair of a private key given as 32 bytes in base64: unpadded base64url (the format
    /// of [`VapidKeys::private_key_base64`], and of the npm `web-push` tool's private keys), or
    /// the standard alphabet, padded or not (what `openssl ... | base64` and many other tools
    /// write). Spaces and line ends around it are ignored.
    pub fn from_private_base64(private: &str) -> Result<VapidKeys, KeyError> {
        let bytes = crate::subscription::decode_b64(private.trim()).ok_or(KeyError::NotBase64)?;
        let signing = SigningKey::from_slice(&bytes).map_err(|_| KeyError::NotAKey)?;
        if bytes.len() != 32 {
            return Err(KeyError::NotAKey);
        }
        Ok(VapidKeys::from_signing(signing))
    }

    /// Loads the private key kept in the file at `path`, or generates one and saves it there
    /// (readable by the owner only, on Unix) if the file does not exist. Use it to keep one
    /// key across restarts: browsers' subscriptions are bound to the public key.
    pub fn load_or_generate(path: impl AsRef<Path>) -> io::Result<VapidKeys> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => VapidKeys::from_private_base64(&text)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let keys = VapidKeys::generate();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                io::Write::write_all(&mut file, format!("{}\n", keys.private_key_base64()).as_bytes())?;
                file.sync_all()?;
                Ok(keys)
            }
            Err(err) => Err(err),
        }
    }

    fn from_signing(signing: SigningKey) -> VapidKeys {
        let point = signing.verifying_key().to_encoded_point(false);
        let public = Base64UrlUnpadded::encode_string(point.as_bytes());
        VapidKeys { signing, public }
    }

    /// The public key: 65 bytes (an uncompressed P-256 point) in unpadded base64url. This is the
    /// `applicationServerKey` to pass to `pushManager.subscribe` in the browser.
    pub fn public_key_base64(&self) -> &str {
        &self.public
    }

    /// The private key: 32 bytes in unpadded base64url. Keep it secret.
    pub fn private_key_base64(&self) -> String {
        Base64UrlUnpadded::encode_string(&self.signing.to_bytes())
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

impl fmt::Debug for VapidKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("VapidKeys").field("public", &self.public).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_private_keys_are_refused() {
        assert_eq!(VapidKeys::from_private_base64("not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(VapidKeys::from_private_base64("AAAA").unwrap_err(), KeyError::NotAKey);
        // Zero is not a valid scalar.
        let zero = Base64UrlUnpadded::encode_string(&[0u8; 32]);
        assert_eq!(VapidKeys::from_private_base64(&zero).unwrap_err(), KeyError::NotAKey);
    }

    #[test]
    fn private_keys_in_standard_base64_are_the_same_key() {
        let keys = VapidKeys::generate();
        let bytes = Base64UrlUnpadded::decode_vec(&keys.private_key_base64()).unwrap();
        for text in [base64ct::Base64::encode_string(&bytes), base64ct::Base64Unpadded::encode_string(&bytes), format!(" {}\n", base64ct::Base64Url::encode_string(&bytes))] {
            assert_eq!(VapidKeys::from_private_base64(&text).unwrap().public_key_base64(), keys.public_key_base64(), "{text}");
        }
        let mixed = "AB-CD+EF".repeat(5) + "ABC";
        assert_eq!(VapidKeys::from_private_base64(&mixed).unwrap_err(), KeyError::NotBase64);
    }

    #[test]
    fn debug_output_hides_the_private_key() {
        let keys = VapidKeys::generate();
        let shown = format!("{keys:?}");
        assert!(!shown.contains(&keys.private_key_base64()));
        assert!(shown.contains(keys.public_key_base64()));
    }

    #[test]
    fn a_saved_key_is_loaded_again() {
        let dir = std::env::temp_dir().join(format!("tidings-vapid-{}", std::process::id()));
        let path = dir.join("sub").join("vapid.key");
        let _ = std::fs::remove_file(&path);
        let first = VapidKeys::load_or_generate(&path).unwrap();
        let second = VapidKeys::load_or_generate(&path).unwrap();
        assert_eq!(first.public_key_base64(), second.public_key_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the owner may read the key");
        }
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(VapidKeys::load_or_generate(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
