//! [`FileConfig::validate`]: the file structs -> the runtime [`Config`], one function per section. The
//! one place where input is checked; nothing here reads key material.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::error::AllowListError;
use super::file::{
    self, FileAllow, FileConfig, FileInbound, FileLimits, FileListenerTls, FileOutbound, FileTls,
};
use super::{
    Config, ConfigError, Handover, Inbound, Limits, ListenerName, Logging, MAX_CONNECTIONS,
    MAX_DURATION, MIN_RELOAD_INTERVAL, MetricsSettings, Mode, Outbound, Permissive, Problem,
    Target, Tcp,
};
use crate::secret::Secret;
use crate::tls::allow::{AllowList, canonical_ip};
use crate::tls::pattern::{DnsPattern, PatternError, UriPattern};
use crate::tls::settings::{
    ClientAuth, IdentityFiles, Password, StoreFile, StoreType, TlsFiles, TlsSettings, TrustFiles,
};
use crate::tls::suites;

/// The file being validated: where messages point, and what relative file names resolve against.
struct Ctx<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, key: impl Into<String>, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.into(),
            problem: Box::new(problem),
        }
    }
}

/// A listen address and the listener it belongs to (`inbound[0]`).
type Listen = (String, SocketAddr);

impl FileConfig {
    /// Converts the file structs into the runtime [`Config`]: the one place where input is checked.
    pub fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let cx = Ctx {
            path,
            base: path.parent().unwrap_or(Path::new(".")),
        };
        let tls = tls(&self.tls, "tls", &cx)?;
        if self.inbound.is_empty() && self.outbound.is_empty() {
            return Err(cx.invalid("inbound", Problem::NoListener));
        }
        let inbound = self
            .inbound
            .into_iter()
            .enumerate()
            .map(|(i, l)| inbound(i, l, self.mode, (&self.tls, &tls), &cx))
            .collect::<Result<Vec<_>, _>>()?;
        let outbound = self
            .outbound
            .into_iter()
            .enumerate()
            .map(|(i, o)| outbound(i, o, self.mode, (&self.tls, &tls), &cx))
            .collect::<Result<Vec<_>, _>>()?;
        unique_names(&inbound, &outbound, &cx)?;
        let listens = listens(&inbound, &outbound, &cx)?;
        no_loops(&inbound, &outbound, &listens, &cx)?;
        let metrics = self
            .metrics
            .map(|m| metrics(&m, &listens, &cx))
            .transpose()?;
        let permissive = permissive(self.permissive, &cx)?;
        let limits = limits(&self.limits, &cx)?;
        Ok(Config {
            tls,
            inbound,
            outbound,
            limits,
            offload: self.offload,
            metrics,
            sources: None,
            cluster_name: self.cluster_name,
            permissive,
            logging: Logging {
                connections: self.logging.connections,
            },
            tcp: Tcp {
                loopback_congestion_control: self.tcp.loopback_congestion_control,
            },
            handover: handover(self.handover, std::env::var_os("RUNTIME_DIRECTORY"), &cx)?,
        })
    }
}

/// The `[tls]` table at `table` (`tls`, or a listener's merged `inbound[1].tls`): protocols and suites
/// by name, the files (no key material is read), the reload interval.
fn tls(t: &FileTls, table: &str, cx: &Ctx<'_>) -> Result<TlsSettings, ConfigError> {
    let versions = suites::parse_protocols(&t.protocols).map_err(|source| ConfigError::Suites {
        path: cx.path.to_owned(),
        key: format!("{table}.protocols").into(),
        source,
    })?;
    let suites = suites::parse_cipher_suites(&t.cipher_suites, &versions, &suites::provider())
        .map_err(|source| ConfigError::Suites {
            path: cx.path.to_owned(),
            key: format!("{table}.cipher_suites").into(),
            source,
        })?;
    let files = tls_files(t, table, cx)?;
    let interval = t.reload_interval;
    if !(MIN_RELOAD_INTERVAL..=MAX_DURATION).contains(&interval) {
        return Err(cx.invalid("tls.reload_interval", Problem::ReloadInterval(interval)));
    }
    Ok(TlsSettings {
        files,
        versions,
        suites,
        require_client_auth: t.require_client_auth,
        crl_expired: t.crl_expired,
        reload_interval: interval,
        accept_v1: t.accept_v1_certificates,
    })
}

/// A listener's policy: `[tls]` itself when it has no table of its own (`top` is `[tls]` as written
/// and as validated), else its table merged over `[tls]` and validated as one.
fn listener_tls(
    table: &str,
    own: Option<&FileListenerTls>,
    (file, top): (&FileTls, &TlsSettings),
    cx: &Ctx<'_>,
) -> Result<TlsSettings, ConfigError> {
    match own {
        None => Ok(top.clone()),
        Some(own) => tls(&merge(file, own), table, cx),
    }
}

/// `own` over `top` by group: any identity key replaces the identity, any trust key the trust, one
/// password key of the outbound keystore its password, and every other key itself.
fn merge(top: &FileTls, own: &FileListenerTls) -> FileTls {
    let mut t = top.clone();
    let o = own.clone();
    let identity = o.cert.is_some()
        || o.key.is_some()
        || o.keystore.is_some()
        || o.keystore_password.is_some()
        || o.keystore_password_file.is_some()
        || o.keystore_password_env.is_some()
        || o.keystore_type.is_some()
        || o.keystore_alias.is_some();
    if identity {
        t.cert = o.cert;
        t.key = o.key;
        t.keystore = o.keystore;
        t.keystore_password = o.keystore_password;
        t.keystore_password_file = o.keystore_password_file;
        t.keystore_password_env = o.keystore_password_env;
        t.keystore_type = o.keystore_type;
        t.keystore_alias = o.keystore_alias;
    }
    let trust = o.ca.is_some()
        || o.truststore.is_some()
        || o.truststore_password.is_some()
        || o.truststore_password_file.is_some()
        || o.truststore_password_env.is_some()
        || o.truststore_type.is_some();
    if trust {
        t.ca = o.ca;
        t.truststore = o.truststore;
        t.truststore_password = o.truststore_password;
        t.truststore_password_file = o.truststore_password_file;
        t.truststore_password_env = o.truststore_password_env;
        t.truststore_type = o.truststore_type;
    }
    let outbound_password = o.outbound_keystore_password.is_some()
        || o.outbound_keystore_password_file.is_some()
        || o.outbound_keystore_password_env.is_some();
    if outbound_password {
        t.outbound_keystore_password = o.outbound_keystore_password;
        t.outbound_keystore_password_file = o.outbound_keystore_password_file;
        t.outbound_keystore_password_env = o.outbound_keystore_password_env;
    }
    fn over<T>(slot: &mut T, value: Option<T>) {
        if let Some(v) = value {
            *slot = v;
        }
    }
    if o.outbound_keystore.is_some() {
        t.outbound_keystore = o.outbound_keystore;
    }
    if o.outbound_keystore_type.is_some() {
        t.outbound_keystore_type = o.outbound_keystore_type;
    }
    if o.outbound_keystore_alias.is_some() {
        t.outbound_keystore_alias = o.outbound_keystore_alias;
    }
    over(&mut t.accept_v1_certificates, o.accept_v1_certificates);
    over(&mut t.protocols, o.protocols);
    over(&mut t.cipher_suites, o.cipher_suites);
    over(&mut t.require_client_auth, o.require_client_auth);
    over(&mut t.crl, o.crl);
    over(&mut t.crl_expired, o.crl_expired);
    t
}

/// A listener's `name`, or its default.
fn listener_name(
    given: Option<&str>,
    inbound: bool,
    index: usize,
    key: &str,
    cx: &Ctx<'_>,
) -> Result<ListenerName, ConfigError> {
    match given {
        None => Ok(ListenerName::default_for(inbound, index)),
        Some(n) => ListenerName::parse(n).map_err(|p| cx.invalid(format!("{key}.name"), p)),
    }
}

/// No two listeners share a name (it is what tells their metrics apart).
fn unique_names(
    inbound: &[Inbound],
    outbound: &[Outbound],
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    let names: Vec<(String, &ListenerName)> = inbound
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("inbound[{i}]"), &l.name))
        .chain(
            outbound
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("outbound[{i}]"), &o.name)),
        )
        .collect();
    for (i, (key, name)) in names.iter().enumerate() {
        if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
            return Err(cx.invalid(
                format!("{key}.name"),
                Problem::DuplicateListenerName {
                    name: name.to_string(),
                    other: other.clone(),
                },
            ));
        }
    }
    Ok(())
}

/// The identity and trust files of the `[tls]` table at `table`: PEM files or keystores, exactly one
/// of each.
fn tls_files(t: &FileTls, table: &str, cx: &Ctx<'_>) -> Result<TlsFiles, ConfigError> {
    let keystore = store(
        StoreKeys {
            table,
            key: "tls.keystore",
            path: &t.keystore,
            password: &t.keystore_password,
            password_file: &t.keystore_password_file,
            password_env: &t.keystore_password_env,
            kind: &t.keystore_type,
            alias: &t.keystore_alias,
        },
        cx,
    )?;
    let truststore = store(
        StoreKeys {
            table,
            key: "tls.truststore",
            path: &t.truststore,
            password: &t.truststore_password,
            password_file: &t.truststore_password_file,
            password_env: &t.truststore_password_env,
            kind: &t.truststore_type,
            alias: &None,
        },
        cx,
    )?;
    let outbound = store(
        StoreKeys {
            table,
            key: "tls.outbound_keystore",
            path: &t.outbound_keystore,
            password: &t.outbound_keystore_password,
            password_file: &t.outbound_keystore_password_file,
            password_env: &t.outbound_keystore_password_env,
            kind: &t.outbound_keystore_type,
            alias: &t.outbound_keystore_alias,
        },
        cx,
    )?;
    Ok(TlsFiles {
        identity: identity_files(t, keystore, table, cx)?,
        outbound_identity: outbound.map(IdentityFiles::Store),
        trust: trust_files(t, truststore, table, cx)?,
        crls: t.crl.iter().map(|c| cx.base.join(c)).collect(),
    })
}

/// Our identity: `cert` + `key`, or `keystore`.
fn identity_files(
    t: &FileTls,
    keystore: Option<StoreFile>,
    table: &str,
    cx: &Ctx<'_>,
) -> Result<IdentityFiles, ConfigError> {
    Ok(match (&t.cert, &t.key, keystore) {
        (Some(cert), Some(key), None) => IdentityFiles::Pem {
            cert: cx.base.join(cert),
            key: cx.base.join(key),
        },
        (None, None, Some(store)) => IdentityFiles::Store(store),
        (Some(_), None, None) => {
            return Err(cx.invalid(format!("{table}.key"), Problem::CertWithoutKey));
        }
        (None, Some(_), None) => {
            return Err(cx.invalid(format!("{table}.cert"), Problem::KeyWithoutCert));
        }
        (None, None, None) => return Err(cx.invalid(table, Problem::NoIdentity)),
        (_, _, Some(_)) => {
            return Err(cx.invalid(format!("{table}.keystore"), Problem::TwoIdentities));
        }
    })
}

/// Whom we trust: `ca`, or `truststore`.
fn trust_files(
    t: &FileTls,
    truststore: Option<StoreFile>,
    table: &str,
    cx: &Ctx<'_>,
) -> Result<TrustFiles, ConfigError> {
    Ok(match (&t.ca, truststore) {
        (Some(ca), None) => TrustFiles::Pem(cx.base.join(ca)),
        (None, Some(store)) => TrustFiles::Store(store),
        (None, None) => return Err(cx.invalid(table, Problem::NoTrust)),
        (Some(_), Some(_)) => {
            return Err(cx.invalid(format!("{table}.truststore"), Problem::TwoTrusts));
        }
    })
}

/// The keys of one keystore in a `[tls]` table (`keystore`, `truststore` or `outbound_keystore`).
struct StoreKeys<'a> {
    /// The table (`tls`, `inbound[1].tls`): where messages point.
    table: &'a str,
    /// The store's role as `[tls]` names it (`tls.keystore`), which material errors name.
    key: &'static str,
    path: &'a Option<PathBuf>,
    password: &'a Option<Secret>,
    password_file: &'a Option<PathBuf>,
    password_env: &'a Option<String>,
    kind: &'a Option<String>,
    alias: &'a Option<String>,
}

/// One store: its file, where its password comes from (an environment variable is read only when the
/// material is loaded), the type the operator states.
fn store(k: StoreKeys<'_>, cx: &Ctx<'_>) -> Result<Option<StoreFile>, ConfigError> {
    let given = [
        ("password", k.password.is_some()),
        ("password_file", k.password_file.is_some()),
        ("password_env", k.password_env.is_some()),
        ("type", k.kind.is_some()),
        ("alias", k.alias.is_some()),
    ];
    let at = format!("{}{}", k.table, k.key.strip_prefix("tls").unwrap_or(k.key));
    let Some(path) = k.path else {
        if let Some((suffix, _)) = given.iter().find(|(_, set)| *set) {
            return Err(cx.invalid(
                format!("{at}_{suffix}"),
                Problem::StoreOptionWithoutStore { store: k.key },
            ));
        }
        return Ok(None);
    };
    if given[..3].iter().filter(|(_, set)| *set).count() > 1 {
        return Err(cx.invalid(
            format!("{at}_password"),
            Problem::TwoPasswords { store: k.key },
        ));
    }
    let password = match (k.password, k.password_file, k.password_env) {
        (Some(p), _, _) => Password::Inline(p.clone()),
        (None, Some(f), _) => Password::File(cx.base.join(f)),
        (None, None, Some(var)) => Password::Env(var.clone()),
        (None, None, None) => Password::None,
    };
    let stated = match k.kind {
        None => None,
        Some(t) => Some(
            StoreType::parse(t)
                .ok_or_else(|| cx.invalid(format!("{at}_type"), Problem::StoreType(t.clone())))?,
        ),
    };
    Ok(Some(StoreFile {
        key: k.key,
        path: cx.base.join(path),
        stated,
        password,
        alias: k.alias.clone(),
    }))
}

/// `allow = { ... }` of listener `listener` (`inbound[0]`); absent: any verified peer.
fn allow_list(
    allow: Option<FileAllow>,
    listener: &str,
    cx: &Ctx<'_>,
) -> Result<AllowList, ConfigError> {
    allow
        .map(FileAllow::into_allow_list)
        .transpose()
        .map_err(|e| {
            let entry = e.entry_key().unwrap_or_default();
            cx.invalid(format!("{listener}.allow{entry}"), e.into())
        })
        .map(Option::unwrap_or_default)
}

/// One `[[inbound]]`.
fn inbound(
    i: usize,
    l: FileInbound,
    default_mode: Mode,
    top: (&FileTls, &TlsSettings),
    cx: &Ctx<'_>,
) -> Result<Inbound, ConfigError> {
    let name = format!("inbound[{i}]");
    let label = listener_name(l.name.as_deref(), true, i, &name, cx)?;
    let table = if l.tls.is_some() {
        format!("{name}.tls")
    } else {
        "tls".to_owned()
    };
    let tls = listener_tls(&table, l.tls.as_ref(), top, cx)?;
    let listen = parse_addr(cx, &format!("{name}.listen"), &l.listen, "0.0.0.0:7001")?;
    let forward = parse_addr(cx, &format!("{name}.forward"), &l.forward, "127.0.0.1:7000")?;
    if forward.port() == 0 || forward.ip().is_unspecified() {
        return Err(cx.invalid(
            format!("{name}.forward"),
            Problem::ForwardUnreachable(forward),
        ));
    }
    let allow = allow_list(l.allow, &name, cx)?;
    let no_client_auth = tls.require_client_auth == ClientAuth::Off;
    if l.require_endpoint_verification && no_client_auth {
        return Err(cx.invalid(
            format!("{name}.require_endpoint_verification"),
            Problem::EndpointVerificationWithoutClientAuth { tls: table },
        ));
    }
    if !allow.is_empty() && no_client_auth {
        return Err(cx.invalid(
            format!("{name}.allow"),
            Problem::AllowListWithoutClientAuth { tls: table },
        ));
    }
    let mode = l.mode.unwrap_or(default_mode);
    if mode == Mode::Permissive && !listen.ip().is_loopback() && !l.allow_non_loopback_plaintext {
        return Err(cx.invalid(
            format!("{name}.mode"),
            Problem::PermissiveOnNetwork { index: i, listen },
        ));
    }
    Ok(Inbound {
        name: label,
        tls,
        listen,
        forward,
        require_endpoint_verification: l.require_endpoint_verification,
        allow,
        mode,
    })
}

/// One `[[outbound]]`.
fn outbound(
    i: usize,
    o: FileOutbound,
    default_mode: Mode,
    top: (&FileTls, &TlsSettings),
    cx: &Ctx<'_>,
) -> Result<Outbound, ConfigError> {
    let name = format!("outbound[{i}]");
    let label = listener_name(o.name.as_deref(), false, i, &name, cx)?;
    let tls = listener_tls(&format!("{name}.tls"), o.tls.as_ref(), top, cx)?;
    let key = format!("{name}.listen");
    let listen = parse_addr(cx, &key, &o.listen, "127.0.0.1:7002")?;
    if !listen.ip().is_loopback() && !o.allow_non_loopback_plaintext {
        return Err(cx.invalid(key, Problem::PlaintextOnNetwork { index: i, listen }));
    }
    let target = target(i, &o, cx)?;
    let allow = allow_list(o.allow, &name, cx)?;
    let mode = o.mode.unwrap_or(default_mode);
    let plaintext_fallback = o
        .plaintext_fallback
        .as_deref()
        .map(|f| {
            parse_addr(
                cx,
                &format!("{name}.plaintext_fallback"),
                f,
                "10.0.0.2:7000",
            )
        })
        .transpose()?;
    if mode == Mode::Permissive
        && matches!(target, Target::Fixed(_))
        && plaintext_fallback.is_none()
    {
        return Err(cx.invalid(
            format!("{name}.plaintext_fallback"),
            Problem::NoPlaintextFallback,
        ));
    }
    let bind_ip = o
        .bind_ip
        .as_deref()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| cx.invalid(format!("{name}.source"), Problem::BindIp(ip.to_owned())))
        })
        .transpose()?;
    Ok(Outbound {
        name: label,
        tls,
        listen,
        target,
        mode,
        plaintext_fallback,
        bind_ip,
        require_endpoint_verification: o.require_endpoint_verification,
        allow,
    })
}

/// Where `[[outbound]]` number `i` connects: `upstream`, or `transparent` with `tls_port`.
fn target(i: usize, o: &FileOutbound, cx: &Ctx<'_>) -> Result<Target, ConfigError> {
    match (o.upstream.as_deref(), o.transparent) {
        (Some(upstream), false) => {
            let key = format!("outbound[{i}].upstream");
            let upstream = parse_addr(cx, &key, upstream, "10.0.0.2:7001")?;
            if upstream.port() == 0 || upstream.ip().is_unspecified() {
                return Err(cx.invalid(key, Problem::UpstreamUnreachable(upstream)));
            }
            Ok(Target::Fixed(upstream))
        }
        (None, true) if o.tls_port != 0 => Ok(Target::Transparent {
            tls_port: o.tls_port,
        }),
        (None, true) => Err(cx.invalid(format!("outbound[{i}].tls_port"), Problem::NoTlsPort)),
        (Some(_), true) => {
            Err(cx.invalid(format!("outbound[{i}]"), Problem::UpstreamAndTransparent))
        }
        (None, false) => Err(cx.invalid(format!("outbound[{i}]"), Problem::NoTarget)),
    }
}

/// Every listen address, checked for two listeners fighting over one port.
fn listens(
    inbound: &[Inbound],
    outbound: &[Outbound],
    cx: &Ctx<'_>,
) -> Result<Vec<Listen>, ConfigError> {
    let listens: Vec<Listen> = inbound
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("inbound[{i}]"), l.listen))
        .chain(
            outbound
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("outbound[{i}]"), l.listen)),
        )
        .collect();
    for (i, (name, a)) in listens.iter().enumerate() {
        if let Some((other, b)) = listens[..i].iter().find(|(_, b)| overlaps(*a, *b)) {
            let problem = if a == b {
                Problem::SameListen {
                    addr: *a,
                    other: other.clone(),
                }
            } else {
                Problem::OverlappingListen {
                    addr: *a,
                    other: other.clone(),
                    other_addr: *b,
                }
            };
            return Err(cx.invalid(format!("{name}.listen"), problem));
        }
    }
    Ok(listens)
}

/// No `forward`, `upstream` or `plaintext_fallback` may point back at one of our own listeners.
fn no_loops(
    inbound: &[Inbound],
    outbound: &[Outbound],
    listens: &[Listen],
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    const STORAGE: &str = "the local storage port (e.g. 127.0.0.1:7000)";
    const PEER_TLS: &str = "the peer's TLS address (e.g. 10.0.0.2:7001)";
    const PEER_PLAINTEXT: &str = "the peer's plaintext storage port (e.g. 10.0.0.2:7000)";
    let targets = inbound
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("inbound[{i}].forward"), l.forward, STORAGE))
        .chain(outbound.iter().enumerate().flat_map(|(i, o)| {
            let upstream = match o.target {
                Target::Fixed(a) => Some((format!("outbound[{i}].upstream"), a, PEER_TLS)),
                Target::Transparent { .. } => None,
            };
            upstream.into_iter().chain(o.plaintext_fallback.map(|a| {
                (
                    format!("outbound[{i}].plaintext_fallback"),
                    a,
                    PEER_PLAINTEXT,
                )
            }))
        }));
    for (key, target, instead) in targets {
        if let Some((name, listen)) = listens.iter().find(|(_, l)| reaches(target, *l)) {
            return Err(cx.invalid(
                key,
                Problem::Loop {
                    target,
                    listener: name.clone(),
                    listen: *listen,
                    instead,
                },
            ));
        }
    }
    Ok(())
}

/// `[metrics]`: its own port.
fn metrics(
    m: &file::FileMetrics,
    listens: &[Listen],
    cx: &Ctx<'_>,
) -> Result<MetricsSettings, ConfigError> {
    let listen = parse_addr(cx, "metrics.listen", &m.listen, "127.0.0.1:9464")?;
    if let Some((name, _)) = listens.iter().find(|(_, b)| overlaps(listen, *b)) {
        return Err(cx.invalid(
            "metrics.listen",
            Problem::MetricsOverlap {
                listen,
                listener: name.clone(),
            },
        ));
    }
    Ok(MetricsSettings { listen })
}

/// `[permissive]`: the memory's length within bounds, the state file a file (not a directory).
/// `$RUNTIME_DIRECTORY/handover.sock`; systemd separates several directories with ':', the first is
/// the one to use. `None` when the variable is unset or empty.
pub(super) fn default_handover_socket(
    runtime_directory: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let dirs = runtime_directory?;
    let first = dirs.to_string_lossy().split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first).join(Handover::DEFAULT_NAME))
}

/// `[handover] socket`, relative to the config file's directory; absent: under systemd's
/// `RuntimeDirectory=` (`runtime_directory`, its first entry), else off.
fn handover(
    h: file::FileHandover,
    runtime_directory: Option<std::ffi::OsString>,
    cx: &Ctx<'_>,
) -> Result<Handover, ConfigError> {
    let socket = match h.socket {
        Some(s) if s.as_os_str().is_empty() => {
            return Err(cx.invalid("handover.socket", Problem::EmptyHandoverSocket));
        }
        Some(s) => cx.base.join(s),
        None => match default_handover_socket(runtime_directory) {
            Some(s) => s,
            None => return Ok(Handover::default()),
        },
    };
    if socket.as_os_str().len() > Handover::MAX_PATH {
        return Err(cx.invalid("handover.socket", Problem::HandoverSocketTooLong(socket)));
    }
    if socket.is_dir() {
        return Err(cx.invalid(
            "handover.socket",
            Problem::HandoverSocketIsDirectory(socket),
        ));
    }
    Ok(Handover {
        socket: Some(socket),
    })
}

fn permissive(p: file::FilePermissive, cx: &Ctx<'_>) -> Result<Permissive, ConfigError> {
    let memory = p.tls_peer_memory;
    if !(Permissive::MIN_MEMORY..=Permissive::MAX_MEMORY).contains(&memory) {
        return Err(cx.invalid("permissive.tls_peer_memory", Problem::TlsPeerMemory(memory)));
    }
    let state_file = match p.state_file {
        None => None,
        Some(f) if f.as_os_str().is_empty() => {
            return Err(cx.invalid("permissive.state_file", Problem::EmptyStateFile));
        }
        Some(f) => {
            let path = cx.base.join(f);
            if path.is_dir() {
                return Err(
                    cx.invalid("permissive.state_file", Problem::StateFileIsDirectory(path))
                );
            }
            Some(path)
        }
    };
    Ok(Permissive {
        tls_peer_memory: memory,
        state_file,
    })
}

/// `[limits]`: counts and deadlines within their bounds.
fn limits(l: &FileLimits, cx: &Ctx<'_>) -> Result<Limits, ConfigError> {
    if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS {
        return Err(cx.invalid(
            "limits.max_connections",
            Problem::MaxConnections(l.max_connections),
        ));
    }
    for (key, d) in [
        ("limits.handshake_timeout", l.handshake_timeout),
        ("limits.connect_timeout", l.connect_timeout),
        ("limits.idle_timeout", l.idle_timeout),
        ("limits.close_linger", l.close_linger),
        ("limits.shutdown_grace", l.shutdown_grace),
    ] {
        if d > MAX_DURATION {
            return Err(cx.invalid(key, Problem::DeadlineTooLong(d)));
        }
    }
    for (key, d) in [
        ("limits.handshake_timeout", l.handshake_timeout),
        ("limits.connect_timeout", l.connect_timeout),
        ("limits.close_linger", l.close_linger),
    ] {
        if d.is_zero() {
            return Err(cx.invalid(key, Problem::ZeroDeadline));
        }
    }
    if l.max_pending_handshakes == 0 || l.max_pending_handshakes > MAX_CONNECTIONS {
        return Err(cx.invalid(
            "limits.max_pending_handshakes",
            Problem::MaxPendingHandshakes(l.max_pending_handshakes),
        ));
    }
    if l.max_pending_per_source == 0 || l.max_pending_per_source > l.max_pending_handshakes {
        return Err(cx.invalid(
            "limits.max_pending_per_source",
            Problem::MaxPendingPerSource {
                value: l.max_pending_per_source,
                max: l.max_pending_handshakes,
            },
        ));
    }
    if l.listen_backlog > i32::MAX as u32 {
        return Err(cx.invalid(
            "limits.listen_backlog",
            Problem::ListenBacklog(l.listen_backlog),
        ));
    }
    Ok(Limits {
        handshake_timeout: l.handshake_timeout,
        connect_timeout: l.connect_timeout,
        idle_timeout: (!l.idle_timeout.is_zero()).then_some(l.idle_timeout),
        close_linger: l.close_linger,
        max_connections: l.max_connections,
        max_pending_handshakes: l.max_pending_handshakes,
        max_pending_per_source: l.max_pending_per_source,
        listen_backlog: (l.listen_backlog != 0).then_some(l.listen_backlog),
        shutdown_grace: l.shutdown_grace,
    })
}

impl FileAllow {
    pub fn into_allow_list(self) -> Result<AllowList, AllowListError> {
        let ip = self
            .ip
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map(canonical_ip)
                    .map_err(|_| AllowListError::NotAnIp(s.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (dns, dns_patterns) = split_patterns("dns", self.dns, DnsPattern::parse)?;
        let (uri, uri_patterns) = split_patterns("uri", self.uri, UriPattern::parse)?;
        let list = AllowList {
            ou: self.ou,
            cn: self.cn,
            dns: dns.into_iter().map(|d| d.to_ascii_lowercase()).collect(),
            ip,
            uri,
            dns_patterns,
            uri_patterns,
        };
        if list.is_empty() {
            return Err(AllowListError::Empty);
        }
        Ok(list)
    }
}

/// The entries of `allow.<field>` without a `*` (exact values) and those with one, parsed as patterns.
fn split_patterns<P>(
    field: &'static str,
    entries: Vec<String>,
    parse: fn(&str) -> Result<P, PatternError>,
) -> Result<(Vec<String>, Vec<P>), AllowListError> {
    let mut exact = Vec::new();
    let mut patterns = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        if !entry.contains('*') {
            exact.push(entry);
            continue;
        }
        match parse(&entry) {
            Ok(p) => patterns.push(p),
            Err(source) => {
                return Err(AllowListError::Pattern {
                    field,
                    index,
                    entry,
                    source,
                });
            }
        }
    }
    Ok((exact, patterns))
}

/// Whether connecting to `target` reaches a socket listening on `listen`: the same port, and the same
/// address, or a wildcard listen of a compatible family and an address of this host (a dual-stack
/// `[::]` also takes IPv4). Port 0 listens on a port chosen at bind time, which no config can name.
fn reaches(target: SocketAddr, listen: SocketAddr) -> bool {
    let ip = canonical_ip(target.ip());
    if target.port() != listen.port() || listen.port() == 0 {
        return false;
    }
    if ip == canonical_ip(listen.ip()) {
        return true;
    }
    let family_ok = match listen.ip() {
        IpAddr::V4(l) => l.is_unspecified() && ip.is_ipv4(),
        IpAddr::V6(l) => l.is_unspecified(),
    };
    family_ok && is_local(ip)
}

/// Whether `ip` is an address of this host: loopback, or one it can bind to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Whether two listen addresses would fight over the same port (port 0 means "any free port").
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let wildcard_v6 = |x: SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    a.ip() == b.ip()
        || (a.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
        || (b.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
        || wildcard_v6(a)
        || wildcard_v6(b)
}

/// An `IP:port` whose IPv6 scope id, if any, names an interface of this host.
fn parse_addr(
    cx: &Ctx<'_>,
    key: &str,
    value: &str,
    example: &'static str,
) -> Result<SocketAddr, ConfigError> {
    let addr = parse_addr_text(cx.path, key, value, example)?;
    if let SocketAddr::V6(a) = addr
        && a.scope_id() != 0
        && !crate::sys::interface_exists(a.scope_id())
    {
        return Err(cx.invalid(
            key,
            Problem::UnknownScopeId {
                value: value.to_owned(),
                scope_id: a.scope_id(),
            },
        ));
    }
    Ok(addr)
}

fn parse_addr_text(
    path: &Path,
    key: &str,
    value: &str,
    example: &'static str,
) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        let why = if value.contains(':') && value.parse::<IpAddr>().is_ok() {
            "an IPv6 address with a port is written in brackets, e.g. [::1]:7001"
        } else if !value.contains(':') {
            "the port is missing"
        } else if value
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.parse::<IpAddr>().is_err())
        {
            "host names are not resolved; give the IP address"
        } else {
            "the port must be a number from 0 to 65535"
        };
        ConfigError::Address {
            path: path.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            why,
            example,
        }
    })
}
