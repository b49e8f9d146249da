//! The new process's side: before binding anything, ask the old process for its listening sockets;
//! once accepting on them, let it stop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::protocol::{Kind, ListenerId, Message, Refusal, VERSION};
use super::wire::{Seq, own_uid};
use super::{StepError, recv, send, unexpected};
use crate::listener::moves::Adopter;
use crate::relay::Released;

/// What [`contact`] found at the hand-over socket.
pub enum Contact {
    /// No process to take over from (no socket file, or a stale one): bind everything.
    Alone,
    /// A running process handed its listening sockets over; finish with [`Takeover::finish`] once
    /// accepting on them.
    TakeOver(Takeover),
}

/// A hand-over in progress, from the new process's side.
pub struct Takeover {
    conn: Seq,
    path: PathBuf,
    /// The old process.
    pub pid: u32,
    /// The listening sockets received, by the address this process configured.
    pub(crate) listeners: Vec<(ListenerId, OwnedFd)>,
    /// How many were received (binding takes them out of `listeners`).
    received: usize,
    /// What the old process's connections were verified under, per listener.
    policies: Vec<super::protocol::ListenerPolicy>,
}

/// Why this process will not start (it has bound nothing; the old process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "hand-over socket {path}: cannot connect: {source}{hint}",
        path = .path.display()
    )]
    Connect {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error(
        "hand-over socket {path}: the process there (pid {pid}) runs as uid {uid}, this one as uid \
         {ours}: refusing to take over from another user's process",
        path = .path.display()
    )]
    OtherUid {
        path: PathBuf,
        pid: i32,
        uid: u32,
        ours: u32,
    },
    #[error(
        "hand-over socket {path}: pid {old} is already handing over to pid {other}; not starting \
         (wait until pid {other} has taken over, or stop it)",
        path = .path.display()
    )]
    Busy { path: PathBuf, old: u32, other: u32 },
    #[error(
        "hand-over socket {path}: pid {old} speaks hand-over version {theirs}, this binary {VERSION}; \
         stop pid {old} first (a restart without hand-over)",
        path = .path.display()
    )]
    Version {
        path: PathBuf,
        old: u32,
        theirs: u32,
    },
    #[error("hand-over socket {path}: with pid {old}, at {source}", path = .path.display())]
    Step {
        path: PathBuf,
        old: u32,
        source: StepError,
    },
}

/// Asks the process serving `path` for the listening sockets of `wanted` (what this process will
/// listen on). A missing socket file or one no process listens on (left by a process that died) means
/// there is no one to take over from.
pub async fn contact(path: &Path, wanted: Vec<ListenerId>) -> Result<Contact, HandoverError> {
    let conn = match Seq::connect(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Contact::Alone),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(
                "hand-over socket {} is stale (no process listens on it; left by one that died): \
                 starting normally, it will be replaced",
                path.display()
            );
            return Ok(Contact::Alone);
        }
        Err(source) => {
            let hint = match source.kind() {
                io::ErrorKind::PermissionDenied => {
                    " (the socket is its owner's only: run as the user of the running ringseal)"
                }
                _ => "",
            };
            return Err(HandoverError::Connect {
                path: path.to_owned(),
                source,
                hint,
            });
        }
    };
    let connect_err = |source: io::Error| HandoverError::Connect {
        path: path.to_owned(),
        source,
        hint: "",
    };
    let peer = conn.peer().map_err(connect_err)?;
    let ours = own_uid();
    if peer.uid != ours {
        return Err(HandoverError::OtherUid {
            path: path.to_owned(),
            pid: peer.pid,
            uid: peer.uid,
            ours,
        });
    }
    let old = u32::try_from(peer.pid).unwrap_or_default();
    let step = |source| HandoverError::Step {
        path: path.to_owned(),
        old,
        source,
    };
    let hello = Message::Hello {
        version: VERSION,
        pid: std::process::id(),
        listeners: wanted,
    };
    send(&conn, "Hello", &hello, &[]).await.map_err(step)?;
    let (answer, fds) = recv(&conn, "Listeners").await.map_err(step)?;
    let (listeners, policies): (Vec<(ListenerId, OwnedFd)>, _) = match answer {
        Message::Listeners {
            listeners,
            policies,
            ..
        } if listeners.len() == fds.len() => (listeners.into_iter().zip(fds).collect(), policies),
        Message::Listeners { listeners, .. } => {
            return Err(step(StepError {
                step: "Listeners",
                source: io::Error::other(format!(
                    "{} listeners named but {} descriptors attached",
                    listeners.len(),
                    fds.len()
                )),
            }));
        }
        Message::Refused {
            reason: Refusal::Busy { pid },
        } => {
            return Err(HandoverError::Busy {
                path: path.to_owned(),
                old,
                other: pid,
            });
        }
        Message::Refused {
            reason: Refusal::Version { version },
        } => {
            return Err(HandoverError::Version {
                path: path.to_owned(),
                old,
                theirs: version,
            });
        }
        other => return Err(step(unexpected("Listeners", &other))),
    };
    Ok(Contact::TakeOver(Takeover {
        conn,
        path: path.to_owned(),
        pid: old,
        received: listeners.len(),
        listeners,
        policies,
    }))
}

/// How a hand-over ended, from the new process's side.
pub struct TookOver {
    pub moved: u64,
    pub stayed: u64,
}

impl Takeover {
    /// The received socket for the listener of `kind` configured at `listen`.
    pub(crate) fn take(&mut self, kind: Kind, listen: SocketAddr) -> Option<OwnedFd> {
        let i = self
            .listeners
            .iter()
            .position(|(id, _)| id.kind == kind && id.listen == listen)?;
        Some(self.listeners.swap_remove(i).1)
    }

    /// The listeners whose connections were verified under another identity, trust or policy than
    /// `own` (this process's, by direction and name) gives new ones: one phrase each, e.g.
    /// `listener "internode" (trust, policy)`; a listener this config does not have is named so.
    pub fn policy_differences(
        &self,
        own: &[(String, String, crate::tls::PolicyPrint)],
    ) -> Vec<String> {
        self.policies
            .iter()
            .filter_map(|theirs| {
                let mine = own
                    .iter()
                    .find(|(dir, name, _)| *dir == theirs.direction && *name == theirs.listener);
                match mine {
                    None => Some(format!(
                        "{} listener \"{}\" (not in this config)",
                        theirs.direction, theirs.listener
                    )),
                    Some((_, _, print)) => {
                        let parts = theirs.print.differences(print);
                        (!parts.is_empty()).then(|| {
                            format!(
                                "{} listener \"{}\" ({})",
                                theirs.direction,
                                theirs.listener,
                                parts.join(", ")
                            )
                        })
                    }
                }
            })
            .collect()
    }

    /// How many listening sockets were received.
    pub fn received(&self) -> usize {
        self.received
    }

    /// This process accepts on every listener now: the old one stops accepting, sends the
    /// connections that can move (`adopter` continues each), and drains the rest.
    pub(crate) async fn finish(self, adopter: &Adopter) -> Result<TookOver, HandoverError> {
        let step = |source| HandoverError::Step {
            path: self.path.clone(),
            old: self.pid,
            source,
        };
        send(&self.conn, "Accepting", &Message::Accepting, &[])
            .await
            .map_err(step)?;
        let mut lost = 0;
        let (moved, stayed) = loop {
            match recv(&self.conn, "Done").await.map_err(step)? {
                (
                    Message::Done {
                        moved,
                        stayed,
                        listeners,
                    },
                    _,
                ) => {
                    count_moves(&listeners);
                    break (moved, stayed);
                }
                (Message::Connection { id, meta, state }, fds) => {
                    super::test_pause("adopt").await;
                    // Ours from the acknowledgement on: acknowledged first, so that an old process
                    // that hears nothing resumes it itself.
                    send(&self.conn, "Adopted", &Message::Adopted { id }, &[])
                        .await
                        .map_err(step)?;
                    let (peer, listener) = (meta.peer, meta.listener.clone());
                    if let Err(why) = adopter.adopt(meta, Released { state, fds }) {
                        lost += 1;
                        tracing::warn!(
                            peer = %peer,
                            "connection with {peer} on {listener} from pid {}: {why}; it is closed",
                            self.pid
                        );
                    }
                }
                (other, _) => return Err(step(unexpected("Done", &other))),
            }
        };
        if lost > 0 {
            tracing::warn!(
                "{lost} connection(s) received from pid {} could not continue",
                self.pid
            );
        }
        send(&self.conn, "Bye", &Message::Bye, &[])
            .await
            .map_err(step)?;
        Ok(TookOver { moved, stayed })
    }
}

/// Counts what the old process says moved and stayed, per listener: its own counters went with its
/// `/metrics` listener, which this process serves now. The names are the old config's, bounded by
/// it (a name that no config could hold, or a direction other than the two, is not counted).
fn count_moves(listeners: &[super::protocol::ListenerMoves]) {
    use crate::metrics::{Direction, Listener};
    for l in listeners {
        let dir = match l.direction.as_str() {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            _ => continue,
        };
        let valid = (1..=32).contains(&l.listener.len())
            && l.listener
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            continue;
        }
        let who = Listener::new(dir, l.listener.as_str().into());
        crate::metrics::handover_connections(&who, "moved", l.moved);
        crate::metrics::handover_connections(&who, "stayed", l.stayed);
    }
}
