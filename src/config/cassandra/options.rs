//! The top-level cassandra.yaml settings ringseal reads, as Cassandra reads them: its defaults, its
//! refusals, and a warning for what ringseal cannot take (a host name, an interface, a broadcast
//! listener, an authenticator class). Other top-level keys are not ringseal's and are not read.
//!
//! Warnings are made while reading, in file order, so that warnings on one line keep that order.

use std::net::IpAddr;

use super::client_encryption::CEO;
use super::error::CassandraYamlError;
use super::server_encryption::{EncryptionOptions, SEO};
use super::values::{EXPECTED_MAPPING, Reader};
use super::yaml::{Entries, Keyed, Kind, Node, Pos, last_wins};

const DEFAULT_CLUSTER_NAME: &str = "Test Cluster";
const DEFAULT_STORAGE_PORT: u16 = 7000;
const DEFAULT_SSL_STORAGE_PORT: u16 = 7001;
const DEFAULT_NATIVE_PORT: u16 = 9042;
pub(super) const DEFAULT_KEYSTORE: &str = "conf/.keystore";
pub(super) const DEFAULT_TRUSTSTORE: &str = "conf/.truststore";
pub(super) const DEFAULT_PASSWORD: &str = "cassandra";
const ALLOW_ALL_AUTHENTICATOR: &str = "org.apache.cassandra.auth.AllowAllInternodeAuthenticator";

/// Top-level keys read here: a duplicate of one of them is warned about.
const READ_TOP_LEVEL: &[&str] = &[
    "cluster_name",
    "storage_port",
    "ssl_storage_port",
    "listen_address",
    "listen_interface",
    "listen_interface_prefer_ipv6",
    "listen_on_broadcast_address",
    "broadcast_address",
    "internode_authenticator",
    SEO,
    "start_native_transport",
    "native_transport_port",
    "native_transport_port_ssl",
    "rpc_address",
    "rpc_interface",
    "rpc_interface_prefer_ipv6",
    CEO,
];

/// What a cassandra.yaml says about internode traffic, Cassandra's defaults filled in.
pub(super) struct CassandraYaml {
    pub(super) cluster_name: String,
    pub(super) storage_port: u16,
    pub(super) ssl_storage_port: u16,
    pub(super) listen: Listen,
    pub(super) encryption: EncryptionOptions,
    pub(super) native: Native,
}

/// What a cassandra.yaml says about CQL clients (the native transport), Cassandra's defaults filled in.
pub(super) struct Native {
    /// `start_native_transport` when it is false, and where.
    pub(super) not_started: Option<Pos>,
    pub(super) port: u16,
    /// `native_transport_port_ssl`, and where.
    pub(super) port_ssl: Option<(u16, Pos)>,
    pub(super) rpc: Rpc,
    /// `client_encryption_options`; None when the file does not set it.
    pub(super) encryption: Option<EncryptionOptions>,
}

/// The address the native transport binds (`rpc_address` / `rpc_interface`), as written: warnings
/// about it are only given when a client listener needs it.
pub(super) enum Rpc {
    /// An IP address, maybe a wildcard (`localhost` is 127.0.0.1).
    Ip(IpAddr),
    /// Neither is set: Cassandra takes the address of this host's name.
    Absent,
    HostName(String, Pos),
    /// The interface and whether IPv6 is preferred.
    Interface(String, Pos, bool),
    /// Both are set, which Cassandra refuses; where rpc_interface is.
    Both(Pos),
}

/// The address Cassandra listens on.
pub(super) enum Listen {
    /// An IP address (`localhost` and an absent listen_address are 127.0.0.1).
    Ip(IpAddr),
    /// Cannot be derived (host name, interface): the ringseal config must give it.
    Unknown,
}

impl Reader {
    /// Reads the top-level mapping of a cassandra.yaml.
    pub(super) fn read(&mut self, root: &Entries<'_>) -> Result<CassandraYaml, CassandraYamlError> {
        let top = last_wins(root);
        for (name, lines) in &top.duplicates {
            if READ_TOP_LEVEL.contains(name) {
                self.findings.duplicate(name, lines);
            }
        }
        let cluster_name = self.cluster_name(top.get("cluster_name"))?;
        let (storage_port, ssl_storage_port) =
            self.ports(top.get("storage_port"), top.get("ssl_storage_port"))?;
        let listen = self.listen(
            top.get("listen_address"),
            top.get("listen_interface"),
            top.get("listen_interface_prefer_ipv6"),
        )?;
        self.broadcast(
            top.get("listen_on_broadcast_address"),
            top.get("broadcast_address"),
            ssl_storage_port,
        )?;
        self.authenticator(top.get("internode_authenticator"))?;
        let encryption = self.encryption_options(top.get(SEO), ssl_storage_port)?;
        let native = self.native(&top)?;
        Ok(CassandraYaml {
            cluster_name,
            storage_port,
            ssl_storage_port,
            listen,
            encryption,
            native,
        })
    }

    /// The native transport settings and `client_encryption_options`.
    fn native(&mut self, top: &Keyed<'_, '_>) -> Result<Native, CassandraYamlError> {
        let start = top.get("start_native_transport");
        let not_started = match start {
            Some(node) if self.boolean("start_native_transport", node)? == Some(false) => {
                Some(node.at)
            }
            _ => None,
        };
        let port = self
            .port("native_transport_port", top.get("native_transport_port"))?
            .unwrap_or(DEFAULT_NATIVE_PORT);
        let ssl = top.get("native_transport_port_ssl");
        let port_ssl = self
            .port("native_transport_port_ssl", ssl)?
            .zip(ssl.map(|n| n.at));
        let rpc = self.rpc(
            top.get("rpc_address"),
            top.get("rpc_interface"),
            top.get("rpc_interface_prefer_ipv6"),
        )?;
        let encryption = match top.get(CEO) {
            Some(node) if !node.is_null() => {
                let Kind::Map(entries) = &node.kind else {
                    return Err(self.type_error(CEO, EXPECTED_MAPPING, node, ""));
                };
                Some(self.client_encryption_options(entries)?)
            }
            _ => None,
        };
        Ok(Native {
            not_started,
            port,
            port_ssl,
            rpc,
            encryption,
        })
    }

    fn rpc(
        &self,
        address: Option<&Node<'_>>,
        interface: Option<&Node<'_>>,
        prefer_ipv6: Option<&Node<'_>>,
    ) -> Result<Rpc, CassandraYamlError> {
        let address = match address {
            Some(node) => self
                .string("rpc_address", node)?
                .map(|a| (a.trim().to_owned(), node.at)),
            None => None,
        };
        let interface = match interface {
            Some(node) => self.string("rpc_interface", node)?.map(|i| (i, node.at)),
            None => None,
        };
        let prefer_ipv6 = self.boolean_opt("rpc_interface_prefer_ipv6", prefer_ipv6)? == Some(true);
        Ok(match (address, interface) {
            (Some(_), Some((_, at))) => Rpc::Both(at),
            (None, Some((interface, at))) => Rpc::Interface(interface, at, prefer_ipv6),
            (None, None) => Rpc::Absent,
            (Some((address, _)), None) if address.eq_ignore_ascii_case("localhost") => {
                Rpc::Ip(IpAddr::from([127, 0, 0, 1]))
            }
            (Some((address, at)), None) => match address.parse::<IpAddr>() {
                Ok(ip) => Rpc::Ip(ip),
                Err(_) => Rpc::HostName(address, at),
            },
        })
    }

    fn cluster_name(&mut self, node: Option<&Node<'_>>) -> Result<String, CassandraYamlError> {
        if let Some(name) = self.string_opt("cluster_name", node)? {
            return Ok(name);
        }
        self.findings.note(format!(
            "cluster_name is not set: Cassandra's default {DEFAULT_CLUSTER_NAME:?} is used"
        ));
        Ok(DEFAULT_CLUSTER_NAME.to_owned())
    }

    /// `storage_port` and `ssl_storage_port`, which ringseal needs to differ.
    fn ports(
        &self,
        storage: Option<&Node<'_>>,
        ssl: Option<&Node<'_>>,
    ) -> Result<(u16, u16), CassandraYamlError> {
        let storage_port = self
            .port("storage_port", storage)?
            .unwrap_or(DEFAULT_STORAGE_PORT);
        let ssl_storage_port = self
            .port("ssl_storage_port", ssl)?
            .unwrap_or(DEFAULT_SSL_STORAGE_PORT);
        if ssl_storage_port == storage_port {
            let at = ssl.map_or(Pos::START, |n| n.at);
            return Err(CassandraYamlError::SamePorts {
                path: self.path.clone(),
                port: storage_port,
                line: at.line,
                column: at.column,
            });
        }
        Ok((storage_port, ssl_storage_port))
    }

    /// `server_encryption_options`, or Cassandra's defaults when it is not set.
    fn encryption_options(
        &mut self,
        node: Option<&Node<'_>>,
        ssl_storage_port: u16,
    ) -> Result<EncryptionOptions, CassandraYamlError> {
        match node {
            Some(node) if !node.is_null() => {
                let Kind::Map(entries) = &node.kind else {
                    return Err(self.type_error(SEO, EXPECTED_MAPPING, node, ""));
                };
                self.server_encryption_options(entries, ssl_storage_port)
            }
            _ => {
                self.findings.note(format!(
                    "{SEO} is not set: Cassandra's defaults are used (keystore {DEFAULT_KEYSTORE}, \
                     truststore {DEFAULT_TRUSTSTORE}, password {DEFAULT_PASSWORD:?}, no client \
                     authentication)"
                ));
                Ok(EncryptionOptions::new(SEO, "tls"))
            }
        }
    }

    fn listen(
        &mut self,
        address: Option<&Node<'_>>,
        interface: Option<&Node<'_>>,
        prefer_ipv6: Option<&Node<'_>>,
    ) -> Result<Listen, CassandraYamlError> {
        let address = match address {
            Some(node) => self
                .string("listen_address", node)?
                .map(|a| (a.trim().to_owned(), node.at)),
            None => None,
        };
        let interface = match interface {
            Some(node) => self.string("listen_interface", node)?.map(|i| (i, node.at)),
            None => None,
        };
        let prefer_ipv6 = self.boolean_opt("listen_interface_prefer_ipv6", prefer_ipv6)?;
        match (address, interface) {
            (Some(_), Some((_, at))) => Err(CassandraYamlError::AddressAndInterface {
                path: self.path.clone(),
                line: at.line,
                column: at.column,
            }),
            (None, Some((interface, at))) => {
                self.listen_interface(&interface, at, prefer_ipv6 == Some(true));
                Ok(Listen::Unknown)
            }
            (None, None) => {
                self.findings.warn_file(
                    "listen_address: not set, so Cassandra listens on the address of this host's \
                     name (InetAddress.getLocalHost()), which ringseal does not look up; 127.0.0.1 \
                     is assumed: give [[inbound]] listen and forward with that address in the \
                     ringseal config"
                        .into(),
                );
                Ok(Listen::Ip(IpAddr::from([127, 0, 0, 1])))
            }
            (Some((address, at)), None) => self.listen_address(address, at),
        }
    }

    fn listen_interface(&mut self, interface: &str, at: Pos, prefer_ipv6: bool) {
        let family = if prefer_ipv6 {
            "first IPv6 address"
        } else {
            "first IPv4 address"
        };
        self.findings.warn_at(
            "listen_interface",
            at,
            format!(
                "{interface:?}: ringseal does not look up interface addresses; give [[inbound]] \
                 listen and forward with the {family} of {interface} in the ringseal config"
            ),
        );
    }

    fn listen_address(&mut self, address: String, at: Pos) -> Result<Listen, CassandraYamlError> {
        if address.eq_ignore_ascii_case("localhost") {
            return Ok(Listen::Ip(IpAddr::from([127, 0, 0, 1])));
        }
        match address.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => Err(CassandraYamlError::WildcardAddress {
                path: self.path.clone(),
                address,
                line: at.line,
                column: at.column,
            }),
            Ok(ip) => Ok(Listen::Ip(ip)),
            Err(_) => {
                self.findings.warn_at(
                    "listen_address",
                    at,
                    format!(
                        "{address:?} is a host name, which ringseal does not resolve; give \
                         [[inbound]] listen and forward with its IP address in the ringseal config"
                    ),
                );
                Ok(Listen::Unknown)
            }
        }
    }

    /// `listen_on_broadcast_address`: Cassandra's second listener, which ringseal does not add.
    fn broadcast(
        &mut self,
        on_broadcast: Option<&Node<'_>>,
        broadcast: Option<&Node<'_>>,
        ssl_storage_port: u16,
    ) -> Result<(), CassandraYamlError> {
        let Some(flag) = on_broadcast else {
            return Ok(());
        };
        let address = self.string_opt("broadcast_address", broadcast)?;
        if self.boolean("listen_on_broadcast_address", flag)? == Some(true)
            && let Some(address) = address
        {
            let listen = match address.parse::<IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, ssl_storage_port).to_string(),
                Err(_) => format!("<IP of {address}>:{ssl_storage_port}"),
            };
            self.findings.warn_at(
                "listen_on_broadcast_address",
                flag.at,
                format!(
                    "Cassandra also listens on broadcast_address {address}; add a second \
                     [[inbound]] with listen = \"{listen}\" to the ringseal config"
                ),
            );
        }
        Ok(())
    }

    /// `internode_authenticator`: a class name (up to 4.1) or `{class_name, parameters}` (5.0+).
    fn authenticator(&mut self, node: Option<&Node<'_>>) -> Result<(), CassandraYamlError> {
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return Ok(());
        };
        let class = match &node.kind {
            Kind::Scalar { .. } => self.string("internode_authenticator", node)?,
            Kind::Map(entries) => {
                let class = last_wins(entries).get("class_name");
                self.string_opt("internode_authenticator.class_name", class)?
            }
            Kind::Seq(_) => {
                return Err(self.type_error(
                    "internode_authenticator",
                    "a class name, or a mapping with class_name",
                    node,
                    "",
                ));
            }
        };
        let Some(class) = class else {
            return Ok(());
        };
        let full = if class.contains('.') {
            class.clone()
        } else {
            format!("org.apache.cassandra.auth.{class}")
        };
        if full != ALLOW_ALL_AUTHENTICATOR {
            self.findings.warn_at(
                "internode_authenticator",
                node.at,
                format!(
                    "{class}: ringseal does not run Cassandra's internode authenticators; it checks \
                     peers by certificate chain, endpoint verification and the [[inbound]] \
                     allow-list (e.g. allow = {{ uri = [...] }} for SPIFFE identities), which the \
                     ringseal config can set"
                ),
            );
        }
        Ok(())
    }
}
