//! From a validated config to what the sidecar runs: the key material `[tls]` names is loaded, and
//! `offload = "require"` and `[tcp] loopback_congestion_control` are checked against this kernel.
//! `config` describes, this step reads; `ringseal rules`, which needs only listen ports, stops before
//! it.

use std::path::{Path, PathBuf};

use rustls::SupportedCipherSuite;

use crate::config::{self, Config, ConfigError, Loaded, Offload, Sources};
use crate::tls::{LoadedTls, MaterialError};

/// Why a valid config cannot run here. The message starts `config <file>:` like [`ConfigError`]'s.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("config {path}: {source}")]
    Material {
        path: PathBuf,
        source: MaterialError,
    },
    #[error(
        "config {path}: offload: \"require\", but this kernel has no kTLS: {why}; or set offload = \"auto\""
    )]
    NoKtls {
        path: PathBuf,
        why: &'static crate::relay::KtlsUnavailable,
    },
    #[error(
        "config {path}: offload: \"require\", but the kernel cannot offload {suite} (it takes \
         {offloadable}); remove it from tls.cipher_suites or set offload = \"auto\""
    )]
    SuiteNotOffloaded {
        path: PathBuf,
        suite: &'static str,
        offloadable: String,
    },
    #[error("config {path}: {source}")]
    Congestion {
        path: PathBuf,
        source: Box<crate::tcp::CongestionError>,
    },
}

/// Reading, validating or loading failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Reads, derives, merges and validates `sources`, then loads the key material.
pub fn load(sources: &Sources) -> Result<Loaded<LoadedTls>, StartError> {
    let Loaded {
        config,
        derived,
        set,
    } = sources.load()?;
    let config = load_tls(config, sources.path())?;
    Ok(Loaded {
        config,
        derived,
        set,
    })
}

/// Loads the key material of a validated config; `path` is the file messages name.
pub fn load_tls(config: Config, path: &Path) -> Result<Config<LoadedTls>, LoadError> {
    let tls = config
        .tls
        .clone()
        .load()
        .map_err(|source| LoadError::Material {
            path: path.to_owned(),
            source,
        })?;
    check_offload(config.offload, &tls.suites, path)?;
    check_congestion(&config, path)?;
    Ok(config.with_tls(tls))
}

/// Every reason [`load_tls`] would refuse a validated config, not only the first, and one line per part
/// of the material that did load: what `ringseal check` reports when the config cannot run.
pub fn diagnose(config: &Config, path: &Path) -> (Vec<String>, Vec<LoadError>) {
    let d = config.tls.diagnose();
    let mut problems: Vec<LoadError> = d
        .problems
        .into_iter()
        .map(|source| LoadError::Material {
            path: path.to_owned(),
            source,
        })
        .collect();
    if let Err(e) = check_offload(config.offload, &config.tls.suites, path) {
        problems.push(e);
    }
    if let Err(e) = check_congestion(config, path) {
        problems.push(e);
    }
    (d.loaded, problems)
}

/// `offload = "require"`: the kernel must have kTLS, for every configured suite.
fn check_offload(
    offload: Offload,
    suites: &[SupportedCipherSuite],
    path: &Path,
) -> Result<(), LoadError> {
    if offload != Offload::Require {
        return Ok(());
    }
    let support = crate::relay::support();
    if let Err(why) = &support.result {
        return Err(LoadError::NoKtls {
            path: path.to_owned(),
            why,
        });
    }
    match suites.iter().find(|s| !support.offloads(**s)) {
        Some(s) => Err(LoadError::SuiteNotOffloaded {
            path: path.to_owned(),
            suite: crate::tls::suites::iana_name(*s),
            offloadable: support.describe(),
        }),
        None => Ok(()),
    }
}

/// `[tcp] loopback_congestion_control`: a named algorithm must be one this process may set here.
fn check_congestion<Tls>(config: &Config<Tls>, path: &Path) -> Result<(), LoadError> {
    crate::tcp::Loopback::resolve(&config.tcp.loopback_congestion_control)
        .map(drop)
        .map_err(|source| LoadError::Congestion {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// What `ringseal check` prints after the PKI report: every validated value, and this kernel's kTLS.
pub fn describe<Tls: crate::tls::settings::Negotiation>(config: &Config<Tls>) -> String {
    let support = crate::relay::support();
    let ktls = if support.available() {
        format!("kTLS available: {}", support.describe())
    } else {
        format!("kTLS unavailable: {}", support.describe())
    };
    let loopback = match crate::tcp::Loopback::resolve(&config.tcp.loopback_congestion_control) {
        Ok(l) => format!("loopback legs: {l}"),
        Err(e) => format!("loopback legs: cannot be set: {e}"),
    };
    format!(
        "{}tcp        {loopback}; network legs keep the host default\n",
        config::describe(config, &ktls)
    )
}
