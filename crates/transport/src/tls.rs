//! rustls configuration and the verifiers that bind a connection to a `NodeId`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{ALPN, Admission, Identity, NodeId, TransportConfig, TransportError};

/// Why a certificate does not name a [`NodeId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefused {
    /// The bytes are not one well-formed X.509 certificate (DER), or bytes follow it.
    #[error("not a well-formed X.509 certificate: {0}")]
    Malformed(String),
    /// The SubjectPublicKeyInfo's algorithm is not Ed25519 (OID 1.3.101.112, RFC 8410).
    #[error("subject public key is not Ed25519 (algorithm {0})")]
    NotEd25519(String),
    /// An Ed25519 SubjectPublicKeyInfo with parameters, unused bits, or a key that is not
    /// 32 bytes (RFC 8410 §3 and §4 forbid each).
    #[error("malformed Ed25519 subject public key: {0}")]
    BadEd25519Key(String),
}

/// The Ed25519 public key of a certificate's *parsed* SubjectPublicKeyInfo, as a
/// [`NodeId`]. Parsed with `x509-parser`, never found by searching the DER for a byte
/// pattern: a subject, an issuer or an extension may carry another node's key bytes.
/// The certificate's self-signature is not what proves the key: the TLS 1.3 handshake
/// signature is (checked by the verifiers with `verify_tls13_signature`, against this
/// same SubjectPublicKeyInfo).
///
/// # Errors
/// [`CertificateRefused`] for anything but one well-formed certificate whose public key
/// is a plain 32-byte Ed25519 key.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, CertificateRefused> {
    let (rest, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| CertificateRefused::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertificateRefused::Malformed(format!("{} bytes after the certificate", rest.len())));
    }
    let spki = parsed.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(CertificateRefused::NotEd25519(spki.algorithm.algorithm.to_id_string()));
    }
    if spki.algorithm.parameters.is_some() {
        return Err(CertificateRefused::BadEd25519Key("algorithm parameters present".into()));
    }
    let key = &spki.subject_public_key;
    if key.unused_bits != 0 {
        return Err(CertificateRefused::BadEd25519Key(format!("{} unused bits", key.unused_bits)));
    }
    let bytes: [u8; 32] = key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertificateRefused::BadEd25519Key(format!("key is {} bytes, not 32", key.data.len())))?;
    Ok(NodeId(bytes))
}

/// The [`NodeId`] a connection was authenticated as.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    node_id_of(certs.first()?).ok()
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
    admission: Admission,
    algs: WebPkiSupportedAlgorithms,
}

/// webpki's verifiers with the cluster CA as the only trust anchor.
#[derive(Debug)]
pub(crate) struct CaCheck {
    server: Arc<rustls::client::WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
}

impl CaCheck {
    pub(crate) fn new(ca: &CertificateDer<'static>) -> Result<Self, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| TransportError::Config(format!("the cluster CA certificate: {e}")))?;
        let roots = Arc::new(roots);
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Config(format!("the cluster CA certificate: {e}")))?;
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TransportError::Config(format!("the cluster CA certificate: {e}")))?;
        Ok(Self { server, client })
    }

    /// Whether `leaf` (with `intermediates`) chains to the CA as a client certificate.
    pub(crate) fn chains(&self, leaf: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> bool {
        self.client.verify_client_cert(leaf, intermediates, UnixTime::now()).is_ok()
    }
}

impl PeerVerifier {
    fn new(expected: Option<NodeId>, admission: &Admission) -> Self {
        Self { expected, admission: admission.clone(), algs: algorithms() }
    }

    /// A refusal, counted.
    fn refused<T>(&self, r: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if r.is_err() {
            self.admission.count_refusal();
        }
        r
    }
}

impl PeerVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
        let id = node_id_of(cert)
            .map_err(|e| rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e)))))?;
        match self.expected {
            Some(want) if want != id => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdMismatch { want, got: id })),
            ))),
            _ if !self.admission.admits(&id) => {
                self.admission.count_refusal();
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                    NotAdmitted(id),
                )))))
            }
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

/// A peer whose id is not on the allow-list ([`Admission`]).
#[derive(Debug)]
struct NotAdmitted(NodeId);

impl std::fmt::Display for NotAdmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} is not on the allow-list", self.0.short())
    }
}

impl std::error::Error for NotAdmitted {}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(ca) = self.admission.ca_check() {
            let name = ServerName::try_from(crate::SERVER_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
            self.refused(ca.server.verify_server_cert(end_entity, intermediates, &name, ocsp, now))?;
        }
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
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(ca) = self.admission.ca_check() {
            self.refused(ca.client.verify_client_cert(end_entity, intermediates, now))?;
        }
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

/// The server side: accepts a peer that proves an Ed25519 key (its `NodeId`) that
/// `admission` admits.
///
/// # Errors
/// [`TransportError::Tls`] or [`TransportError::Config`] on an unusable key.
pub fn server_config(
    identity: &Identity,
    config: &TransportConfig,
    admission: &Admission,
) -> Result<quinn::ServerConfig, TransportError> {
    let verifier = Arc::new(PeerVerifier::new(None, admission));
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
/// `NodeId`; with `None` (a bootstrap address) any proven id that `admission` admits is
/// accepted and can be read with [`peer_node_id`].
///
/// # Errors
/// [`TransportError::Tls`] or [`TransportError::Config`] on an unusable key.
pub fn client_config(
    identity: &Identity,
    expected: Option<NodeId>,
    config: &TransportConfig,
    admission: &Admission,
) -> Result<quinn::ClientConfig, TransportError> {
    let verifier = Arc::new(PeerVerifier::new(expected, admission));
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
        assert_eq!(node_id_of(id.certificate()), Ok(id.node_id()));
        let again = Identity::from_pkcs8(id.pkcs8_der()).unwrap();
        assert_eq!(again.node_id(), id.node_id());
    }

    #[test]
    fn a_certificate_carrying_another_key_in_its_subject_proves_its_own_key() {
        let victim = Identity::generate().unwrap().node_id();
        let stranger = Identity::generate().unwrap();
        let crafted = crate::test_util::impersonating(&stranger, victim).unwrap();
        // The victim's key bytes really are in the DER, ahead of the real SPKI.
        let der = crafted.certificate().as_ref();
        let victim_at = der.windows(32).position(|w| w == victim.0).expect("victim key in the DER");
        let own_at = der.windows(32).position(|w| w == stranger.node_id().0).expect("own key in the DER");
        assert!(victim_at < own_at, "the victim's bytes come first");
        assert_eq!(node_id_of(crafted.certificate()), Ok(stranger.node_id()));
        // And the verifier binds the connection to the stranger, never to the victim.
        let verifier = PeerVerifier::new(None, &Admission::open());
        assert_eq!(verifier.check(crafted.certificate()).unwrap(), stranger.node_id());
        let expecting_victim = PeerVerifier::new(Some(victim), &Admission::open());
        assert!(expecting_victim.check(crafted.certificate()).is_err());
    }

    #[test]
    fn an_identity_file_is_created_only_in_an_existing_directory() {
        let dir = std::env::temp_dir().join(format!("plumcast-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let missing = dir.join("no-such-dir").join("key.der");
        let e = Identity::load_or_create(&missing).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("no-such-dir"), "{e}");
        assert!(!dir.exists(), "nothing was created");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.der");
        let made = Identity::load_or_create(&path).unwrap();
        assert_eq!(Identity::load_or_create(&path).unwrap().node_id(), made.node_id(), "loaded again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_certificate_whose_key_is_not_ed25519_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert =
            rcgen::CertificateParams::new(vec![crate::SERVER_NAME.to_string()]).unwrap().self_signed(&key).unwrap();
        assert!(matches!(node_id_of(cert.der()), Err(CertificateRefused::NotEd25519(_))));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_refused() {
        assert!(matches!(
            node_id_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2])),
            Err(CertificateRefused::Malformed(_))
        ));
        let id = Identity::generate().unwrap();
        let mut der = id.certificate().to_vec();
        der.push(0);
        assert!(matches!(node_id_of(&CertificateDer::from(der)), Err(CertificateRefused::Malformed(_))));
    }
}
