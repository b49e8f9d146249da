//! Why a cassandra.yaml cannot be used.

use std::path::PathBuf;

use super::yaml::SyntaxError;

/// Why a cassandra.yaml cannot be used. Every message names the file, and where it applies the key
/// and the line and column, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CassandraYamlError {
    #[error(
        "cassandra.yaml {path}: cannot read: {source} (check the path given to --cassandra-yaml)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cassandra.yaml {path}: {why} (check the path given to --cassandra-yaml)")]
    Unusable {
        path: PathBuf,
        why: crate::files::ReadError,
    },
    #[error(
        "cassandra.yaml {path}: not a text file (invalid UTF-8 at byte {offset}); give the node's \
         cassandra.yaml"
    )]
    NotText { path: PathBuf, offset: usize },
    #[error("cassandra.yaml {path}: not valid YAML: {error} (line {line} column {column}){hint}")]
    Syntax {
        path: PathBuf,
        error: SyntaxError,
        line: usize,
        column: usize,
        hint: &'static str,
    },
    #[error(
        "cassandra.yaml {path}: the file has no settings (it is empty or only comments); give the \
         node's real cassandra.yaml"
    )]
    Empty { path: PathBuf },
    #[error(
        "cassandra.yaml {path}: a second YAML document starts at line {line}; Cassandra reads \
         exactly one, so remove the `---` line and what follows it"
    )]
    MultipleDocuments { path: PathBuf, line: usize },
    #[error(
        "cassandra.yaml {path}: {key}: expected {expected}, found {found} (line {line} column \
         {column}){hint}"
    )]
    Type {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
        line: usize,
        column: usize,
        hint: &'static str,
    },
    #[error(
        "cassandra.yaml {path}: ssl_storage_port: equals storage_port ({port}), but ringseal takes \
         TLS on ssl_storage_port and forwards it to storage_port; give them different ports \
         (Cassandra's defaults are 7000 and 7001) (line {line} column {column})"
    )]
    SamePorts {
        path: PathBuf,
        port: u16,
        line: usize,
        column: usize,
    },
    #[error(
        "cassandra.yaml {path}: listen_interface: is set together with listen_address, which \
         Cassandra refuses (\"Set listen_address OR listen_interface, not both\"); keep one (line \
         {line} column {column})"
    )]
    AddressAndInterface {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error(
        "cassandra.yaml {path}: listen_address: {address} is a wildcard address, which Cassandra \
         refuses; give the node's own IP address (line {line} column {column})"
    )]
    WildcardAddress {
        path: PathBuf,
        address: String,
        line: usize,
        column: usize,
    },
    #[error(
        "cassandra.yaml {path}: server_encryption_options.internode_encryption: {value:?} is not \
         one of none, all, dc, rack (Cassandra spells them in lower case) (line {line} column \
         {column})"
    )]
    InternodeEncryption {
        path: PathBuf,
        value: String,
        line: usize,
        column: usize,
    },
    #[error(
        "cassandra.yaml {path}: server_encryption_options.enable_legacy_ssl_storage_port: is given \
         together with legacy_ssl_storage_port_enabled, its 4.1 name, which Cassandra refuses; keep \
         one of them (line {line} column {column})"
    )]
    LegacyPortTwice {
        path: PathBuf,
        line: usize,
        column: usize,
    },
}
