//! `ringseal certs`: the twenty commands of the Cassandra tutorials (openssl CA, keytool keystores, CSRs,
//! signing, imports) in three. Private keys are written 0600; nothing existing is overwritten without
//! `--force`. Node identities come as PEM (for ringseal and Cassandra 4.1's PEM support) and PKCS#12 (for
//! Cassandra's `server_encryption_options.keystore`, JDK 9+ reads it whatever the file is called).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use super::{Ca, Identity, KeyType, NodeSpec};

/// File names inside a CA directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path} exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("PKCS#12 for {name}: {message}")]
    Pkcs12 { name: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path`: mode 0600 for secrets, 0644 otherwise; refuses to overwrite unless `force`.
fn write(path: &Path, bytes: &[u8], secret: bool, force: bool) -> Result<(), CertsError> {
    if path.exists() && !force {
        return Err(CertsError::Exists {
            path: path.to_owned(),
        });
    }
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(io(path))?;
    if secret {
        // An existing file keeps its old mode on open; tighten it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    file.write_all(bytes).map_err(io(path))
}

/// Refuses before writing anything when one of `paths` exists (and `force` is off), so a refused run
/// leaves no half-written set behind.
fn check_free(paths: &[&Path], force: bool) -> Result<(), CertsError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) if !force => Err(CertsError::Exists {
            path: p.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// `ringseal certs ca`: a new cluster CA in `out` (ca.crt, ca.key).
pub fn write_ca(
    out: &Path,
    cluster: &str,
    key: KeyType,
    days: u64,
    force: bool,
) -> Result<Vec<PathBuf>, CertsError> {
    check_free(&[&out.join(CA_CERT), &out.join(CA_KEY)], force)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let ca = Ca::create(cluster, key, days).map_err(|source| CertsError::Generate {
        what: format!("CA {cluster}"),
        source,
    })?;
    let (cert, key_path) = (out.join(CA_CERT), out.join(CA_KEY));
    write(&key_path, ca.key_pem.as_bytes(), true, force)?;
    write(&cert, ca.cert_pem.as_bytes(), false, force)?;
    Ok(vec![cert, key_path])
}

/// The first line of a password file (`--p12-password-file`), read as the sidecar reads its own.
pub fn read_password_file(path: &Path) -> Result<String, CertsError> {
    let text = crate::files::read_text(path, crate::files::PASSWORD_FILE).map_err(|e| {
        CertsError::Input {
            path: path.to_owned(),
            message: e.to_string(),
        }
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A file that could not be read, as the error names it.
fn input(path: &Path, e: crate::files::ReadError) -> CertsError {
    match e {
        crate::files::ReadError::Io(source) => CertsError::Io {
            path: path.to_owned(),
            source,
        },
        why => CertsError::Input {
            path: path.to_owned(),
            message: why.to_string(),
        },
    }
}

/// Reads the CA that `write_ca` wrote.
pub fn load_ca(dir: &Path) -> Result<Ca, CertsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        crate::files::read_text(&path, crate::files::PEM).map_err(|e| input(&path, e))
    };
    let (cert, key) = (read(CA_CERT)?, read(CA_KEY)?);
    Ca::load(&cert, &key).map_err(|e| CertsError::Input {
        path: dir.to_owned(),
        message: format!("{CA_CERT} and {CA_KEY} do not make a usable CA: {e}"),
    })
}

/// What `write_node` produced.
pub struct NodeFiles {
    pub files: Vec<PathBuf>,
    /// Where the PKCS#12 password is, when it was generated.
    pub password_file: Option<PathBuf>,
}

/// `ringseal certs node`: NAME.crt (leaf, then CA), NAME.key, NAME.p12 in `out`, signed by `ca`.
pub fn write_node(
    ca: &Ca,
    spec: &NodeSpec,
    out: &Path,
    p12_password: Option<&str>,
    force: bool,
) -> Result<NodeFiles, CertsError> {
    let name = &spec.name;
    let (crt, key, p12) = (
        out.join(format!("{name}.crt")),
        out.join(format!("{name}.key")),
        out.join(format!("{name}.p12")),
    );
    let password_path = out.join(format!("{name}.p12.password"));
    check_free(&[&crt, &key, &p12, &password_path], force)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let id = ca.issue(spec).map_err(|source| CertsError::Generate {
        what: format!("certificate for {}", spec.name),
        source,
    })?;
    let generated = match p12_password {
        Some(_) => None,
        None => Some(random_password()?),
    };
    let password = p12_password.or(generated.as_deref()).unwrap_or_default();
    write(&key, id.key_pem.as_bytes(), true, force)?;
    write(
        &crt,
        format!("{}{}", id.cert_pem, ca.cert_pem).as_bytes(),
        false,
        force,
    )?;
    write(&p12, &pkcs12(&id, ca, name, password)?, true, force)?;
    let mut files = vec![crt, key, p12];
    let password_file = match generated {
        Some(pw) => {
            write(&password_path, pw.as_bytes(), true, force)?;
            files.push(password_path.clone());
            Some(password_path)
        }
        None => None,
    };
    Ok(NodeFiles {
        files,
        password_file,
    })
}

/// A keystore with one key entry (alias `name`): the node's key with its chain (leaf, CA).
fn pkcs12(id: &Identity, ca: &Ca, name: &str, password: &str) -> Result<Vec<u8>, CertsError> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let err = |message: String| CertsError::Pkcs12 {
        name: name.to_owned(),
        message,
    };
    let key =
        PrivateKey::from_der(id.key_der.secret_pkcs8_der()).map_err(|e| err(e.to_string()))?;
    let chain = [id.cert_der.as_ref(), ca.cert_der.as_ref()]
        .into_iter()
        .map(Certificate::from_der)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    // The local key id ties the key to its certificate, as keytool does.
    let key_id = {
        use x509_parser::prelude::{FromDer, X509Certificate};
        X509Certificate::from_der(id.cert_der.as_ref())
            .map(|(_, c)| c.raw_serial().to_vec())
            .unwrap_or_else(|_| name.as_bytes().to_vec())
    };
    let mut store = KeyStore::new();
    store.add_entry(
        name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(key_id, key, chain)),
    );
    store
        .writer(password)
        .write()
        .map_err(|e| err(e.to_string()))
}

/// 24 random characters from a 64-symbol alphabet (144 bits), from the crypto provider's RNG.
fn random_password() -> Result<String, CertsError> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 24];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertsError::Pkcs12 {
            name: "password".into(),
            message: "the system random generator failed".into(),
        })?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 63)] as char)
        .collect())
}

/// `ringseal certs sign`: signs a CSR (e.g. from `keytool -certreq`) as a node certificate: its subject
/// and SANs are kept, serverAuth + clientAuth are set, valid for `days`.
pub fn sign_csr(ca: &Ca, csr_path: &Path, days: u64) -> Result<String, CertsError> {
    let text =
        crate::files::read_text(csr_path, crate::files::PEM).map_err(|e| input(csr_path, e))?;
    // keytool writes "NEW CERTIFICATE REQUEST"; the PEM label is otherwise "CERTIFICATE REQUEST".
    let text = text.replace("NEW CERTIFICATE REQUEST", "CERTIFICATE REQUEST");
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(text.as_bytes())
        .map_err(|e| CertsError::Input {
            path: csr_path.to_owned(),
            message: format!("no PEM certificate request found: {e}"),
        })?;
    let not_after = OffsetDateTime::now_utc() + Duration::from_secs(days * 86400);
    ca.sign_csr_der(der.as_ref(), not_after)
        .map_err(|message| CertsError::Input {
            path: csr_path.to_owned(),
            message,
        })
}
