//! From what a cassandra.yaml says to a ringseal config table, with a note or a warning wherever the
//! two differ. docs/cassandra-yaml.md lists every key and why it maps as it does.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::client_encryption::CEO;
use super::findings::Findings;
use super::options::{
    CassandraYaml, DEFAULT_KEYSTORE, DEFAULT_PASSWORD, DEFAULT_TRUSTSTORE, Listen,
};
use super::server_encryption::{ClientAuth, EncryptionOptions, Factory, SEO};
use super::yaml::Pos;
use crate::tls::suites::{self, SuiteError};

/// Where the transparent outbound listener takes the node's redirected connections.
const OUTBOUND_LISTEN: &str = "127.0.0.1:7002";

/// The ringseal table and what was found to say about it.
pub(super) struct Mapped {
    pub(super) table: Table,
    pub(super) findings: Findings,
    /// What completes a ringseal `[[inbound]]` named "client" (see [`super::client_listener`]).
    pub(super) client_template: Option<Table>,
}

pub(super) struct Mapper {
    /// What Cassandra's relative paths are relative to, and why (for the note).
    pub(super) base: PathBuf,
    pub(super) base_why: &'static str,
    /// The sections in which relative paths were resolved, for the note.
    pub(super) relative_resolved: Vec<&'static str>,
    /// The section being mapped.
    pub(super) section: &'static str,
    pub(super) findings: Findings,
}

/// What the `inbound` and `outbound` listeners need of the client-authentication settings.
struct Verification {
    /// `tls.require_client_auth` as written: `true`, `false` or `"optional"`.
    client_auth: Value,
    require_client_auth: bool,
    endpoint_verification: bool,
}

impl Mapper {
    /// The ringseal table for `yaml`.
    pub(super) fn map(mut self, yaml: &CassandraYaml) -> Mapped {
        let seo = &yaml.encryption;
        let mut tls = Table::new();
        self.stores(seo, &mut tls, true);
        self.protocols_and_suites(seo, &mut tls);
        let verification = self.client_auth(seo);
        tls.insert(
            "require_client_auth".into(),
            verification.client_auth.clone(),
        );
        self.internode_encryption(seo, yaml.ssl_storage_port);
        let permissive = seo.optional == Some(true);
        let inbound = self.inbound(yaml, &verification, permissive);
        let outbound = outbound(yaml.ssl_storage_port, &verification);
        self.section = CEO;
        let client = self.client(yaml, &tls);
        if !self.relative_resolved.is_empty() {
            self.findings.note(format!(
                "relative paths in {} are resolved against {} ({}), as Cassandra resolves them \
                 against its working directory",
                self.relative_resolved.join(" and "),
                self.base.display(),
                self.base_why
            ));
        }
        let mut inbound = vec![Value::Table(inbound)];
        inbound.extend(client.listener.map(Value::Table));

        let mut table = Table::new();
        table.insert("cluster_name".into(), yaml.cluster_name.clone().into());
        let mode = if permissive { "permissive" } else { "strict" };
        table.insert("mode".into(), mode.into());
        table.insert("tls".into(), Value::Table(tls));
        table.insert("inbound".into(), Value::Array(inbound));
        table.insert(
            "outbound".into(),
            Value::Array(vec![Value::Table(outbound)]),
        );
        Mapped {
            table,
            findings: self.findings,
            client_template: client.template,
        }
    }

    /// Client authentication and endpoint verification, with a note when they are not strict.
    fn client_auth(&mut self, seo: &EncryptionOptions) -> Verification {
        let client_auth = seo.require_client_auth.unwrap_or(ClientAuth::NotRequired);
        let require_client_auth = client_auth == ClientAuth::Required;
        match client_auth {
            ClientAuth::Required => {}
            ClientAuth::NotRequired => self.findings.note(format!(
                "{SEO}.require_client_auth is false (Cassandra's default): peers without a \
                 certificate are accepted, as by Cassandra; set it to true for mutual TLS"
            )),
            ClientAuth::Optional => self.findings.note(format!(
                "{SEO}.require_client_auth is optional: tls.require_client_auth = \"optional\", \
                 which accepts peers without a certificate and verifies one that is presented"
            )),
        }
        let endpoint_verification = seo.require_endpoint_verification.unwrap_or(false);
        if endpoint_verification && !require_client_auth {
            self.findings.note(format!(
                "{SEO}.require_endpoint_verification: only outbound connections check the peer's \
                 address, because inbound peers need not present a certificate \
                 (require_client_auth is not true); Cassandra does the same"
            ));
        }
        Verification {
            client_auth: match client_auth {
                ClientAuth::Required => true.into(),
                ClientAuth::NotRequired => false.into(),
                ClientAuth::Optional => "optional".into(),
            },
            require_client_auth,
            endpoint_verification,
        }
    }

    /// `inbound[0]`: TLS on ssl_storage_port, forwarded to storage_port, on the listen address.
    fn inbound(
        &mut self,
        yaml: &CassandraYaml,
        verification: &Verification,
        permissive: bool,
    ) -> Table {
        let mut inbound = Table::new();
        let mut non_loopback = None;
        if let Listen::Ip(ip) = yaml.listen {
            let addr = |port: u16| std::net::SocketAddr::new(ip, port).to_string();
            inbound.insert("listen".into(), addr(yaml.ssl_storage_port).into());
            inbound.insert("forward".into(), addr(yaml.storage_port).into());
            if !ip.is_loopback() {
                non_loopback = Some(ip);
            }
        }
        // Cassandra can only check the address in a certificate it asked for.
        inbound.insert(
            "require_endpoint_verification".into(),
            (verification.endpoint_verification && verification.require_client_auth).into(),
        );
        if permissive {
            let mut note = format!(
                "{SEO}.optional is true: mode = \"permissive\", so peers without TLS are still \
                 served during the migration"
            );
            if let Some(ip) = non_loopback {
                inbound.insert("allow_non_loopback_plaintext".into(), true.into());
                note.push_str(&format!(
                    ", and inbound allow_non_loopback_plaintext = true, because Cassandra accepted \
                     that plaintext on {ip}"
                ));
            }
            note.push_str(
                "; switch to mode = \"strict\" once ringseal_connections_total{tls=\"false\"} no \
                 longer grows",
            );
            self.findings.note(note);
        }
        inbound
    }

    /// What `internode_encryption` means next to ringseal: a note for `none`, a warning otherwise.
    fn internode_encryption(&mut self, seo: &EncryptionOptions, ssl_storage_port: u16) {
        let key = format!("{SEO}.internode_encryption");
        let given = seo
            .internode_encryption
            .as_ref()
            .map(|(v, at)| (v.as_str(), *at));
        match given {
            None | Some(("none", _)) => self.findings.note(format!(
                "{key} is none: Cassandra itself sends plaintext, and ringseal encrypts all \
                 internode traffic (that is its job)"
            )),
            Some(("all", at)) => self.findings.warn_at(
                &key,
                at,
                format!(
                    "\"all\": Cassandra still encrypts internode traffic itself, which cannot \
                     work behind ringseal (3.x binds ssl_storage_port {ssl_storage_port}, the port \
                     ringseal's inbound listener takes; 4.0+ sends TLS into ringseal's outbound \
                     listener and, without optional: true, refuses the plaintext ringseal forwards \
                     to storage_port); ringseal encrypts all internode traffic, so set \
                     internode_encryption: none in cassandra.yaml when ringseal takes over"
                ),
            ),
            Some((scope, at)) => self.findings.warn_at(
                &key,
                at,
                format!(
                    "{scope:?}: ringseal encrypts all internode traffic, also between nodes in the \
                     same {}; set internode_encryption: none in cassandra.yaml when ringseal takes \
                     over (Cassandra's own TLS cannot run behind ringseal)",
                    if scope == "dc" { "datacenter" } else { "rack" }
                ),
            ),
        }
    }

    /// An absolute path: relative ones are resolved as Cassandra would, against its working
    /// directory.
    fn resolve(&mut self, path: &str) -> String {
        let p = Path::new(path);
        if p.is_absolute() {
            return path.to_owned();
        }
        if !self.relative_resolved.contains(&self.section) {
            self.relative_resolved.push(self.section);
        }
        self.base.join(p).to_string_lossy().into_owned()
    }
}

/// `outbound[0]`: the transparent listener fed by `ringseal rules`, dialing peers' ssl_storage_port.
fn outbound(ssl_storage_port: u16, verification: &Verification) -> Table {
    let mut outbound = Table::new();
    outbound.insert("listen".into(), OUTBOUND_LISTEN.into());
    outbound.insert("transparent".into(), true.into());
    outbound.insert("tls_port".into(), i64::from(ssl_storage_port).into());
    outbound.insert(
        "require_endpoint_verification".into(),
        verification.endpoint_verification.into(),
    );
    outbound
}

impl Mapper {
    /// The keystore, truststore (unless `with_trust` is false) and outbound keystore: paths,
    /// passwords (or password files), types.
    pub(super) fn stores(&mut self, seo: &EncryptionOptions, tls: &mut Table, with_trust: bool) {
        let pem = seo.factory == Factory::Pem;
        let (keystore_type, truststore_type) = self.store_types(seo, pem);
        let keystore_password = self.password(
            seo.section,
            "keystore",
            seo.keystore_password.clone(),
            seo.keystore_password_file.clone(),
            pem,
        );
        if !seo.inline_key {
            let keystore = self.resolve(seo.keystore.as_deref().unwrap_or(DEFAULT_KEYSTORE));
            tls.insert("keystore".into(), Value::String(keystore));
            insert_password(tls, "keystore", &keystore_password);
            if let Some(ty) = keystore_type {
                tls.insert("keystore_type".into(), ty.into());
            }
        }
        if !seo.inline_trust && with_trust {
            self.truststore(seo, truststore_type, tls);
        }
        self.outbound_keystore(seo, keystore_password, keystore_type, tls);
    }

    /// The types of the keystore and the truststore: one `store_type` for both (Apache), or DSE's
    /// per-store spellings; PEM for both with PEMBasedSslContextFactory.
    fn store_types(
        &mut self,
        seo: &EncryptionOptions,
        pem: bool,
    ) -> (Option<&'static str>, Option<&'static str>) {
        if pem {
            if let Some((name, _)) = &seo.store_type
                && store_type_name(name) != Some("pem")
            {
                self.findings.note(format!(
                    "{}.store_type {name:?} is ignored with PEMBasedSslContextFactory, as in \
                     Cassandra: the stores are PEM files",
                    seo.section
                ));
            }
            return (Some("pem"), Some("pem"));
        }
        let common = match (&seo.keystore_type, &seo.truststore_type, &seo.store_type) {
            (Some(_), Some(_), _) | (_, _, None) => Some("jks"),
            (_, _, Some(given)) => self.store_type(seo.section, "store_type", given),
        };
        let keystore_type = match &seo.keystore_type {
            Some(given) => self.store_type(seo.section, "keystore_type", given),
            None => common,
        };
        let truststore_type = match &seo.truststore_type {
            Some(given) => self.store_type(seo.section, "truststore_type", given),
            None => common,
        };
        (keystore_type, truststore_type)
    }

    fn truststore(
        &mut self,
        seo: &EncryptionOptions,
        truststore_type: Option<&'static str>,
        tls: &mut Table,
    ) {
        let truststore = self.resolve(seo.truststore.as_deref().unwrap_or(DEFAULT_TRUSTSTORE));
        tls.insert("truststore".into(), Value::String(truststore));
        if truststore_type == Some("pem") {
            if seo.truststore_password.is_some() || seo.truststore_password_file.is_some() {
                self.findings.note(format!(
                    "{}.truststore_password is ignored for a PEM truststore, as in Cassandra",
                    seo.section
                ));
            }
        } else {
            let password = self.password(
                seo.section,
                "truststore",
                seo.truststore_password.clone(),
                seo.truststore_password_file.clone(),
                false,
            );
            insert_password(tls, "truststore", &password);
        }
        if let Some(ty) = truststore_type {
            tls.insert("truststore_type".into(), ty.into());
        }
    }

    /// The outbound identity (5.0+): defaults to the keystore and its password, as in Cassandra.
    fn outbound_keystore(
        &mut self,
        seo: &EncryptionOptions,
        keystore_password: Option<(&'static str, Value)>,
        keystore_type: Option<&'static str>,
        tls: &mut Table,
    ) {
        let given = seo.outbound_keystore.is_some()
            || seo.outbound_keystore_password.is_some()
            || seo.outbound_keystore_password_file.is_some();
        if !given || seo.inline_outbound_key {
            return;
        }
        let path = seo
            .outbound_keystore
            .as_deref()
            .or(seo.keystore.as_deref())
            .unwrap_or(DEFAULT_KEYSTORE);
        let path = self.resolve(path);
        tls.insert("outbound_keystore".into(), Value::String(path));
        let pem = seo.factory == Factory::Pem;
        let password = match (
            seo.outbound_keystore_password.clone(),
            seo.outbound_keystore_password_file.clone(),
        ) {
            (None, None) => keystore_password,
            (value, file) => self.password(seo.section, "outbound_keystore", value, file, pem),
        };
        insert_password(tls, "outbound_keystore", &password);
        if let Some(ty) = keystore_type {
            tls.insert("outbound_keystore_type".into(), ty.into());
        }
    }

    /// `tls.<store>_password` or `tls.<store>_password_file`, with Cassandra's precedence and
    /// default. Returns the ringseal key suffix and value to insert.
    fn password(
        &mut self,
        section: &str,
        store: &str,
        value: Option<String>,
        file: Option<String>,
        pem: bool,
    ) -> Option<(&'static str, Value)> {
        match (value, file) {
            (Some(value), file) => {
                if file.is_some() {
                    self.findings.note(format!(
                        "{section}.{store}_password_file is ignored because {store}_password is set, \
                         as in Cassandra"
                    ));
                }
                Some(("_password", value.into()))
            }
            (None, Some(file)) => Some(("_password_file", self.resolve(&file).into())),
            (None, None) if pem => None,
            (None, None) => {
                self.findings.note(format!(
                    "{section}.{store}_password is not set: Cassandra's old default \
                     {DEFAULT_PASSWORD:?} is used (from 4.1.2 Cassandra has no default)"
                ));
                Some(("_password", DEFAULT_PASSWORD.into()))
            }
        }
    }

    /// A store type ringseal reads, or a warning naming the key.
    fn store_type(
        &mut self,
        section: &str,
        key: &str,
        (name, at): &(String, Pos),
    ) -> Option<&'static str> {
        let ty = store_type_name(name);
        if ty.is_none() {
            self.findings.warn_at(
                &format!("{section}.{key}"),
                *at,
                format!(
                    "{name:?}: ringseal reads PKCS12, JKS and PEM stores only; convert the store \
                     (keytool -importkeystore -deststoretype PKCS12) and set keystore_type and \
                     truststore_type in the ringseal config's {}",
                    if section == SEO {
                        "[tls]"
                    } else {
                        "client listener's [inbound.tls]"
                    }
                ),
            );
        }
        ty
    }
}

/// Java's KeyStore types (case-insensitive) that ringseal reads.
fn store_type_name(name: &str) -> Option<&'static str> {
    match name.trim().to_ascii_lowercase().as_str() {
        "jks" => Some("jks"),
        "pkcs12" => Some("pkcs12"),
        "pem" => Some("pem"),
        _ => None,
    }
}

fn insert_password(tls: &mut Table, store: &str, password: &Option<(&'static str, Value)>) {
    if let Some((suffix, value)) = password {
        tls.insert(format!("{store}{suffix}"), value.clone());
    }
}

impl Mapper {
    /// `tls.protocols` and `tls.cipher_suites`: what ringseal accepts of them, consistent together.
    pub(super) fn protocols_and_suites(&mut self, seo: &EncryptionOptions, tls: &mut Table) {
        let section = seo.section;
        let protocols = self.protocols(
            section,
            seo.protocol.as_ref(),
            seo.accepted_protocols.as_ref(),
        );
        let (protocols, suites) = match &seo.cipher_suites {
            Some((names, at)) => {
                let suites = self.cipher_suites(section, names, *at);
                self.protocols_for_suites(section, protocols, suites, *at)
            }
            None => (protocols, Vec::new()),
        };
        if !protocols.is_empty() {
            tls.insert("protocols".into(), strings_value(&protocols));
        }
        if !suites.is_empty() {
            tls.insert("cipher_suites".into(), strings_value(&suites));
        }
    }

    /// Cassandra 4.0+'s combination of `protocol` and `accepted_protocols` (3.x has only
    /// `protocol`), minus what ringseal refuses. Empty: the defaults (TLS 1.2 and 1.3).
    fn protocols(
        &mut self,
        section: &str,
        protocol: Option<&(String, Pos)>,
        accepted: Option<&(Vec<String>, Pos)>,
    ) -> Vec<String> {
        let specific = protocol.filter(|(p, _)| !p.eq_ignore_ascii_case("TLS"));
        let names: Vec<(String, &'static str, Pos)> = match (accepted, specific) {
            (Some((list, at)), p) => {
                let mut names: Vec<_> = list
                    .iter()
                    .map(|n| (n.clone(), "accepted_protocols", *at))
                    .collect();
                if let Some((p, pat)) = p
                    && !list.iter().any(|a| a.eq_ignore_ascii_case(p))
                {
                    names.push((p.clone(), "protocol", *pat));
                }
                names
            }
            (None, Some((p, at))) => vec![(p.clone(), "protocol", *at)],
            (None, None) => Vec::new(),
        };
        let mut kept: Vec<String> = Vec::new();
        let mut every_version = false;
        for (name, key, at) in &names {
            match suites::parse_protocols(std::slice::from_ref(name)) {
                Ok(_) if name.trim().eq_ignore_ascii_case("TLS") => every_version = true,
                Ok(_) => {
                    if !kept.iter().any(|k| k.eq_ignore_ascii_case(name.trim())) {
                        kept.push(name.trim().to_owned());
                    }
                }
                Err(e) => self.findings.warn_at(
                    &format!("{section}.{key}"),
                    *at,
                    format!("left out: {e}"),
                ),
            }
        }
        if every_version {
            return Vec::new();
        }
        if kept.is_empty()
            && let Some((_, key, at)) = names.first()
        {
            self.findings.warn_at(
                &format!("{section}.{key}"),
                *at,
                "no protocol ringseal supports is left; TLSv1.2 and TLSv1.3 are used".into(),
            );
        }
        kept
    }

    /// `cipher_suites` minus the suites ringseal refuses, each with the reason and replacement.
    fn cipher_suites(&mut self, section: &str, names: &[String], at: Pos) -> Vec<String> {
        let key = format!("{section}.cipher_suites");
        let provider = crate::tls::provider();
        let mut kept: Vec<String> = Vec::new();
        for name in names {
            match suites::parse_cipher_suites(
                std::slice::from_ref(name),
                rustls::ALL_VERSIONS,
                &provider,
            ) {
                // One suite never covers both versions: the name itself resolved.
                Ok(_) | Err(SuiteError::NoSuiteForVersion { .. } | SuiteError::NoSuites) => {
                    kept.push(name.trim().to_owned());
                }
                Err(e) => self.findings.warn_at(&key, at, format!("left out: {e}")),
            }
        }
        if kept.is_empty() && !names.is_empty() {
            self.findings.warn_at(
                &key,
                at,
                "none of the listed suites can be used; ringseal's default suites are used".into(),
            );
        }
        kept
    }

    /// Java enables a protocol version only with a cipher suite for it: do the same rather than
    /// derive a config that ringseal refuses. Returns the protocols and suites to write.
    fn protocols_for_suites(
        &mut self,
        section: &str,
        protocols: Vec<String>,
        suites: Vec<String>,
        at: Pos,
    ) -> (Vec<String>, Vec<String>) {
        if suites.is_empty() {
            return (protocols, suites);
        }
        let Ok(mut versions) = suites::parse_protocols(&protocols) else {
            return (protocols, suites);
        };
        let provider = crate::tls::provider();
        let mut turned_off = Vec::new();
        while let Err(SuiteError::NoSuiteForVersion { version, .. }) =
            suites::parse_cipher_suites(&suites, &versions, &provider)
        {
            versions.retain(|v| suites::protocol_name(v.version) != version);
            turned_off.push(version);
        }
        if turned_off.is_empty() {
            return (protocols, suites);
        }
        if versions.is_empty() {
            self.findings.warn_at(
                &format!("{section}.cipher_suites"),
                at,
                format!(
                    "no listed suite can be used with {}; ringseal's default suites are used",
                    turned_off.join(" or ")
                ),
            );
            return (protocols, Vec::new());
        }
        let left: Vec<String> = versions
            .iter()
            .map(|v| suites::protocol_name(v.version).to_owned())
            .collect();
        self.findings.note(format!(
            "{section}.cipher_suites names no suite for {}, so {} off, as in Java: protocols = {left:?}",
            turned_off.join(" or "),
            if turned_off.len() == 1 { "it is" } else { "they are" },
        ));
        (left, suites)
    }
}

fn strings_value(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.clone())).collect())
}
