//! A cluster certificate authority: `plumcast ca init` makes one, `plumcast ca issue`
//! certifies node keys with it, and a node given its CA accepts only peers whose
//! certificate chains to it (checked with webpki in the TLS verifiers, both sides).
//!
//! Files are DER: `DIR/ca.crt` (the CA certificate: basicConstraints CA, path length 0,
//! keyCertSign) and `DIR/ca.key` (its Ed25519 key, PKCS#8, mode 0600). Leaf certificates
//! name the fixed server name [`SERVER_NAME`], carry serverAuth and
//! clientAuth (every node is both), and certify the node's Ed25519 key: the CA never needs
//! a node's private key, only its [`NodeId`]. Certificates keep rcgen's validity (1975 to
//! 4096): they do not expire; a node is shut out by the allow-list, not by revocation.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;

use crate::{NodeId, SERVER_NAME, TransportError};

/// The CA's subject common name.
const CA_NAME: &str = "plumcast cluster CA";

/// Why a CA operation failed.
fn ca_err(path: &Path, what: impl std::fmt::Display) -> TransportError {
    TransportError::IdentityFile { path: path.to_path_buf(), reason: what.to_string() }
}

/// A node's public key as rcgen signs it.
struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

fn ca_params() -> Result<CertificateParams, TransportError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// A cluster CA loaded from (or written to) its directory.
pub struct ClusterCa {
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl ClusterCa {
    /// Make a new CA in `dir` (created if missing): `ca.crt` and `ca.key`.
    ///
    /// # Errors
    /// [`TransportError::IdentityFile`] naming the file if either exists already (a CA is
    /// never overwritten) or cannot be written.
    pub fn init(dir: &Path) -> Result<Self, TransportError> {
        std::fs::create_dir_all(dir).map_err(|e| ca_err(dir, format!("cannot create it: {e}")))?;
        let (crt, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        for p in [&crt, &key_path] {
            if p.exists() {
                return Err(ca_err(p, "exists already: a CA is never overwritten"));
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert = ca_params()?.self_signed(&key)?.der().clone();
        write_private(&key_path, &key.serialize_der())?;
        std::fs::write(&crt, cert.as_ref()).map_err(|e| ca_err(&crt, format!("cannot write it: {e}")))?;
        Ok(Self { key, cert })
    }

    /// Load the CA of `dir`.
    ///
    /// # Errors
    /// [`TransportError::IdentityFile`] naming a missing or unreadable file, or a key that
    /// is not the certificate's.
    pub fn load(dir: &Path) -> Result<Self, TransportError> {
        let (crt, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        let der = std::fs::read(&key_path).map_err(|e| ca_err(&key_path, format!("cannot read it: {e}")))?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&der.into(), &rcgen::PKCS_ED25519)
            .map_err(|e| ca_err(&key_path, format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let cert = load_certificate(&crt)?;
        let ca_key = crate::node_id_of(&cert).map_err(|e| ca_err(&crt, e))?;
        if ca_key.0.as_slice() != key.public_key_raw() {
            return Err(ca_err(&key_path, format!("is not the key of {}", crt.display())));
        }
        Ok(Self { key, cert })
    }

    /// The CA certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A leaf certificate (DER) for the node `id`: its key, the fixed server name,
    /// serverAuth and clientAuth, signed by this CA.
    ///
    /// # Errors
    /// [`TransportError::Certificate`] if rcgen cannot sign.
    pub fn issue(&self, id: NodeId) -> Result<CertificateDer<'static>, TransportError> {
        let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("plumcast node {}", id.to_hex()));
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::new(ca_params()?, &self.key);
        Ok(p.signed_by(&Ed25519Public(id.0), &issuer)?.der().clone())
    }
}

/// Read a DER certificate file.
///
/// # Errors
/// [`TransportError::IdentityFile`] naming the file if it cannot be read.
pub fn load_certificate(path: &Path) -> Result<CertificateDer<'static>, TransportError> {
    let der = std::fs::read(path).map_err(|e| ca_err(path, format!("cannot read it: {e}")))?;
    Ok(CertificateDer::from(der))
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), TransportError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| ca_err(path, format!("cannot create it: {e}")))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| ca_err(path, format!("cannot write it: {e}")))
}
