//! `client_encryption_options` (CQL clients on the native transport port) as Cassandra 3.11 to trunk
//! read it: the keys it shares with `server_encryption_options` are read by
//! [`Reader::common_option`], `enabled` here; every other key is named in a warning.

use super::error::CassandraYamlError;
use super::server_encryption::{EncryptionOptions, SeoEntry};
use super::values::Reader;
use super::yaml::Entries;

pub(super) const CEO: &str = "client_encryption_options";
/// Where the client listener's TLS settings go in the ringseal config, for messages.
pub(super) const CLIENT_TLS: &str = "client listener's inbound.tls";

/// Every `client_encryption_options` key of Cassandra 3.11 to trunk (and DataStax Enterprise's
/// per-store types): set to null they mean "the default"; any other key is warned about.
const CEO_KEYS: &[&str] = &[
    "enabled",
    "optional",
    "keystore",
    "keystore_password",
    "keystore_password_file",
    "truststore",
    "truststore_password",
    "truststore_password_file",
    "store_type",
    "keystore_type",
    "truststore_type",
    "protocol",
    "accepted_protocols",
    "cipher_suites",
    "require_client_auth",
    "require_endpoint_verification",
    "algorithm",
    "ssl_context_factory",
    "max_certificate_validity_period",
    "certificate_validity_warn_threshold",
];

/// Keys of `server_encryption_options` only: Cassandra refuses them here.
const SERVER_ONLY: &[&str] = &[
    "internode_encryption",
    "outbound_keystore",
    "outbound_keystore_password",
    "outbound_keystore_password_file",
    "enable_legacy_ssl_storage_port",
    "legacy_ssl_storage_port_enabled",
];

impl Reader {
    /// Reads `client_encryption_options`: every key is type-checked, then kept or warned about.
    pub(super) fn client_encryption_options(
        &mut self,
        entries: &Entries<'_>,
    ) -> Result<EncryptionOptions, CassandraYamlError> {
        let mut ceo = EncryptionOptions::new(CEO, CLIENT_TLS);
        for (name, key_node, value) in self.section_entries(CEO, entries) {
            if value.is_null() && CEO_KEYS.contains(&name) {
                continue; // not set: Cassandra's default
            }
            let key = format!("{CEO}.{name}");
            let option = SeoEntry {
                name,
                key: &key,
                key_at: key_node.at,
                value,
            };
            if self.common_option(&mut ceo, &option)? {
                continue;
            }
            if name == "enabled" {
                ceo.enabled = self.boolean(&key, value)?.map(|b| (b, value.at));
                continue;
            }
            let why = if SERVER_ONLY.contains(&name) {
                "a server_encryption_options setting, not one of client_encryption_options \
                 (Cassandra refuses it here); ignored"
            } else {
                "not a client_encryption_options setting of any Cassandra version (Cassandra \
                 refuses unknown keys); ignored"
            };
            self.findings.warn_at(&key, key_node.at, why.into());
        }
        Ok(ceo)
    }
}
