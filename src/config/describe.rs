//! The validated config in words, for `ringseal check`.

use std::fmt::Write;

use super::{Config, system_backlog};
use crate::tls::settings::{ClientAuth, Negotiation};
use crate::tls::suites::{iana_name, protocol_name};

/// What `ringseal check` prints after the PKI report: the negotiation, the listeners and the limits,
/// every validated value. `ktls` says whether this kernel offloads, and what (the relay probes it).
pub fn describe<Tls: Negotiation>(c: &Config<Tls>, ktls: &str) -> String {
    let mut out = String::new();
    let versions: Vec<_> = c
        .tls
        .versions()
        .iter()
        .map(|v| protocol_name(v.version))
        .collect();
    let suites: Vec<_> = c.tls.suites().iter().map(|s| iana_name(*s)).collect();
    let _ = writeln!(out, "protocols  {}", versions.join(", "));
    let _ = writeln!(out, "suites     {}", suites.join(", "));
    let _ = writeln!(
        out,
        "client auth {}",
        match c.tls.require_client_auth() {
            ClientAuth::Required => "required",
            ClientAuth::Optional =>
                "optional (clients without a certificate are accepted; one that is sent is verified)",
            ClientAuth::Off => "off (no client certificate is asked for)",
        }
    );
    listeners(&mut out, c);
    let _ = writeln!(
        out,
        "permissive peers verified over TLS are never sent plaintext for {} after their last handshake ({})",
        humantime::format_duration(c.permissive.tls_peer_memory),
        c.permissive
            .state_file
            .as_ref()
            .map_or("in memory only".into(), |f| format!(
                "state file {}",
                f.display()
            ))
    );
    let _ = writeln!(out, "offload    {} ({ktls})", c.offload);
    let _ = writeln!(
        out,
        "handover   {}",
        c.handover.socket.as_ref().map_or(
            "off (no [handover] socket and no $RUNTIME_DIRECTORY): a restart refuses connections while \
             no process listens"
                .into(),
            |s| format!(
                "a new `ringseal run` takes over listeners and movable connections through {}",
                s.display()
            )
        )
    );
    let _ = writeln!(
        out,
        "logging    {}",
        if c.logging.connections {
            "one info line per relayed connection when it ends"
        } else {
            "connection ends at debug only (abnormal ones at info)"
        }
    );
    let l = &c.limits;
    let _ = writeln!(
        out,
        "limits     handshake {}, connect {}, idle {}, linger {}, max {} connections, shutdown grace {}",
        humantime::format_duration(l.handshake_timeout),
        humantime::format_duration(l.connect_timeout),
        l.idle_timeout
            .map_or("none".into(), |d| humantime::format_duration(d).to_string()),
        humantime::format_duration(l.close_linger),
        l.max_connections,
        humantime::format_duration(l.shutdown_grace),
    );
    let system = system_backlog();
    let backlog = match l.listen_backlog {
        None => format!("{system} (the system's net.core.somaxconn)"),
        Some(b) if b > system => format!("{b}, cut to net.core.somaxconn = {system} by the kernel"),
        Some(b) => b.to_string(),
    };
    let _ = writeln!(
        out,
        "admission  per listener: max {} connections, max {} handshakes in progress (inbound: {} per \
         source address); listen backlog {backlog}",
        l.max_connections, l.max_pending_handshakes, l.max_pending_per_source,
    );
    out
}

/// One line per listener: where it listens, where it goes, and how it checks peers.
fn listeners<Tls>(out: &mut String, c: &Config<Tls>) {
    for (i, l) in c.inbound.iter().enumerate() {
        let _ = writeln!(
            out,
            "inbound[{i}] listen {} -> forward {} (endpoint verification {}, allow {})",
            l.listen,
            l.forward,
            if l.require_endpoint_verification {
                "on"
            } else {
                "off"
            },
            l.allow
        );
    }
    for (i, o) in c.outbound.iter().enumerate() {
        let _ = writeln!(
            out,
            "outbound[{i}] listen {} (plaintext) -> mTLS to {} (endpoint verification {}, allow {})",
            o.listen,
            o.target,
            if o.require_endpoint_verification {
                "on"
            } else {
                "off"
            },
            o.allow
        );
    }
}
