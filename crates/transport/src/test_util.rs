//! What an attacker would send, for tests of the verifiers (feature `test-util`).

use rustls::pki_types::CertificateDer;

use crate::{Identity, NodeId, SERVER_NAME, TransportError};

/// DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410) before its 32 key bytes:
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (33 bytes, 0 unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// `identity` with a certificate that names `victim` where a careless parser looks: its
/// subject (and, being self-signed, its issuer) holds the bytes of an Ed25519
/// SubjectPublicKeyInfo carrying `victim`'s key, ahead of the real SubjectPublicKeyInfo,
/// which carries `identity`'s own key. The handshake signature, made with `identity`'s
/// key, verifies against the real one; a verifier that searched the DER for the Ed25519
/// prefix would take the holder for `victim`. The certificate's self-signature no longer
/// matches (nothing checks it: the handshake signature is what proves the key).
///
/// # Errors
/// [`TransportError::Certificate`] if rcgen cannot make the certificate.
pub fn impersonating(identity: &Identity, victim: NodeId) -> Result<Identity, TransportError> {
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(&victim.0);
    // A subject attribute as long as the SPKI, to be overwritten byte for byte: the DER
    // lengths stay right.
    let placeholder = "X".repeat(spki.len());
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&identity.pkcs8_der().to_vec().into(), &rcgen::PKCS_ED25519)
        .map_err(|e| TransportError::InvalidKey(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, placeholder.as_str());
    let mut der = params.self_signed(&key)?.der().to_vec();
    let mut replaced = 0;
    while let Some(pos) = der.windows(spki.len()).position(|w| w == placeholder.as_bytes()) {
        der[pos..pos + spki.len()].copy_from_slice(&spki);
        replaced += 1;
    }
    debug_assert!(replaced > 0, "the placeholder is in the subject");
    let mut crafted = identity.clone();
    crafted.cert = CertificateDer::from(der);
    Ok(crafted)
}
