//! From `client_encryption_options` and the native transport settings to ringseal's client listener
//! (`[[inbound]]` named "client" with its own `[inbound.tls]`), or to a template that completes an
//! `[[inbound]]` named "client" of the ringseal config.
//!
//! Cassandra terminates client TLS itself whenever `enabled` is true: on `native_transport_port_ssl`
//! when that is a separate port (plaintext stays on `native_transport_port`), else on
//! `native_transport_port` itself. ringseal can only take a port Cassandra does not hold, so:
//! * `enabled: true` with a separate SSL port: the listener takes TLS on the SSL port and forwards
//!   to the plaintext port; a warning says Cassandra holds that port too until `enabled: false`.
//! * `enabled: true` on one port: there is no plaintext port to forward to; no listener, a warning,
//!   and a template for a ringseal `[[inbound]]` named "client" that says where Cassandra's plaintext
//!   now is.
//! * `enabled: false` or not set: no listener (a note); the template completes a ringseal
//!   `[[inbound]]` named "client": this is the state after handing client TLS to ringseal.
//!
//! docs/cassandra-yaml.md explains each choice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use toml::{Table, Value};

use super::client_encryption::CEO;
use super::mapping::Mapper;
use super::options::{CassandraYaml, Rpc};
use super::server_encryption::{ClientAuth, EncryptionOptions};
use super::yaml::Pos;
use crate::tls::suites;

/// The `name` of the derived client listener.
pub(super) const CLIENT_LISTENER: &str = "client";

/// The client listener, when one is derived, and what completes a ringseal `[[inbound]]` named
/// "client" (the listener itself, or as much of it as cassandra.yaml says).
#[derive(Default)]
pub(super) struct Client {
    pub(super) listener: Option<Table>,
    pub(super) template: Option<Table>,
}

impl Mapper {
    /// The client listener for `yaml`; `server_tls` is the derived `[tls]`, which the listener's
    /// `[inbound.tls]` would otherwise inherit protocols and suites from.
    pub(super) fn client(&mut self, yaml: &CassandraYaml, server_tls: &Table) -> Client {
        let native = &yaml.native;
        let Some(ceo) = &native.encryption else {
            self.findings.note(format!(
                "{CEO} is not set: Cassandra serves CQL clients without TLS on \
                 native_transport_port {}, and no client listener is derived",
                native.port
            ));
            return Client::default();
        };
        let enabled = ceo.enabled.filter(|(e, _)| *e);
        if let Some(at) = native.not_started {
            if enabled.is_some() {
                self.findings.warn_at(
                    "start_native_transport",
                    at,
                    format!(
                        "false: Cassandra starts no CQL server, so no client listener is derived \
                         although {CEO}.enabled is true"
                    ),
                );
            }
            return Client::default();
        }
        let mut listener = Table::new();
        listener.insert("name".into(), CLIENT_LISTENER.into());
        // A disabled section only feeds a template that the ringseal config may never use: what
        // mapping it finds (default passwords, refused suites) would be noise in every `check`.
        let quiet = enabled.is_none().then(|| {
            (
                std::mem::take(&mut self.findings),
                self.relative_resolved.clone(),
            )
        });
        let tls = self.client_tls(ceo, server_tls, &mut listener);
        if let Some((findings, relative)) = quiet {
            self.findings = findings;
            self.relative_resolved = relative;
        }
        let addresses = self.rpc_addresses(&native.rpc, enabled.is_some());
        let ssl_port = native
            .port_ssl
            .filter(|(p, _)| *p != native.port)
            .map(|(p, _)| p);
        let Some((_, enabled_at)) = enabled else {
            // Cassandra holds only the plaintext port, and ignores native_transport_port_ssl.
            if let Some((listen, forward)) = addresses {
                if let Some(ssl) = ssl_port {
                    insert_addr(&mut listener, "listen", listen, ssl);
                }
                insert_addr(&mut listener, "forward", forward, native.port);
            }
            listener.insert("tls".into(), Value::Table(tls));
            self.findings.note(format!(
                "{CEO}.enabled is {}: Cassandra serves CQL clients without TLS on \
                 native_transport_port {}, and no client listener is derived; an [[inbound]] named \
                 \"client\" in the ringseal config takes its TLS settings from {CEO}{}",
                if ceo.enabled.is_some() {
                    "false"
                } else {
                    "not set"
                },
                native.port,
                match ssl_port {
                    Some(p) => format!(
                        " and listens on native_transport_port_ssl {p} unless it says otherwise"
                    ),
                    None => String::new(),
                }
            ));
            return Client {
                listener: None,
                template: Some(listener),
            };
        };
        if ceo.optional == Some(true) {
            self.client_permissive(&mut listener, addresses.map(|(l, _)| l));
        }
        listener.insert("tls".into(), Value::Table(tls));
        let Some(ssl) = ssl_port else {
            if let Some((listen, _)) = addresses {
                insert_addr(&mut listener, "listen", listen, native.port);
            }
            self.findings.warn_at(
                &format!("{CEO}.enabled"),
                enabled_at,
                format!(
                    "true without a separate native_transport_port_ssl: Cassandra itself takes TLS \
                     on native_transport_port {port} and serves no plaintext port for ringseal to \
                     forward to, so no client listener is derived. To hand client TLS to ringseal, \
                     let Cassandra serve plaintext on another port (enabled: false, \
                     native_transport_port: {next}, native_transport_port_ssl: {port}) and add an \
                     [[inbound]] with name = \"client\" to the ringseal config; or name Cassandra's \
                     plaintext address there as forward: the rest is derived from {CEO}",
                    port = native.port,
                    next = native.port.saturating_add(1),
                ),
            );
            return Client {
                listener: None,
                template: Some(listener),
            };
        };
        self.findings.warn_at(
            &format!("{CEO}.enabled"),
            enabled_at,
            format!(
                "true: Cassandra itself also listens with TLS on native_transport_port_ssl {ssl}, \
                 the port of ringseal's client listener, and only one of them can. To hand client \
                 TLS to ringseal, set enabled: false (Cassandra then serves plaintext on \
                 native_transport_port {} only, where ringseal forwards) and add an [[inbound]] \
                 with name = \"client\" to the ringseal config: it is completed from {CEO}",
                native.port
            ),
        );
        match addresses {
            Some((listen, forward)) => {
                insert_addr(&mut listener, "listen", listen, ssl);
                insert_addr(&mut listener, "forward", forward, native.port);
                Client {
                    listener: Some(listener.clone()),
                    template: Some(listener),
                }
            }
            // An address ringseal does not look up: only the ringseal config can complete it.
            None => Client {
                listener: None,
                template: Some(listener),
            },
        }
    }

    /// The client listener's `[inbound.tls]`, and its endpoint verification.
    fn client_tls(
        &mut self,
        ceo: &EncryptionOptions,
        server_tls: &Table,
        listener: &mut Table,
    ) -> Table {
        let auth = ceo.require_client_auth.unwrap_or(ClientAuth::NotRequired);
        let mut tls = Table::new();
        // A truststore only serves to verify client certificates: Cassandra does not read it
        // without them, and neither does ringseal (the listener then inherits [tls]'s trust, unused).
        let with_trust = auth != ClientAuth::NotRequired;
        self.stores(ceo, &mut tls, with_trust);
        if !with_trust && ceo.truststore.is_some() {
            self.findings.note(format!(
                "{CEO}.truststore is not used: require_client_auth is false, so no client \
                 certificate is verified"
            ));
        }
        self.protocols_and_suites(ceo, &mut tls);
        // Cassandra's client side has its own defaults: a restriction of the internode [tls] must not
        // reach the client listener through inheritance.
        if !tls.contains_key("protocols") && server_tls.contains_key("protocols") {
            let all = ["TLSv1.2", "TLSv1.3"].map(|p| Value::String(p.into()));
            tls.insert("protocols".into(), Value::Array(all.to_vec()));
        }
        if !tls.contains_key("cipher_suites") && server_tls.contains_key("cipher_suites") {
            let defaults = crate::tls::provider()
                .cipher_suites
                .iter()
                .map(|s| Value::String(suites::iana_name(*s).into()))
                .collect();
            tls.insert("cipher_suites".into(), Value::Array(defaults));
        }
        let value: Value = match auth {
            ClientAuth::Required => true.into(),
            ClientAuth::NotRequired => false.into(),
            ClientAuth::Optional => "optional".into(),
        };
        tls.insert("require_client_auth".into(), value);
        if ceo.require_endpoint_verification == Some(true) {
            if with_trust {
                listener.insert("require_endpoint_verification".into(), true.into());
            } else {
                self.findings.note(format!(
                    "{CEO}.require_endpoint_verification is not used: require_client_auth is \
                     false, so clients present no certificate to check"
                ));
            }
        }
        tls
    }

    /// `optional: true` with `enabled: true`: TLS and plaintext on one port, as ringseal's permissive
    /// mode serves them.
    fn client_permissive(&mut self, listener: &mut Table, listen: Option<IpAddr>) {
        listener.insert("mode".into(), "permissive".into());
        let mut note = format!(
            "{CEO}.optional is true: the client listener has mode = \"permissive\", so CQL clients \
             without TLS are still served, as by Cassandra"
        );
        if listen.is_some_and(|ip| !ip.is_loopback()) {
            listener.insert("allow_non_loopback_plaintext".into(), true.into());
            note.push_str(", and allow_non_loopback_plaintext = true");
        }
        note.push_str(
            "; set optional: false once ringseal_connections_total{listener=\"client\",tls=\"false\"} \
             no longer grows",
        );
        self.findings.note(note);
    }

    /// Where the client listener listens and where it forwards: the native transport's address,
    /// and loopback for a wildcard. None when the address is not known here; warnings say so when
    /// `warn` (client TLS is enabled).
    fn rpc_addresses(&mut self, rpc: &Rpc, warn: bool) -> Option<(IpAddr, IpAddr)> {
        let why = match rpc {
            Rpc::Ip(ip) if ip.is_unspecified() => {
                let loopback = match ip {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                return Some((*ip, loopback));
            }
            Rpc::Ip(ip) => return Some((*ip, *ip)),
            _ if !warn => return None,
            Rpc::Absent => {
                self.findings.warn_file(
                    "rpc_address: not set, so Cassandra's CQL server binds the address of this \
                     host's name, which ringseal does not look up; give the client listener's \
                     listen and forward ([[inbound]] with name = \"client\") in the ringseal config"
                        .into(),
                );
                return None;
            }
            Rpc::HostName(name, at) => (
                "rpc_address",
                *at,
                format!("{name:?} is a host name, which ringseal does not resolve"),
            ),
            Rpc::Interface(interface, at, ipv6) => (
                "rpc_interface",
                *at,
                format!(
                    "{interface:?}: ringseal does not look up interface addresses (use the first \
                     {} address of {interface})",
                    if *ipv6 { "IPv6" } else { "IPv4" }
                ),
            ),
            Rpc::Both(at) => (
                "rpc_interface",
                *at,
                "is set together with rpc_address, which Cassandra refuses".to_owned(),
            ),
        };
        let (key, at, what): (&str, Pos, String) = why;
        self.findings.warn_at(
            key,
            at,
            format!(
                "{what}; give the client listener's listen and forward ([[inbound]] with name = \
                 \"client\") in the ringseal config"
            ),
        );
        None
    }
}

fn insert_addr(listener: &mut Table, key: &str, ip: IpAddr, port: u16) {
    listener.insert(key.into(), SocketAddr::new(ip, port).to_string().into());
}
