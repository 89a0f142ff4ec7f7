//! rustls configuration and the verifiers that bind a connection to a `NodeId`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{ALPN, Identity, NodeId, TransportConfig, TransportError};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes, 0 unused bits) }; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The Ed25519 public key in a certificate, as a [`NodeId`]. The certificate's
/// self-signature is not what proves the key: the TLS 1.3 handshake signature is
/// (checked by the verifiers with `verify_tls13_signature`).
pub(crate) fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let der = cert.as_ref();
    let pos = der.windows(ED25519_SPKI_PREFIX.len()).position(|w| w == ED25519_SPKI_PREFIX)?;
    let key = der.get(pos + ED25519_SPKI_PREFIX.len()..pos + ED25519_SPKI_PREFIX.len() + 32)?;
    Some(NodeId(key.try_into().ok()?))
}

/// The [`NodeId`] a connection was authenticated as.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    node_id_of(certs.first()?)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

#[derive(Debug)]
struct PeerVerifier {
    expected: Option<NodeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
        let id = node_id_of(cert).ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match self.expected {
            Some(want) if want != id => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdMismatch { want, got: id })),
            ))),
            _ => Ok(id),
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoSignatureSchemesInCommon));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

/// TLS 1.2 is never negotiated (configs are TLS 1.3 only); both verifiers refuse it.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
}

#[derive(Debug)]
struct IdMismatch {
    want: NodeId,
    got: NodeId,
}

impl std::fmt::Display for IdMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node id mismatch: expected {}, peer proved {}", self.want.short(), self.got.short())
    }
}

impl std::error::Error for IdMismatch {}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

fn key_of(identity: &Identity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.pkcs8_der().to_vec()))
}

/// The server side: accepts any peer that proves an Ed25519 key (its `NodeId`).
///
/// # Errors
/// [`TransportError::Tls`] or [`TransportError::Config`] on an unusable key.
pub fn server_config(identity: &Identity, config: &TransportConfig) -> Result<quinn::ServerConfig, TransportError> {
    let verifier = Arc::new(PeerVerifier { expected: None, algs: algorithms() });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate().clone()], key_of(identity))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(config.quinn()?));
    Ok(server)
}

/// The client side. With `expected`, the handshake fails unless the server proves that
/// `NodeId`; with `None` (a bootstrap address) any proven id is accepted and can be read
/// with [`peer_node_id`].
///
/// # Errors
/// [`TransportError::Tls`] or [`TransportError::Config`] on an unusable key.
pub fn client_config(
    identity: &Identity,
    expected: Option<NodeId>,
    config: &TransportConfig,
) -> Result<quinn::ClientConfig, TransportError> {
    let verifier = Arc::new(PeerVerifier { expected, algs: algorithms() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate().clone()], key_of(identity))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(config.quinn()?));
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_the_certificate_key() {
        let id = Identity::generate().unwrap();
        assert_eq!(node_id_of(id.certificate()), Some(id.node_id()));
        let again = Identity::from_pkcs8(id.pkcs8_der()).unwrap();
        assert_eq!(again.node_id(), id.node_id());
    }
}
