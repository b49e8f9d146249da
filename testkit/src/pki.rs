//! The test PKI: a cluster CA and one node identity of any key type, built on `ringseal::pki` (the
//! same code `ringseal certs` and `ringseal demo` use), in memory or written to a directory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringseal::pki::{Ca, Identity, KeyType, NodeSpec};
use rustls::RootCertStore;
use rustls_pki_types::PrivatePkcs8KeyDer;

/// A CA's validity: the tests' ten years, so a long run never meets an expiry.
const CA_DAYS: u64 = 10 * 365;

/// Why a PKI could not be made or written (only `ringseal bench` sees these; tests unwrap).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a {key} CA")]
    Ca {
        key: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("issuing a {key} node certificate")]
    Node {
        key: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("re-encoding the Ed25519 key")]
    Ed25519(#[source] rcgen::Error),
    #[error("unexpected Ed25519 PKCS#8 encoding")]
    Ed25519Encoding,
    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A cluster CA and a node identity it issued.
pub struct Pki {
    pub ca: Ca,
    pub node: Identity,
    /// The key type of the CA and the node.
    pub key: KeyType,
}

/// Where [`Pki::write_files`] put the PKI.
pub struct PkiFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    pub pem: PathBuf,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A CA for the cluster "TestCluster" and node1 at 127.0.0.1, ECDSA P-256.
    pub fn new() -> Self {
        Self::new_named("TestCluster")
    }

    /// A CA whose cluster name (OU) is `cluster`, and node1 at 127.0.0.1, ECDSA P-256.
    pub fn new_named(cluster: &str) -> Self {
        Self::of_key(cluster, KeyType::EcdsaP256)
    }

    /// A CA for `cluster` and node1 at 127.0.0.1, both with `key`.
    pub fn of_key(cluster: &str, key: KeyType) -> Self {
        let mut node = NodeSpec::new("node1", &[Ipv4Addr::LOCALHOST.into()]);
        node.key = key;
        Self::generate(cluster, &node).unwrap()
    }

    /// A CA for `cluster` with the key type of `node`, and `node` issued by it.
    pub fn generate(cluster: &str, node: &NodeSpec) -> Result<Self, PkiError> {
        let name = key_name(node.key);
        let ca = Ca::create(cluster, node.key, CA_DAYS)
            .map_err(|source| PkiError::Ca { key: name, source })?;
        let key = node.key;
        let node = ca
            .issue(node)
            .map_err(|source| PkiError::Node { key: name, source })?;
        Ok(Self { ca, node, key })
    }

    /// Another node certificate (ECDSA P-256) from this CA.
    pub fn issue(&self, name: &str, ips: &[IpAddr]) -> Identity {
        self.ca.issue(&NodeSpec::new(name, ips)).unwrap()
    }

    /// A root store holding this CA.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        r.add(self.ca.cert_der.clone()).unwrap();
        Arc::new(r)
    }

    /// Writes node.crt, node.key and ca.crt into `dir`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let f = self.write_files(dir).unwrap();
        (f.cert, f.key, f.ca)
    }

    /// Writes ca.crt, node.crt, node.key and node.pem (certificate and key) into `dir`, creating it.
    pub fn write_files(&self, dir: &Path) -> Result<PkiFiles, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let f = PkiFiles {
            dir: dir.to_owned(),
            ca: dir.join("ca.crt"),
            cert: dir.join("node.crt"),
            key: dir.join("node.key"),
            pem: dir.join("node.pem"),
        };
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|source| PkiError::Write {
                path: path.to_owned(),
                source,
            })
        };
        let key_pem = self.node_key_pem()?;
        write(&f.ca, &self.ca.cert_pem)?;
        write(&f.cert, &self.node.cert_pem)?;
        write(&f.key, &key_pem)?;
        write(&f.pem, &format!("{}{key_pem}", self.node.cert_pem))?;
        Ok(f)
    }

    /// The node key as every peer can read it: Ed25519 keys in the plain PKCS#8 v1 encoding.
    fn node_key_pem(&self) -> Result<String, PkiError> {
        match self.key {
            KeyType::Ed25519 => pkcs8_v1_ed25519(&self.node.key_der),
            _ => Ok(self.node.key_pem.clone()),
        }
    }
}

/// As `ringseal bench --key-types` names them (its error messages show them).
fn key_name(key: KeyType) -> &'static str {
    match key {
        KeyType::EcdsaP256 => "ecdsa-p256",
        KeyType::Rsa2048 => "rsa-2048",
        KeyType::Rsa4096 => "rsa-4096",
        KeyType::Ed25519 => "ed25519",
    }
}

/// rcgen (aws-lc-rs) writes Ed25519 keys as PKCS#8 v2 (with the public key), which OpenSSL 3.0
/// refuses ("wrong tag ... Field=attributes"); every peer gets the plain v1 encoding of the same key
/// (RFC 8410): a fixed prefix and the 32-byte seed.
fn pkcs8_v1_ed25519(der: &PrivatePkcs8KeyDer<'_>) -> Result<String, PkiError> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let bytes = der.secret_pkcs8_der();
    // The seed is the OCTET STRING inside the privateKey OCTET STRING: 04 22 04 20 <32 bytes>.
    let at = bytes
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .filter(|i| i + 4 + 32 <= bytes.len())
        .ok_or(PkiError::Ed25519Encoding)?;
    let mut v1 = PREFIX.to_vec();
    v1.extend_from_slice(&bytes[at + 4..at + 36]);
    // rcgen keeps the DER it was given, so this also checks that the key loads.
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&v1.into(), &rcgen::PKCS_ED25519)
        .map_err(PkiError::Ed25519)?;
    Ok(key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1_and_others_as_generated() {
        let dir = tempfile::tempdir().unwrap();
        let ed = Pki::of_key("C", KeyType::Ed25519);
        let f = ed.write_files(dir.path()).unwrap();
        let pem = std::fs::read_to_string(&f.key).unwrap();
        assert_ne!(pem, ed.node.key_pem);
        let v1 = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes());
        let v1: PrivatePkcs8KeyDer = v1.unwrap();
        assert_eq!(v1.secret_pkcs8_der().len(), 48);
        let ec = Pki::new();
        let f = ec.write_files(&dir.path().join("ec")).unwrap();
        assert_eq!(std::fs::read_to_string(&f.key).unwrap(), ec.node.key_pem);
    }
}
