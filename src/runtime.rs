//! From a validated config to what the sidecar runs: the key material `[tls]` names is loaded, and
//! `offload = "require"` is checked against this kernel. `config` describes, this step reads; `ringseal
//! rules`, which needs only listen ports, stops before it.

use std::path::{Path, PathBuf};

use rustls::SupportedCipherSuite;

use crate::config::{self, Config, ConfigError, ListenerName, Loaded, Offload, Policy, Sources};
use crate::tls::TlsSettings;
use crate::tls::{LoadedTls, MaterialError};

/// Why a valid config cannot run here. The message starts `config <file>:` like [`ConfigError`]'s.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("config {path}: {source}")]
    Material {
        path: PathBuf,
        source: MaterialError,
    },
    /// The material of a listener's own `[inbound.tls]` / `[outbound.tls]` (the file is in `source`).
    #[error("config {path}: listener \"{listener}\": {source}")]
    ListenerMaterial {
        path: PathBuf,
        listener: ListenerName,
        /// Boxed to keep every `Result` of loading small.
        source: Box<MaterialError>,
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

/// Loads the key material of a validated config: `[tls]`, and each listener's policy (a policy equal
/// to one already loaded shares its material: the same files are read once). `path` is the file
/// messages name.
pub fn load_tls(config: Config, path: &Path) -> Result<Config<LoadedTls>, LoadError> {
    let offload = config.offload;
    let mut loaded = Loader::default();
    config.try_map_tls(|policy, settings| loaded.load_checked(policy, settings, offload, path))
}

/// The policies loaded so far, by their settings: what listeners with equal policies share.
#[derive(Default)]
pub struct Loader {
    loaded: Vec<(TlsSettings, LoadedTls)>,
}

impl Loader {
    /// The material of `settings`, read unless an equal policy was loaded already; an error names the
    /// listener whose policy it is.
    pub fn load(
        &mut self,
        policy: Policy<'_>,
        settings: TlsSettings,
        path: &Path,
    ) -> Result<LoadedTls, LoadError> {
        if let Some((_, tls)) = self.loaded.iter().find(|(s, _)| *s == settings) {
            return Ok(tls.clone());
        }
        let tls = settings.clone().load().map_err(|source| match policy {
            Policy::Default => LoadError::Material {
                path: path.to_owned(),
                source,
            },
            Policy::Listener(name) => LoadError::ListenerMaterial {
                path: path.to_owned(),
                listener: name.clone(),
                source: Box::new(source),
            },
        })?;
        self.loaded.push((settings, tls.clone()));
        Ok(tls)
    }

    /// As [`Self::load`], and the suites checked against `offload`.
    pub fn load_checked(
        &mut self,
        policy: Policy<'_>,
        settings: TlsSettings,
        offload: Offload,
        path: &Path,
    ) -> Result<LoadedTls, LoadError> {
        let tls = self.load(policy, settings, path)?;
        check_offload(offload, &tls.suites, path)?;
        Ok(tls)
    }
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

/// What `ringseal check` prints after the PKI report: every validated value, and this kernel's kTLS.
pub fn describe<Tls: crate::tls::settings::Negotiation>(config: &Config<Tls>) -> String {
    let support = crate::relay::support();
    let ktls = if support.available() {
        format!("kTLS available: {}", support.describe())
    } else {
        format!("kTLS unavailable: {}", support.describe())
    };
    config::describe(config, &ktls)
}
