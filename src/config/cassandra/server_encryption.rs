//! `server_encryption_options` as Cassandra 3.11 to trunk read it: every key is type-checked, then
//! kept in [`EncryptionOptions`] or, when ringseal has no use for it, named in a warning. The keys both
//! sections share (stores, passwords, protocols, suites, client authentication, the SSL context
//! factory) are read here for `client_encryption_options` too ([`Reader::common_option`]).

use super::error::CassandraYamlError;
use super::values::{EXPECTED_MAPPING, Reader};
use super::yaml::{Entries, Entry, Kind, Node, Pos, last_wins};

pub(super) const SEO: &str = "server_encryption_options";
const PEM_FACTORY: &str = "org.apache.cassandra.security.PEMBasedSslContextFactory";
const DEFAULT_FACTORY: &str = "org.apache.cassandra.security.DefaultSslContextFactory";

/// Every `server_encryption_options` key of Cassandra 3.11 to trunk (and DataStax Enterprise's
/// per-store types): set to null they mean "the default"; any other key is warned about.
const SEO_KEYS: &[&str] = &[
    "internode_encryption",
    "optional",
    "enabled",
    "enable_legacy_ssl_storage_port",
    "legacy_ssl_storage_port_enabled",
    "keystore",
    "keystore_password",
    "keystore_password_file",
    "truststore",
    "truststore_password",
    "truststore_password_file",
    "outbound_keystore",
    "outbound_keystore_password",
    "outbound_keystore_password_file",
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

/// The parameters of PEMBasedSslContextFactory; set to null they mean "not given".
const PEM_PARAMETERS: [&str; 5] = [
    "private_key",
    "private_key_password",
    "trusted_certificates",
    "outbound_private_key",
    "outbound_private_key_password",
];

/// `server_encryption_options` or `client_encryption_options` as read. `None`: not set (Cassandra's
/// default).
#[derive(Default)]
pub(super) struct EncryptionOptions {
    /// The section's name, for messages.
    pub(super) section: &'static str,
    /// Where its TLS settings go in the ringseal config, for messages ("tls").
    pub(super) tls_key: &'static str,
    /// `enabled` (client_encryption_options only; the server's is warned about), and where it is.
    pub(super) enabled: Option<(bool, Pos)>,
    pub(super) internode_encryption: Option<(String, Pos)>,
    pub(super) optional: Option<bool>,
    pub(super) keystore: Option<String>,
    pub(super) keystore_password: Option<String>,
    pub(super) keystore_password_file: Option<String>,
    pub(super) truststore: Option<String>,
    pub(super) truststore_password: Option<String>,
    pub(super) truststore_password_file: Option<String>,
    pub(super) outbound_keystore: Option<String>,
    pub(super) outbound_keystore_password: Option<String>,
    pub(super) outbound_keystore_password_file: Option<String>,
    pub(super) store_type: Option<(String, Pos)>,
    pub(super) keystore_type: Option<(String, Pos)>,
    pub(super) truststore_type: Option<(String, Pos)>,
    pub(super) protocol: Option<(String, Pos)>,
    pub(super) accepted_protocols: Option<(Vec<String>, Pos)>,
    pub(super) cipher_suites: Option<(Vec<String>, Pos)>,
    pub(super) require_client_auth: Option<ClientAuth>,
    pub(super) require_endpoint_verification: Option<bool>,
    pub(super) factory: Factory,
    /// Inline PEM given as factory parameters: the file paths of these stores are not used.
    pub(super) inline_key: bool,
    pub(super) inline_trust: bool,
    pub(super) inline_outbound_key: bool,
}

/// How Cassandra builds its SSL contexts (`ssl_context_factory`, 4.1+).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) enum Factory {
    #[default]
    Default,
    Pem,
    Custom(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientAuth {
    Required,
    NotRequired,
    /// trunk: verify a certificate if the peer sends one.
    Optional,
}

impl EncryptionOptions {
    pub(super) fn new(section: &'static str, tls_key: &'static str) -> Self {
        Self {
            section,
            tls_key,
            ..Self::default()
        }
    }
}

impl Reader {
    /// The entries of an encryption options section, duplicates and odd keys warned about.
    pub(super) fn section_entries<'n, 'a>(
        &mut self,
        section: &str,
        entries: &'n Entries<'a>,
    ) -> Vec<Entry<'n, 'a>> {
        let keyed = last_wins(entries);
        for (name, lines) in &keyed.duplicates {
            self.findings.duplicate(&format!("{section}.{name}"), lines);
        }
        for key in keyed.odd {
            let why = "a key that is not a plain name; ignored".into();
            self.findings.warn_at(section, key.at, why);
        }
        keyed.entries
    }

    /// Reads `server_encryption_options`: every key is type-checked, then kept or warned about.
    pub(super) fn server_encryption_options(
        &mut self,
        entries: &Entries<'_>,
        ssl_storage_port: u16,
    ) -> Result<EncryptionOptions, CassandraYamlError> {
        let mut seo = EncryptionOptions::new(SEO, "tls");
        let mut legacy: Vec<Pos> = Vec::new();
        for (name, key_node, value) in self.section_entries(SEO, entries) {
            if value.is_null() && SEO_KEYS.contains(&name) {
                continue; // not set: Cassandra's default
            }
            if matches!(
                name,
                "enable_legacy_ssl_storage_port" | "legacy_ssl_storage_port_enabled"
            ) {
                legacy.push(key_node.at);
            }
            let option = SeoEntry {
                name,
                key: &format!("{SEO}.{name}"),
                key_at: key_node.at,
                value,
            };
            self.encryption_option(&mut seo, &option, ssl_storage_port)?;
        }
        if let [_, second] = legacy[..] {
            return Err(CassandraYamlError::LegacyPortTwice {
                path: self.path.clone(),
                line: second.line,
                column: second.column,
            });
        }
        Ok(seo)
    }

    /// One key of `server_encryption_options` into `seo`, or a warning.
    fn encryption_option(
        &mut self,
        seo: &mut EncryptionOptions,
        option: &SeoEntry<'_, '_, '_>,
        ssl_storage_port: u16,
    ) -> Result<(), CassandraYamlError> {
        if self.common_option(seo, option)? {
            return Ok(());
        }
        let SeoEntry {
            name, key, value, ..
        } = *option;
        let at = value.at;
        match name {
            "internode_encryption" => {
                seo.internode_encryption = Some((self.internode_encryption(key, value)?, at));
            }
            "outbound_keystore" => seo.outbound_keystore = self.string(key, value)?,
            "outbound_keystore_password" => {
                seo.outbound_keystore_password = self.string(key, value)?;
            }
            "outbound_keystore_password_file" => {
                seo.outbound_keystore_password_file = self.string(key, value)?;
            }
            _ => self.ignored_option(option, ssl_storage_port)?,
        }
        Ok(())
    }

    /// A key both encryption sections have, read into `eo`: false when `option` is not one.
    pub(super) fn common_option(
        &mut self,
        eo: &mut EncryptionOptions,
        option: &SeoEntry<'_, '_, '_>,
    ) -> Result<bool, CassandraYamlError> {
        let SeoEntry {
            name, key, value, ..
        } = *option;
        let seo = eo;
        let at = value.at;
        let positioned = |s: Option<String>| s.map(|s| (s, at));
        match name {
            "optional" => seo.optional = self.boolean(key, value)?,
            "keystore" => seo.keystore = self.string(key, value)?,
            "keystore_password" => seo.keystore_password = self.string(key, value)?,
            "keystore_password_file" => seo.keystore_password_file = self.string(key, value)?,
            "truststore" => seo.truststore = self.string(key, value)?,
            "truststore_password" => seo.truststore_password = self.string(key, value)?,
            "truststore_password_file" => seo.truststore_password_file = self.string(key, value)?,
            "store_type" => seo.store_type = positioned(self.string(key, value)?),
            "keystore_type" => seo.keystore_type = positioned(self.string(key, value)?),
            "truststore_type" => seo.truststore_type = positioned(self.string(key, value)?),
            "protocol" => seo.protocol = positioned(self.string(key, value)?),
            "accepted_protocols" => {
                seo.accepted_protocols = self.strings(key, value)?.map(|l| (l, at));
            }
            "cipher_suites" => seo.cipher_suites = self.strings(key, value)?.map(|l| (l, at)),
            "require_client_auth" => seo.require_client_auth = self.client_auth(key, value)?,
            "require_endpoint_verification" => {
                seo.require_endpoint_verification = self.boolean(key, value)?;
            }
            "ssl_context_factory" => self.ssl_context_factory(key, value, seo)?,
            _ => return self.ignored_common(option),
        }
        Ok(true)
    }

    /// A key both sections have that ringseal does not take: a warning saying why, when its value
    /// asks for something. False when `option` is not one of them.
    pub(super) fn ignored_common(
        &mut self,
        option: &SeoEntry<'_, '_, '_>,
    ) -> Result<bool, CassandraYamlError> {
        let SeoEntry {
            name, key, value, ..
        } = *option;
        let why = match name {
            "algorithm" => {
                let v = self.string(key, value)?.unwrap_or_default();
                format!(
                    "{v:?} selects Java's key and trust manager implementation; ignored: ringseal \
                     verifies certificate chains with webpki"
                )
            }
            "max_certificate_validity_period" => {
                self.string(key, value)?;
                "ringseal does not limit how long peer certificates may be valid; ignored".into()
            }
            "certificate_validity_warn_threshold" => {
                self.string(key, value)?;
                "ringseal warns about its own certificate 30, 14, 7 and 1 days before it expires \
                 and exports every certificate's expiry as a metric; ignored"
                    .into()
            }
            _ => return Ok(false),
        };
        self.findings.warn_at(key, value.at, why);
        Ok(true)
    }

    /// A key of `server_encryption_options` that ringseal does not take: a warning saying why,
    /// when its value asks for something.
    fn ignored_option(
        &mut self,
        option: &SeoEntry<'_, '_, '_>,
        ssl_storage_port: u16,
    ) -> Result<(), CassandraYamlError> {
        let SeoEntry {
            name,
            key,
            key_at,
            value,
        } = *option;
        let at = value.at;
        let why = match name {
            "enabled" => {
                if self.boolean(key, value)? != Some(true) {
                    return Ok(());
                }
                "true has no effect on internode traffic, in Cassandra as in ringseal \
                 (internode_encryption decides); ignored"
                    .to_owned()
            }
            "enable_legacy_ssl_storage_port" | "legacy_ssl_storage_port_enabled" => {
                if self.boolean(key, value)? != Some(true) {
                    return Ok(());
                }
                format!(
                    "true: Cassandra itself listens with TLS on ssl_storage_port \
                     {ssl_storage_port}, the port ringseal's inbound listener takes; set it to false"
                )
            }
            _ => {
                let why = "not a server_encryption_options setting of any Cassandra version \
                           (Cassandra refuses unknown keys); ignored";
                self.findings.warn_at(key, key_at, why.into());
                return Ok(());
            }
        };
        self.findings.warn_at(key, at, why);
        Ok(())
    }

    fn internode_encryption(
        &self,
        key: &str,
        value: &Node<'_>,
    ) -> Result<String, CassandraYamlError> {
        let v = self.string(key, value)?.unwrap_or_default();
        if matches!(v.as_str(), "none" | "all" | "dc" | "rack") {
            return Ok(v);
        }
        Err(CassandraYamlError::InternodeEncryption {
            path: self.path.clone(),
            value: v,
            line: value.at.line,
            column: value.at.column,
        })
    }

    /// A boolean, or trunk's `required` / `not_required` / `optional`.
    fn client_auth(
        &self,
        key: &str,
        node: &Node<'_>,
    ) -> Result<Option<ClientAuth>, CassandraYamlError> {
        match node.scalar().map(str::to_ascii_lowercase).as_deref() {
            Some("required") => return Ok(Some(ClientAuth::Required)),
            Some("not_required") => return Ok(Some(ClientAuth::NotRequired)),
            Some("optional") => return Ok(Some(ClientAuth::Optional)),
            _ => {}
        }
        match self.boolean(key, node) {
            Ok(b) => Ok(b.map(|b| {
                if b {
                    ClientAuth::Required
                } else {
                    ClientAuth::NotRequired
                }
            })),
            Err(_) => Err(self.type_error(
                key,
                "a boolean (or \"optional\", Cassandra after 5.0)",
                node,
                "",
            )),
        }
    }

    /// `ssl_context_factory: {class_name, parameters}` (4.1+).
    fn ssl_context_factory(
        &mut self,
        key: &str,
        value: &Node<'_>,
        seo: &mut EncryptionOptions,
    ) -> Result<(), CassandraYamlError> {
        let Kind::Map(entries) = &value.kind else {
            return Err(self.type_error(key, EXPECTED_MAPPING, value, ""));
        };
        let keyed = last_wins(entries);
        for (name, lines) in &keyed.duplicates {
            self.findings.duplicate(&format!("{key}.{name}"), lines);
        }
        let mut parameters = None;
        for (name, key_node, v) in keyed.entries {
            let sub = format!("{key}.{name}");
            match name {
                "class_name" => seo.factory = self.factory_class(&sub, v, seo.tls_key)?,
                "parameters" => parameters = Some((sub, v)),
                _ => self.findings.warn_at(
                    &sub,
                    key_node.at,
                    "not a setting of ssl_context_factory (class_name, parameters); ignored".into(),
                ),
            }
        }
        match parameters {
            Some((sub, params)) if !params.is_null() => {
                let Kind::Map(entries) = &params.kind else {
                    return Err(self.type_error(&sub, EXPECTED_MAPPING, params, ""));
                };
                for (name, key_node, v) in last_wins(entries).entries {
                    let param = format!("{sub}.{name}");
                    self.factory_parameter(seo, name, &param, key_node.at, v)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `ssl_context_factory.class_name`: a factory other than Cassandra's two is warned about.
    fn factory_class(
        &mut self,
        key: &str,
        v: &Node<'_>,
        tls_key: &str,
    ) -> Result<Factory, CassandraYamlError> {
        let class = self.string(key, v)?.unwrap_or_default();
        let full = if class.contains('.') {
            class.clone()
        } else {
            format!("org.apache.cassandra.security.{class}")
        };
        Ok(match full.as_str() {
            PEM_FACTORY => Factory::Pem,
            DEFAULT_FACTORY | "" => Factory::Default,
            _ => {
                self.findings.warn_at(
                    key,
                    v.at,
                    format!(
                        "{class:?}: ringseal cannot run Cassandra's SSL context factories; the \
                         keystore and truststore are read as files, so set {tls}.keystore and \
                         {tls}.truststore in the ringseal config if this factory loads them from \
                         elsewhere",
                        tls = tls_key
                    ),
                );
                Factory::Custom(class)
            }
        })
    }

    /// One of `ssl_context_factory.parameters`: inline PEM marks its store as not read from a file;
    /// every parameter is warned about, since ringseal takes key material from files only.
    fn factory_parameter(
        &mut self,
        seo: &mut EncryptionOptions,
        name: &str,
        param: &str,
        key_at: Pos,
        v: &Node<'_>,
    ) -> Result<(), CassandraYamlError> {
        if let Factory::Custom(class) = &seo.factory {
            let why = format!("a parameter of {class}, which ringseal cannot run; ignored");
            self.findings.warn_at(param, key_at, why);
            return Ok(());
        }
        let pem = seo.factory == Factory::Pem;
        if v.is_null() && pem && PEM_PARAMETERS.contains(&name) {
            return Ok(());
        }
        let (store, flag) = match name {
            "private_key" if pem => ("keystore", &mut seo.inline_key),
            "trusted_certificates" if pem => ("truststore", &mut seo.inline_trust),
            "outbound_private_key" if pem && seo.section == SEO => {
                ("outbound_keystore", &mut seo.inline_outbound_key)
            }
            "private_key_password" | "outbound_private_key_password" if pem => {
                self.string(param, v)?;
                let why = "ignored: ringseal does not take key material inline (see private_key)";
                self.findings.warn_at(param, key_at, why.into());
                return Ok(());
            }
            _ => {
                let factory = if pem {
                    "PEMBasedSslContextFactory"
                } else {
                    "DefaultSslContextFactory"
                };
                let why = format!("not a parameter of {factory}; ignored");
                self.findings.warn_at(param, key_at, why);
                return Ok(());
            }
        };
        self.string(param, v)?;
        *flag = true;
        self.findings.warn_at(
            param,
            key_at,
            format!(
                "inline PEM material is not read by ringseal; write it to a file and set {}.{store} \
                 to it (type \"pem\") in the ringseal config",
                seo.tls_key
            ),
        );
        Ok(())
    }
}

/// One entry of an encryption options section: its name, its full key for messages, where the key
/// and the value are.
pub(super) struct SeoEntry<'n, 'k, 'a> {
    pub(super) name: &'n str,
    pub(super) key: &'k str,
    pub(super) key_at: Pos,
    pub(super) value: &'n Node<'a>,
}
