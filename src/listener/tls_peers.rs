//! Permissive outbound's memory of the peers that have TLS: every peer address the outbound side
//! completed a verified handshake with, and when it last did. While a peer is remembered, permissive
//! mode never reaches it in plaintext, whatever happens to its TLS connections: an on-path attacker
//! who refuses or mangles them causes refused handshakes, not a downgrade.
//!
//! With `permissive.state_file` the memory survives restarts: one line per peer, written whole to a
//! temporary file beside it and renamed over it, so a crash leaves the old or the new file, never a
//! mix. A missing file is a first start; an unreadable, oversized or corrupt one is a warning and an
//! empty memory, never a reason not to start.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{RateLimit, suppressed_note};
use crate::config::Permissive;

/// At most this many peers are remembered (a cluster has far fewer nodes); beyond it the least
/// recently verified one is forgotten. Bounds the memory and the state file.
pub const MAX_PEERS: usize = 16_384;
/// The longest line is an IPv6 address (39), a space, 20 digits and a newline.
const MAX_FILE_BYTES: u64 = MAX_PEERS as u64 * 64 + 256;
/// The first line of a state file: its format and what it is, for whoever finds it.
const STATE_FILE_HEADER: &str = "# ringseal permissive.state_file v1: peer address, Unix time of its last verified TLS handshake";

/// The peers that completed a verified TLS handshake, until their memory runs out.
pub struct TlsPeers {
    memory: Duration,
    file: Option<PathBuf>,
    state: Mutex<State>,
    write_errors: RateLimit<&'static str>,
}

#[derive(Default)]
struct State {
    /// When each peer's memory runs out: its last verified handshake plus `memory`. An expiry rather
    /// than a start, because after a reboot the monotonic clock cannot go back to a handshake made
    /// before it.
    expires: HashMap<IpAddr, Instant>,
    /// A write is under way; a change meanwhile sets `dirty` and the writer writes again.
    writing: bool,
    dirty: bool,
}

impl TlsPeers {
    /// The memory `settings` describe, read from its state file if there is one.
    pub fn load(settings: &Permissive) -> Self {
        let peers = Self {
            memory: settings.tls_peer_memory,
            file: settings.state_file.clone(),
            state: Mutex::default(),
            write_errors: RateLimit::new(Duration::from_secs(600)),
        };
        let Some(path) = &peers.file else {
            return peers;
        };
        match read_state_file(path) {
            Ok(None) => tracing::info!(
                "permissive.state_file {}: not there yet; peers that complete a verified TLS handshake \
                 will be remembered in it across restarts",
                path.display()
            ),
            Ok(Some(entries)) => {
                let (now, wall) = (Instant::now(), SystemTime::now());
                let mut state = peers.lock();
                for (ip, verified) in entries {
                    // A time in the future (the clock was set back) counts as now: remembered longer,
                    // never shorter.
                    let age = wall.duration_since(verified).unwrap_or_default();
                    if let Some(left) = peers.memory.checked_sub(age).filter(|l| !l.is_zero()) {
                        insert_bounded(&mut state.expires, ip, now + left, now);
                    }
                }
                tracing::info!(
                    "permissive.state_file {}: {} peer(s) with verified TLS remembered; permissive mode \
                     never sends them plaintext",
                    path.display(),
                    state.expires.len()
                );
            }
            Err(why) => tracing::warn!(
                "permissive.state_file {}: {why}; starting with an empty memory of TLS peers, so \
                 permissive mode may fall back to plaintext for a peer until it completes a verified TLS \
                 handshake again (the file is rewritten then)",
                path.display()
            ),
        }
        peers
    }

    /// How long a peer is remembered after its last verified handshake.
    pub fn memory(&self) -> Duration {
        self.memory
    }

    pub fn state_file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Whether `ip` completed a verified TLS handshake within the memory: then it is never sent
    /// plaintext.
    pub fn has_tls(&self, ip: IpAddr) -> bool {
        self.has_tls_at(ip, Instant::now())
    }

    fn has_tls_at(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock().expires.get(&ip).is_some_and(|e| *e > now)
    }

    /// Records a verified handshake with `ip`; true when it was not remembered before. The state file
    /// is written (in the background) for a new peer, and for a known one once its stored time is
    /// older than a 24th of the memory, not at every handshake.
    pub fn verified(self: &Arc<Self>, ip: IpAddr) -> bool {
        let (new, changed) = self.record(ip, Instant::now());
        if changed {
            self.save();
        }
        new
    }

    /// `(new, changed)`: whether `ip` was not remembered, whether the stored time moved.
    fn record(&self, ip: IpAddr, now: Instant) -> (bool, bool) {
        let expires = now + self.memory;
        let refresh = (self.memory / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut state = self.lock();
        match state.expires.get_mut(&ip) {
            Some(e) if *e > now => {
                let stale = expires.saturating_duration_since(*e) >= refresh;
                if stale {
                    *e = expires;
                }
                (false, stale)
            }
            _ => {
                insert_bounded(&mut state.expires, ip, expires, now);
                (true, true)
            }
        }
    }

    /// Writes the state file on a blocking thread of the runtime (off the connection's task); one writer
    /// at a time, the last change wins.
    fn save(self: &Arc<Self>) {
        if self.file.is_none() {
            return;
        }
        {
            let mut state = self.lock();
            if state.writing {
                state.dirty = true;
                return;
            }
            state.writing = true;
        }
        let peers = self.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                peers.lock().dirty = false;
                peers.write_now();
                let mut state = peers.lock();
                if !state.dirty {
                    state.writing = false;
                    return;
                }
            }
        });
    }

    /// Writes the current memory to the state file, logging (rate-limited) when it cannot.
    fn write_now(&self) {
        let Some(path) = &self.file else { return };
        let text = self.render(Instant::now(), SystemTime::now());
        match write_atomically(path, &text) {
            Ok(()) => tracing::debug!("permissive.state_file {}: written", path.display()),
            Err(e) => {
                if let Some(n) = self.write_errors.check("write") {
                    tracing::warn!(
                        "permissive.state_file {}: cannot write it: {e}; peers with verified TLS are \
                         remembered in memory only until it can be (a restart would forget them). The \
                         directory must exist and be writable by ringseal (systemd: \
                         StateDirectory=ringseal){}",
                        path.display(),
                        suppressed_note(n)
                    );
                }
            }
        }
    }

    /// The state file's text: the remembered peers with the wall-clock time of their last verified
    /// handshake, in address order.
    fn render(&self, now: Instant, wall: SystemTime) -> String {
        let state = self.lock();
        let mut lines: Vec<(IpAddr, u64)> = state
            .expires
            .iter()
            .filter(|(_, e)| **e > now)
            .map(|(ip, e)| {
                let age = self.memory.saturating_sub(e.saturating_duration_since(now));
                let verified = wall
                    .checked_sub(age)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                (*ip, verified)
            })
            .collect();
        drop(state);
        lines.sort();
        let mut text = String::with_capacity(STATE_FILE_HEADER.len() + 1 + lines.len() * 32);
        text.push_str(STATE_FILE_HEADER);
        text.push('\n');
        for (ip, verified) in lines {
            text.push_str(&format!("{ip} {verified}\n"));
        }
        text
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds a peer, first making room when the table is full: expired entries go, then the one whose
/// memory runs out first.
fn insert_bounded(
    expires: &mut HashMap<IpAddr, Instant>,
    ip: IpAddr,
    until: Instant,
    now: Instant,
) {
    if expires.len() >= MAX_PEERS && !expires.contains_key(&ip) {
        expires.retain(|_, e| *e > now);
        if expires.len() >= MAX_PEERS
            && let Some(oldest) = expires.iter().min_by_key(|(_, e)| **e).map(|(ip, _)| *ip)
        {
            expires.remove(&oldest);
        }
    }
    let e = expires.entry(ip).or_insert(until);
    *e = (*e).max(until);
}

/// Why a state file's memory cannot be used (then it starts empty).
#[derive(Debug, thiserror::Error)]
enum StateFileError {
    #[error("{0}")]
    Read(crate::files::ReadError),
    #[error("is corrupt: its first line is not ringseal's state file header")]
    BadHeader,
    #[error("is corrupt: more than {MAX_PEERS} peers")]
    TooManyPeers,
    #[error("is corrupt: line {line} is not \"ADDRESS UNIX_TIME\"")]
    BadLine { line: usize },
}

/// The entries of a state file; `Ok(None)` when it does not exist.
fn read_state_file(path: &Path) -> Result<Option<Vec<(IpAddr, SystemTime)>>, StateFileError> {
    match crate::files::read_text(path, STATE_FILE) {
        Ok(text) => parse_state_file(&text).map(Some),
        Err(crate::files::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateFileError::Read(e)),
    }
}

/// What a state file of [`MAX_PEERS`] peers can be at most.
const STATE_FILE: crate::files::Limit = crate::files::Limit {
    bytes: MAX_FILE_BYTES,
    what: "a state file",
};

/// A state file's text; any line that is not exactly what [`TlsPeers::render`] writes makes the
/// whole file corrupt (a partial memory could not be told from a complete one).
fn parse_state_file(text: &str) -> Result<Vec<(IpAddr, SystemTime)>, StateFileError> {
    let mut lines = text.lines();
    if lines.next() != Some(STATE_FILE_HEADER) {
        return Err(StateFileError::BadHeader);
    }
    let mut entries = Vec::new();
    for (i, line) in lines.enumerate() {
        let entry = line.split_once(' ').and_then(|(ip, t)| {
            let ip = ip.parse::<IpAddr>().ok()?;
            let secs = t.parse::<u64>().ok()?;
            Some((ip, UNIX_EPOCH.checked_add(Duration::from_secs(secs))?))
        });
        match entry {
            Some(e) if entries.len() < MAX_PEERS => entries.push(e),
            Some(_) => return Err(StateFileError::TooManyPeers),
            None => return Err(StateFileError::BadLine { line: i + 2 }),
        }
    }
    Ok(entries)
}

/// Replaces `path` by a file holding `text`: written and synced beside it, then renamed over it, and
/// the rename synced, so that a crash or power loss leaves the old file or the new one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or("tls-peers".into(), |n| n.to_string_lossy());
    // tempfile creates it 0600 with a random name, and removes it if anything below fails.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(memory: Duration, file: Option<PathBuf>) -> TlsPeers {
        TlsPeers::load(&Permissive {
            tls_peer_memory: memory,
            state_file: file,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_verified_peer_is_remembered_for_the_memory_and_no_longer() {
        let p = peers(DAY, None);
        let now = Instant::now();
        assert!(!p.has_tls_at(ip("10.0.0.2"), now));
        assert_eq!(p.record(ip("10.0.0.2"), now), (true, true));
        assert!(p.has_tls_at(ip("10.0.0.2"), now));
        assert!(p.has_tls_at(ip("10.0.0.2"), now + DAY - Duration::from_secs(1)));
        assert!(!p.has_tls_at(ip("10.0.0.2"), now + DAY));
        assert!(!p.has_tls_at(ip("10.0.0.3"), now));
        // Within a 24th of the memory a new handshake does not rewrite the file; after it, it does and
        // the memory starts again.
        assert_eq!(
            p.record(ip("10.0.0.2"), now + Duration::from_secs(60)),
            (false, false)
        );
        assert_eq!(
            p.record(ip("10.0.0.2"), now + Duration::from_secs(3600)),
            (false, true)
        );
        assert!(p.has_tls_at(ip("10.0.0.2"), now + DAY + Duration::from_secs(3599)));
        // An expired peer verified again is new again.
        assert_eq!(p.record(ip("10.0.0.2"), now + 3 * DAY), (true, true));
    }

    #[test]
    fn the_table_is_bounded() {
        let p = peers(DAY, None);
        let now = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 10) {
            p.record(
                IpAddr::from(i.to_be_bytes()),
                now + Duration::from_millis(i.into()),
            );
        }
        assert_eq!(p.lock().expires.len(), MAX_PEERS);
        // The least recently verified went first; the latest is there.
        assert!(!p.has_tls_at(IpAddr::from(0u32.to_be_bytes()), now));
        assert!(p.has_tls_at(IpAddr::from((MAX_PEERS as u32 + 9).to_be_bytes()), now));
    }

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls-peers");
        let p = peers(DAY, Some(path.clone()));
        let now = Instant::now();
        p.record(ip("10.0.0.2"), now);
        p.record(ip("fd00::11"), now - Duration::from_secs(7200));
        p.write_now();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(STATE_FILE_HEADER), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let again = peers(DAY, Some(path.clone()));
        assert!(again.has_tls(ip("10.0.0.2")));
        assert!(again.has_tls(ip("fd00::11")));
        assert!(!again.has_tls(ip("10.0.0.3")));
        // A shorter memory applies to what was stored: the peer verified 2 h ago is forgotten.
        let short = peers(Duration::from_secs(3600), Some(path));
        assert!(short.has_tls(ip("10.0.0.2")));
        assert!(!short.has_tls(ip("fd00::11")));
    }

    #[test]
    fn a_bad_state_file_is_an_empty_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls-peers");
        for (bad, why) in [
            (format!("{STATE_FILE_HEADER}\n10.0.0.2 17x\n"), "line 2"),
            ("garbage\n".to_owned(), "header"),
            (format!("{STATE_FILE_HEADER}\n10.0.0.2\n"), "line 2"),
            (format!("{STATE_FILE_HEADER}\nnode2 1700000000\n"), "line 2"),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let err = read_state_file(&path).unwrap_err().to_string();
            assert!(err.contains("corrupt") && err.contains(why), "{err}");
            assert!(!peers(DAY, Some(path.clone())).has_tls(ip("10.0.0.2")));
        }
        std::fs::write(&path, [0xff, 0xfe, 0]).unwrap();
        assert!(read_state_file(&path).is_err());
        // Oversized: refused by its size, not read.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(
            read_state_file(&path)
                .unwrap_err()
                .to_string()
                .contains("ringseal reads for a state file")
        );
        // A directory, and a missing file (a first start).
        assert!(read_state_file(dir.path()).is_err());
        assert_eq!(read_state_file(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn a_fifo_as_state_file_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipping: mkfifo failed");
            return;
        }
        assert!(
            read_state_file(&path)
                .unwrap_err()
                .to_string()
                .contains("is a FIFO, not a regular file")
        );
    }

    #[test]
    fn an_unwritable_state_file_keeps_the_memory() {
        let p = peers(
            DAY,
            Some(PathBuf::from("/nonexistent-ringseal-dir/tls-peers")),
        );
        p.record(ip("10.0.0.2"), Instant::now());
        p.write_now();
        assert!(p.has_tls(ip("10.0.0.2")));
    }
}
