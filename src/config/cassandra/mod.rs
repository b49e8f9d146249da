//! Deriving a ringseal config from the node's own `cassandra.yaml` (`--cassandra-yaml`).
//!
//! [`derive`] reads the file Cassandra reads and turns `server_encryption_options` and the port and
//! address settings into a ringseal config, as a TOML table; [`merge`] lays a ringseal config file
//! over it (the file wins key by key), and the result deserializes into the file structs like any
//! ringseal config. Cassandra does not have to be running, and nothing is resolved or connected:
//! host names and interfaces are reported, not looked up. Every key inside
//! `server_encryption_options` is either mapped or named in a warning; docs/cassandra-yaml.md lists
//! each key, what ringseal does with it and why.
//!
//! The way through: [`yaml`] (the text as a tree, with positions) -> [`options`] and
//! [`server_encryption`] (the settings as Cassandra reads them, read with [`values`]) ->
//! [`mapping`] (the ringseal table, with [`findings`]: warnings and notes).

mod client_encryption;
mod client_listener;
mod error;
mod findings;
mod mapping;
mod options;
mod server_encryption;
mod values;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

pub use error::CassandraYamlError;
pub use yaml::SyntaxError;

use findings::Findings;
use mapping::{Mapped, Mapper};
use values::{EXPECTED_SETTINGS, Reader};
use yaml::{Kind, ParseError};

/// A ringseal config derived from a cassandra.yaml.
pub struct Derived {
    /// A ringseal config as a TOML table, ready to be merged with (overridden by) a ringseal config
    /// file and deserialized into `FileConfig`. Paths in it are absolute.
    pub table: Table,
    /// What completes an `[[inbound]]` named "client" of a ringseal config file (its TLS settings
    /// and the addresses cassandra.yaml gives), when `client_encryption_options` is set; see
    /// [`Derived::merged`].
    pub client_template: Option<Table>,
    /// One line per cassandra.yaml key or value ringseal cannot honour, naming the key and why.
    pub warnings: Vec<String>,
    /// Facts about the derivation that need no action (defaults used, where relative paths were
    /// resolved, what `internode_encryption: none` means here). For `check` to print.
    pub notes: Vec<String>,
    /// `cluster_name`, or Cassandra's default "Test Cluster" when the file does not set it.
    pub cluster_name: Option<String>,
}

impl Derived {
    /// The table as TOML text with every password replaced by `"<redacted>"`: what `check` prints.
    pub fn to_toml_redacted(&self) -> String {
        let mut table = self.table.clone();
        redact(&mut table);
        toml::to_string(&table).unwrap_or_else(|e| format!("# cannot render the table: {e}\n"))
    }
}

/// Passwords never appear in Debug output.
impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut table = self.table.clone();
        redact(&mut table);
        f.debug_struct("Derived")
            .field("table", &table)
            .field(
                "client_template",
                &self.client_template.clone().map(|mut t| {
                    redact(&mut t);
                    t
                }),
            )
            .field("warnings", &self.warnings)
            .field("notes", &self.notes)
            .field("cluster_name", &self.cluster_name)
            .finish()
    }
}

fn redact(table: &mut Table) {
    for (key, value) in table.iter_mut() {
        match value {
            Value::Table(t) => redact(t),
            Value::Array(items) => items.iter_mut().for_each(|v| {
                if let Value::Table(t) = v {
                    redact(t);
                }
            }),
            Value::String(s) if key.ends_with("password") => *s = "<redacted>".into(),
            _ => {}
        }
    }
}

/// Reads `yaml_path` and derives a ringseal config from it. Relative paths in it are resolved
/// against `$CASSANDRA_HOME` when that is set (see [`derive_with_home`]).
pub fn derive(yaml_path: &Path) -> Result<Derived, CassandraYamlError> {
    let home = std::env::var_os("CASSANDRA_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    derive_with_home(yaml_path, home.as_deref())
}

/// [`derive`] with `CASSANDRA_HOME` given instead of read from the environment.
pub fn derive_with_home(
    yaml_path: &Path,
    cassandra_home: Option<&Path>,
) -> Result<Derived, CassandraYamlError> {
    let bytes =
        crate::files::read(yaml_path, crate::files::CASSANDRA_YAML).map_err(|e| match e {
            crate::files::ReadError::Io(source) => CassandraYamlError::Read {
                path: yaml_path.to_owned(),
                source,
            },
            why => CassandraYamlError::Unusable {
                path: yaml_path.to_owned(),
                why,
            },
        })?;
    derive_bytes(&bytes, yaml_path, cassandra_home)
}

/// [`derive_with_home`] on the contents of the file, already read: `yaml_path` only names the file in
/// messages and locates relative paths; nothing is read.
pub fn derive_bytes(
    bytes: &[u8],
    yaml_path: &Path,
    cassandra_home: Option<&Path>,
) -> Result<Derived, CassandraYamlError> {
    let path = yaml_path.to_owned();
    let text = std::str::from_utf8(bytes).map_err(|e| CassandraYamlError::NotText {
        path: path.clone(),
        offset: e.valid_up_to(),
    })?;
    let root = yaml::parse(text).map_err(|e| parse_error(e, &path, text))?;
    let mut reader = Reader {
        path,
        findings: Findings::default(),
    };
    let Kind::Map(entries) = &root.kind else {
        return Err(reader.type_error("top level", EXPECTED_SETTINGS, &root, toml_hint(text)));
    };
    let yaml = reader.read(entries)?;
    let (base, base_why) = base_dir(yaml_path, cassandra_home);
    let mapper = Mapper {
        base,
        base_why,
        relative_resolved: Vec::new(),
        section: server_encryption::SEO,
        findings: reader.findings,
    };
    let Mapped {
        table,
        findings,
        client_template,
    } = mapper.map(&yaml);
    let (warnings, notes) = findings.into_lines();
    Ok(Derived {
        table,
        client_template,
        warnings,
        notes,
        cluster_name: Some(yaml.cluster_name),
    })
}

fn parse_error(e: ParseError, path: &Path, text: &str) -> CassandraYamlError {
    let path = path.to_owned();
    match e {
        ParseError::Syntax { error, at } => CassandraYamlError::Syntax {
            path,
            hint: syntax_hint(&error, text),
            error,
            line: at.line,
            column: at.column,
        },
        ParseError::Empty => CassandraYamlError::Empty { path },
        ParseError::MultipleDocuments { at } => CassandraYamlError::MultipleDocuments {
            path,
            line: at.line,
        },
    }
}

fn syntax_hint(error: &SyntaxError, text: &str) -> &'static str {
    // ("unprintable" contains "tab": match the word.)
    let message = error.to_string();
    if message
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| w == "tab" || w == "tabs")
    {
        "; YAML indents with spaces, never tabs"
    } else {
        toml_hint(text)
    }
}

impl Derived {
    /// The derived table with a ringseal config file laid over it ([`merge`]); an `[[inbound]]` of
    /// the file named "client" is completed from [`Derived::client_template`] when no client
    /// listener was derived.
    pub fn merged(&self, file: Table) -> Table {
        let mut table = self.table.clone();
        merge_with(&mut table, file, self.client_template.as_ref());
        table
    }
}

/// Deep merge: `overrides` (a parsed ringseal config) wins key by key inside tables; arrays (e.g.
/// `[[inbound]]`) and every other value are replaced whole, except that a file `[[inbound]]` naming
/// no address takes the derived ones ([`fill_addresses`]), and that the derived client listener
/// (named "client") is merged with the file's listener of that name key by key, or kept when the
/// file has none ([`merge_client`]). In `[tls]` (and the client listener's `tls`), a key the file
/// sets also removes the derived keys that say the same thing another way ([`ALTERNATIVES`],
/// password sources).
pub fn merge(base: &mut Table, overrides: Table) {
    merge_with(base, overrides, None);
}

fn merge_with(base: &mut Table, mut overrides: Table, client_template: Option<&Table>) {
    if let (Some(Value::Table(derived)), Some(Value::Table(file))) =
        (base.get_mut("tls"), overrides.get("tls"))
    {
        drop_replaced_alternatives(derived, file);
    }
    if let Some(Value::Array(file)) = overrides.get_mut("inbound") {
        let derived = match base.get("inbound") {
            Some(Value::Array(derived)) => derived.clone(),
            _ => Vec::new(),
        };
        let (client, internode): (Vec<&Value>, Vec<&Value>) =
            derived.iter().partition(|v| is_client(v));
        let internode: Vec<&Table> = internode.iter().filter_map(|v| v.as_table()).collect();
        fill_addresses(
            &internode,
            file.iter_mut()
                .filter(|v| !is_client(v))
                .filter_map(Value::as_table_mut),
        );
        let client = client.first().and_then(|v| v.as_table());
        merge_client(client, client_template, file);
    }
    merge_tables(base, overrides);
}

/// Whether a listener is named "client" (the one derived from client_encryption_options).
fn is_client(listener: &Value) -> bool {
    listener.get("name").and_then(Value::as_str) == Some(client_listener::CLIENT_LISTENER)
}

/// The file's `[[inbound]]` named "client" is laid over the derived client listener (or, when none
/// was derived, the template of one) key by key; without one, the derived listener is kept, so that
/// a file that only changes the internode listener does not drop client TLS.
fn merge_client(derived: Option<&Table>, template: Option<&Table>, file: &mut Vec<Value>) {
    let Some(Value::Table(own)) = file.iter_mut().find(|v| is_client(v)) else {
        if let Some(derived) = derived {
            file.push(Value::Table(derived.clone()));
        }
        return;
    };
    let Some(base) = derived.or(template) else {
        return;
    };
    let mut completed = base.clone();
    if let (Some(Value::Table(d)), Some(Value::Table(f))) =
        (completed.get_mut("tls"), own.get("tls"))
    {
        drop_replaced_alternatives(d, f);
    }
    merge_tables(&mut completed, std::mem::take(own));
    *own = completed;
}

/// An internode `[[inbound]]` of the file without `listen` and `forward` takes them from the derived
/// listener at the same position: the addresses come from cassandra.yaml's listen_address (a pod IP
/// under Kubernetes, known only at run time) while the file adds what the yaml cannot say, e.g.
/// `allow`. A file listener that names either address keeps its own (a listener without both is
/// refused anyway, so no valid config changes meaning).
fn fill_addresses<'f>(derived: &[&Table], file: impl Iterator<Item = &'f mut Table>) {
    for (d, f) in derived.iter().zip(file) {
        if !f.contains_key("listen") && !f.contains_key("forward") {
            for key in ["listen", "forward"] {
                if let Some(v) = d.get(key) {
                    f.insert(key.into(), v.clone());
                }
            }
        }
    }
}

/// `[tls]` keys that say one thing in alternative ways, as (what the file sets, what it replaces). The
/// derived keys of the other way go, so that a file can name PEM files or a CA bundle where
/// cassandra.yaml has stores, or a password file where it has a password (cert-manager mounts one),
/// without "give either ... not both".
const ALTERNATIVES: &[(&[&str], &[&str])] = &[
    (
        &["cert", "key"],
        &[
            "keystore",
            "keystore_password",
            "keystore_password_file",
            "keystore_password_env",
            "keystore_type",
            "keystore_alias",
        ],
    ),
    (&["keystore"], &["cert", "key"]),
    (
        &["ca"],
        &[
            "truststore",
            "truststore_password",
            "truststore_password_file",
            "truststore_password_env",
            "truststore_type",
        ],
    ),
    (&["truststore"], &["ca"]),
];

fn drop_replaced_alternatives(derived: &mut Table, file: &Table) {
    for (set, replaced) in ALTERNATIVES {
        if set.iter().any(|k| file.contains_key(*k)) {
            for k in *replaced {
                derived.remove(*k);
            }
        }
    }
    for store in ["keystore", "truststore", "outbound_keystore"] {
        let sources = ["", "_file", "_env"].map(|s| format!("{store}_password{s}"));
        if sources.iter().any(|k| file.contains_key(k)) {
            for k in &sources {
                derived.remove(k);
            }
        }
    }
}

fn merge_tables(base: &mut Table, overrides: Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge_tables(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// What Cassandra's relative paths are relative to (its working directory, normally
/// CASSANDRA_HOME), and why (for the note).
fn base_dir(yaml_path: &Path, cassandra_home: Option<&Path>) -> (PathBuf, &'static str) {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if let Some(home) = cassandra_home {
        return (absolute(home), "$CASSANDRA_HOME");
    }
    let yaml = absolute(yaml_path);
    let dir = yaml.parent().unwrap_or(Path::new("/")).to_owned();
    match dir.parent() {
        Some(parent) if dir.file_name().is_some_and(|n| n == "conf") => (
            parent.to_owned(),
            "the parent of the yaml's conf directory, i.e. CASSANDRA_HOME of a tarball install",
        ),
        _ => (
            dir,
            "the yaml's directory; set $CASSANDRA_HOME if Cassandra runs elsewhere",
        ),
    }
}

/// A hint for a TOML file given where a cassandra.yaml belongs (the ringseal config is TOML).
fn toml_hint(text: &str) -> &'static str {
    if text.parse::<Table>().is_ok_and(|t| !t.is_empty()) {
        "; this is TOML (a ringseal config?): pass the ringseal config with --config and the node's \
         cassandra.yaml with --cassandra-yaml"
    } else {
        ""
    }
}
