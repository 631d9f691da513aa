//! RFC 8291 message encryption (`aes128gcm`, RFC 8188), one record, on aws-lc-rs.
//!
//! Per message: a fresh P-256 key pair for the application server, ECDH with the user agent's
//! key, then
//!
//! ```text
//! PRK_key = HKDF-Extract(salt = auth_secret, IKM = ecdh_secret)
//! IKM     = HKDF-Expand(PRK_key, "WebPush: info" || 0x00 || ua_public || as_public, 32)
//! PRK     = HKDF-Extract(salt, IKM)                      (salt: 16 random bytes)
//! CEK     = HKDF-Expand(PRK, "Content-Encoding: aes128gcm" || 0x00, 16)
//! NONCE   = HKDF-Expand(PRK, "Content-Encoding: nonce" || 0x00, 12)
//! body    = salt || rs (4096, u32 BE) || 65 || as_public || AES-128-GCM(CEK, NONCE, plaintext || 0x02)
//! ```
//!
//! The RFC 8291 Appendix A vector is a test of this module, byte for byte.

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::error::Unspecified;
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// The record size written in the header (RFC 8291 §4: one record of at most 4096 bytes).
const RECORD_SIZE: u32 = 4096;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &aws_lc_rs::hkdf::Prk, info: &[&[u8]], out: &mut [u8]) -> Result<(), Unspecified> {
    prk.expand(info, Len(out.len()))?.fill(out)
}

/// Encrypts `plaintext` for the user agent whose public key (65 bytes, uncompressed) and auth
/// secret are given.
pub(crate) fn encrypt(plaintext: &[u8], ua_public: &[u8], auth: &[u8; 16]) -> Result<Vec<u8>, Unspecified> {
    let mut salt = [0u8; 16];
    SystemRandom::new().fill(&mut salt)?;
    let as_private = PrivateKey::generate(&ECDH_P256)?;
    encrypt_with(&as_private, salt, plaintext, ua_public, auth)
}

fn encrypt_with(
    as_private: &PrivateKey,
    salt: [u8; 16],
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8; 16],
) -> Result<Vec<u8>, Unspecified> {
    let as_public = as_private.compute_public_key()?;
    let as_public = as_public.as_ref();
    let peer = UnparsedPublicKey::new(&ECDH_P256, ua_public);
    let mut ikm = [0u8; 32];
    agreement::agree(as_private, peer, Unspecified, |ecdh_secret| {
        let prk_key = Salt::new(HKDF_SHA256, auth).extract(ecdh_secret);
        expand(&prk_key, &[b"WebPush: info\0", ua_public, as_public], &mut ikm)
    })?;
    let prk = Salt::new(HKDF_SHA256, &salt).extract(&ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    expand(&prk, &[b"Content-Encoding: aes128gcm\0"], &mut cek)?;
    expand(&prk, &[b"Content-Encoding: nonce\0"], &mut nonce)?;

    let mut body = Vec::with_capacity(16 + 4 + 1 + as_public.len() + plaintext.len() + 1 + 16);
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    let header = body.len();
    body.extend_from_slice(plaintext);
    body.push(2); // padding delimiter of the last (and only) record
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek)?);
    let mut record = body.split_off(header);
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut record)?;
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64ct::{Base64UrlUnpadded, Encoding};

    fn d(s: &str) -> Vec<u8> {
        Base64UrlUnpadded::decode_vec(s).unwrap()
    }

    /// RFC 8291 Appendix A, byte for byte (the salt and the server's key pair are fixed there).
    #[test]
    fn rfc8291_appendix_a_vector() {
        let as_private = PrivateKey::from_private_key(&ECDH_P256, &d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        assert_eq!(
            as_private.compute_public_key().unwrap().as_ref(),
            d("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8").as_slice()
        );
        let ua_public = d("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let auth: [u8; 16] = d("BTBZMqHH6r4Tts7J_aSIgg").try_into().unwrap();
        let salt: [u8; 16] = d("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body = encrypt_with(&as_private, salt, b"When I grow up, I want to be a watermelon", &ua_public, &auth).unwrap();
        assert_eq!(
            Base64UrlUnpadded::encode_string(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn a_fresh_key_and_salt_every_message() {
        let ua = PrivateKey::generate(&ECDH_P256).unwrap();
        let ua_public = ua.compute_public_key().unwrap();
        let a = encrypt(b"same", ua_public.as_ref(), &[7; 16]).unwrap();
        let b = encrypt(b"same", ua_public.as_ref(), &[7; 16]).unwrap();
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "server key");
        assert_eq!(a.len(), 86 + 4 + 1 + 16);
    }

    #[test]
    fn a_key_that_is_not_on_the_curve_is_an_error() {
        assert!(encrypt(b"x", &[4u8; 65], &[0; 16]).is_err());
    }
}
