//! Every problem with the key material at once, for `ringseal check`. [`TlsSettings::load`] stops at the
//! first problem (what `run` and a reload need: one message, nothing half-loaded); the doctor reads
//! each file on its own and examines each part — identity, outbound identity, trust, each CRL — with
//! the same code, so that a missing truststore does not hide a wrong keystore password.

use std::path::{Path, PathBuf};

use super::material::{self, FileBytes, MaterialError, Origins};
use super::settings::{IdentityFiles, Password, StoreFile, TlsSettings, TrustFiles};
use super::x509::fmt_time;

/// What the doctor found.
#[derive(Debug, Default)]
pub struct Diagnosis {
    /// One line per part that loaded, saying what it holds.
    pub loaded: Vec<String>,
    /// Every problem, each naming its config key and file and the fix.
    pub problems: Vec<MaterialError>,
}

impl TlsSettings {
    /// Examines every file `[tls]` names and reports all problems [`TlsSettings::load`] would stop at
    /// one by one. A part whose file cannot be read is not examined further (its read error is the
    /// finding).
    pub fn diagnose(&self) -> Diagnosis {
        let files = &self.files;
        let mut d = Diagnosis::default();
        let mut read = Vec::new();
        let mut unreadable: Vec<PathBuf> = Vec::new();
        for (key, path) in files.paths() {
            if read.iter().any(|(p, _)| p == path) || unreadable.iter().any(|p| p == path) {
                continue;
            }
            match material::read(key, path) {
                Ok(bytes) => read.push((path.to_owned(), bytes)),
                Err(e) => {
                    d.problems.push(e);
                    unreadable.push(path.to_owned());
                }
            }
        }
        let bytes = FileBytes::from_read(read);
        let readable = |paths: Vec<&Path>| !paths.iter().any(|p| unreadable.iter().any(|u| u == p));

        let mut identities = Vec::new();
        for (role, id) in std::iter::once(("identity", &files.identity)).chain(
            files
                .outbound_identity
                .iter()
                .map(|o| ("outbound identity", o)),
        ) {
            if !readable(identity_paths(id)) {
                continue;
            }
            match identity(&bytes, id) {
                Ok((certified, info, origins)) => {
                    d.loaded.push(format!(
                        "{role} {} {}: \"{}\" (v{}, valid until {}); the private key matches the \
                         certificate",
                        origins.cert.0,
                        origins.cert.1.display(),
                        info.subject,
                        info.version,
                        fmt_time(info.not_after)
                    ));
                    identities.push((role, certified, info, origins));
                }
                Err(e) => d.problems.push(e),
            }
        }
        if readable(trust_paths(&files.trust)) {
            match bytes
                .trusted(&files.trust)
                .and_then(|(cas, origin)| Ok((material::trust_anchors(&cas, &origin)?, origin)))
            {
                Ok(((_, cas), (key, path))) => d.loaded.push(format!(
                    "trust {key} {}: {} trusted CA(s) ({})",
                    path.display(),
                    cas.len(),
                    cas.iter()
                        .map(|c| format!("\"{}\"", c.subject))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Err(e) => d.problems.push(e),
            }
        }
        for path in &files.crls {
            if !readable(vec![path]) {
                continue;
            }
            match material::parse_crls(path, bytes.get(path)) {
                Ok(crls) => d.loaded.push(format!(
                    "tls.crl {}: {} revocation list(s)",
                    path.display(),
                    crls.len()
                )),
                Err(e) => d.problems.push(e),
            }
        }
        for (role, certified, info, origins) in &identities {
            // What `load` checks of the loaded material: suites against our key, and v1.
            if *role == "identity"
                && let Err(e) = material::check_suites(certified, &origins.key, &self.suites)
            {
                d.problems.push(e);
            }
            if info.version == 1 && !self.accept_v1 {
                d.problems.push(MaterialError::V1Identity {
                    key: origins.cert.0,
                    path: origins.cert.1.clone(),
                    subject: info.subject.clone(),
                });
            }
        }
        d
    }
}

/// Chain and key parsed, and paired (the key matches, the leaf has not expired).
fn identity(
    bytes: &FileBytes,
    files: &IdentityFiles,
) -> Result<(rustls::sign::CertifiedKey, super::x509::CertInfo, Origins), MaterialError> {
    let (chain, key, origins) = bytes.identity(files)?;
    let (certified, info) = material::certify(chain, key, &origins)?;
    Ok((certified, info, origins))
}

fn store_paths(s: &StoreFile) -> Vec<&Path> {
    let mut paths = vec![s.path.as_path()];
    if let Password::File(p) = &s.password {
        paths.push(p);
    }
    paths
}

fn identity_paths(id: &IdentityFiles) -> Vec<&Path> {
    match id {
        IdentityFiles::Pem { cert, key } => vec![cert, key],
        IdentityFiles::Store(s) => store_paths(s),
    }
}

fn trust_paths(trust: &TrustFiles) -> Vec<&Path> {
    match trust {
        TrustFiles::Pem(ca) => vec![ca],
        TrustFiles::Store(s) => store_paths(s),
    }
}

/// The diagnosis must not invent problems: files that load give none, and its findings are a superset
/// of `load`'s first one.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, NodeSpec};
    use crate::tls::settings::TlsFiles;

    fn settings(files: TlsFiles) -> TlsSettings {
        TlsSettings {
            files,
            versions: rustls::ALL_VERSIONS.to_vec(),
            suites: crate::tls::provider().cipher_suites.clone(),
            require_client_auth: crate::tls::settings::ClientAuth::Required,
            crl_expired: Default::default(),
            reload_interval: std::time::Duration::from_secs(60),
            accept_v1: false,
        }
    }

    #[test]
    fn good_material_has_no_problems_and_bad_has_all() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("T").unwrap();
        let other = Ca::new("U").unwrap();
        let id = ca.issue(&NodeSpec::new("n", &[])).unwrap();
        let stranger = other.issue(&NodeSpec::new("s", &[])).unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("n.crt"), &id.cert_pem).unwrap();
        std::fs::write(path("n.key"), &id.key_pem).unwrap();
        std::fs::write(path("s.key"), &stranger.key_pem).unwrap();
        std::fs::write(path("ca.crt"), &ca.cert_pem).unwrap();
        std::fs::write(path("bad.crl"), "not a CRL").unwrap();
        let good = TlsFiles {
            identity: IdentityFiles::Pem {
                cert: path("n.crt"),
                key: path("n.key"),
            },
            outbound_identity: None,
            trust: TrustFiles::Pem(path("ca.crt")),
            crls: Vec::new(),
        };
        let d = settings(good.clone()).diagnose();
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.loaded.len(), 2, "{:?}", d.loaded);
        assert!(settings(good.clone()).load().is_ok());

        let bad = TlsFiles {
            identity: IdentityFiles::Pem {
                cert: path("n.crt"),
                key: path("s.key"),
            },
            outbound_identity: None,
            trust: TrustFiles::Pem(path("missing.crt")),
            crls: vec![path("bad.crl")],
        };
        let first = settings(bad.clone()).load().unwrap_err().to_string();
        let d = settings(bad).diagnose();
        let found: Vec<String> = d.problems.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found.contains(&first), "{first} not in {found:#?}");
        assert!(
            found
                .iter()
                .any(|p| p.contains("missing.crt") && p.contains("cannot read"))
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("does not match the certificate"))
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("bad.crl") && p.contains("X509 CRL"))
        );
    }
}
