//! Reading a config: the ringseal file, the node's cassandra.yaml, or both merged.

use std::path::{Path, PathBuf};

use super::overrides::{self, Override};
use super::{Config, ConfigError, FileConfig, Problem, cassandra};
use crate::files;
use crate::tls::settings::TlsSettings;

impl Config {
    /// Reads, parses and validates a config file (reading no key material).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = files::read_text(path, files::CONFIG).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path)?;
        config.sources = Some(Sources {
            config: Some(path.to_owned()),
            cassandra_yaml: None,
            set: Vec::new(),
        });
        Ok(config)
    }

    /// Parses config text; relative file names in it are resolved against `path`'s directory.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        // Values are echoed in messages and logs, which are one line each: a file name or address
        // with a newline or carriage return in it would break or overwrite the line.
        let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        if let Some((key, c)) = control_character(&toml::Value::Table(table), String::new()) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                problem: Box::new(Problem::ControlCharacter(c)),
            });
        }
        file.validate(path)
    }
}

/// The first string value (other than a password) holding a control character other than tab, with
/// its key (`tls.crl[1]`).
fn control_character(value: &toml::Value, key: String) -> Option<(String, char)> {
    match value {
        toml::Value::String(s) if !key.ends_with("password") => s
            .chars()
            .find(|c| c.is_control() && *c != '\t')
            .map(|c| (key, c)),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| control_character(v, format!("{key}[{i}]"))),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| {
            let key = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            control_character(v, key)
        }),
        _ => None,
    }
}

/// One line, not toml's multi-line snippet: where, the offending line, what is wrong.
fn toml_error(e: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let at = e.span().map_or_else(String::new, |span| {
        let line = text[..span.start].matches('\n').count() + 1;
        let offending_line = text.lines().nth(line - 1).unwrap_or_default().trim();
        format!("line {line} `{}`: ", visible(offending_line))
    });
    ConfigError::Parse {
        path: path.to_owned(),
        message: format!(
            "{at}{}",
            visible(&e.message().trim_end().replace('\n', " "))
        ),
    }
}

/// Control characters (a bare carriage return, an escape sequence) written as escapes: the message
/// stays one line, and a terminal shows it as it is.
pub(crate) fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a config comes from: a ringseal file, the node's cassandra.yaml, or both (the ringseal file's
/// values override the derived ones key by key; its `[[inbound]]`/`[[outbound]]` lists replace them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub config: Option<PathBuf>,
    pub cassandra_yaml: Option<PathBuf>,
    /// `--set key=value`, applied in order over the file or the derived config (a reload applies
    /// them again).
    pub set: Vec<String>,
}

/// A loaded config and, with a cassandra.yaml, what was derived from it.
pub struct Loaded<Tls = TlsSettings> {
    pub config: Config<Tls>,
    pub derived: Option<cassandra::Derived>,
    /// The `--set` overrides applied, as TOML lines (`tls.accept_v1_certificates = true`).
    pub set: Vec<String>,
}

impl Sources {
    /// Reads, derives, merges, applies `--set` and validates.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let overrides = self
            .set
            .iter()
            .map(|arg| Override::parse(arg))
            .collect::<Result<Vec<_>, _>>()?;
        let set = overrides.iter().map(Override::to_toml_line).collect();
        let (derived, mut table, base) = match &self.cassandra_yaml {
            Some(yaml) => {
                let derived = cassandra::derive(yaml)?;
                let table = derived.table.clone();
                (Some(derived), Some(table), yaml.clone())
            }
            None => (
                None,
                None,
                self.config
                    .clone()
                    .expect("the command line requires --config or --cassandra-yaml"),
            ),
        };
        if table.is_none() && overrides.is_empty() {
            // The file alone: parsed from its own text, so that messages point at its lines.
            let mut config = Config::load(&base)?;
            config.sources = Some(self.clone());
            return Ok(Loaded {
                config,
                derived,
                set,
            });
        }
        // Derived paths are absolute; relative paths of the ringseal file resolve against its directory.
        let base = match &self.config {
            Some(path) => {
                let text =
                    files::read_text(path, files::CONFIG).map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?;
                let file: toml::Table =
                    toml::from_str(&text).map_err(|e| toml_error(&e, &text, path))?;
                match &mut table {
                    Some(table) => {
                        *table = match &derived {
                            Some(derived) => derived.merged(file),
                            None => {
                                let mut merged = std::mem::take(table);
                                cassandra::merge(&mut merged, file);
                                merged
                            }
                        };
                    }
                    None => {
                        // Alone, the file must be a config: its mistakes are reported with its own
                        // line numbers, before `--set` is applied to the generated text.
                        toml::from_str::<FileConfig>(&text)
                            .map_err(|e| toml_error(&e, &text, path))?;
                        table = Some(file);
                    }
                }
                path.clone()
            }
            None => base,
        };
        let mut table = table.unwrap_or_default();
        overrides::apply_all(&mut table, &overrides)?;
        let text = toml::to_string(&table).map_err(|e| ConfigError::Parse {
            path: base.clone(),
            message: e.to_string(),
        })?;
        let mut config = Config::from_toml(&text, &base)?;
        config.sources = Some(self.clone());
        Ok(Loaded {
            config,
            derived,
            set,
        })
    }

    /// The file messages about the loaded config name: the ringseal file, else the cassandra.yaml.
    pub fn path(&self) -> &Path {
        self.config
            .as_ref()
            .or(self.cassandra_yaml.as_ref())
            .expect("the command line requires --config or --cassandra-yaml")
    }

    /// The contents of the source files, for noticing a change.
    pub fn read(&self) -> Result<Vec<u8>, SourceReadError> {
        let mut all = Vec::new();
        for path in self.config.iter().chain(&self.cassandra_yaml) {
            let limit = if Some(path) == self.cassandra_yaml.as_ref() {
                files::CASSANDRA_YAML
            } else {
                files::CONFIG
            };
            all.extend_from_slice(&files::read(path, limit).map_err(|source| SourceReadError {
                path: path.clone(),
                source,
            })?);
        }
        Ok(all)
    }

    /// For log lines: `ringseal.toml`, `cassandra.yaml` or `ringseal.toml + cassandra.yaml`.
    pub fn describe(&self) -> String {
        self.config
            .iter()
            .chain(&self.cassandra_yaml)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// A source file that cannot be read again (the reloader keeps the running config).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct SourceReadError {
    pub path: PathBuf,
    pub source: files::ReadError,
}
