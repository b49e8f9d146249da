//! The hand-over's transport: a Unix `SOCK_SEQPACKET` socket (message boundaries kept, descriptors
//! passed per message with `SCM_RIGHTS`), driven by tokio's readiness, and the peer's credentials
//! (`SO_PEERCRED`). Every call through rustix: no `unsafe` here.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::unix::AsyncFd;

/// The largest message either side sends or accepts: a listener list is a few KiB, one connection's
/// state at most about 72 KiB (`relay::MAX_PENDING` bytes of plaintext as JSON numbers); a peer that
/// sends more is not a ringseal of this version. Under the default socket buffer (`wmem_default`,
/// 208 KiB), which bounds a SEQPACKET message.
pub const MAX_MESSAGE: usize = 128 * 1024;
/// The most descriptors one message carries (one per listening socket; a connection needs at most 6):
/// what arrives beyond it is cut by the kernel (`MSG_CTRUNC`) and the message refused.
pub const MAX_FDS: usize = 64;

/// One end of a hand-over connection.
pub struct Seq {
    fd: AsyncFd<OwnedFd>,
}

/// Who is at the other end (`SO_PEERCRED`: recorded by the kernel at connect, not forgeable).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

/// This process's effective uid (what `SO_PEERCRED` reports of it).
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Registers `fd` with tokio's reactor. `AsyncFd::new` is deprecated because a `T` could hand out
/// another descriptor than the one registered; an `OwnedFd` owns one descriptor for its whole life and
/// closes it only after the `AsyncFd` has deregistered it, which is the I/O safety that `register`'s
/// `unsafe` contract asks for.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

impl Seq {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self { fd: register(fd)? })
    }

    /// Connects the socket at `path`. ECONNREFUSED: the file is there but no process listens on it.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // Blocking: a Unix connect completes at once or fails; only a full backlog makes it wait, and
        // SO_SNDTIMEO bounds that wait.
        let limit = Some(super::STEP_TIMEOUT);
        rustix::net::sockopt::set_socket_timeout(&fd, rustix::net::sockopt::Timeout::Send, limit)?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        Self::new(fd)
    }

    /// The process at the other end.
    pub fn peer(&self) -> io::Result<Peer> {
        let cred = rustix::net::sockopt::socket_peercred(self.fd.get_ref())?;
        Ok(Peer {
            pid: cred.pid.as_raw_nonzero().get(),
            uid: cred.uid.as_raw(),
        })
    }

    /// Sends one message with `fds` attached (at most [`MAX_FDS`]).
    pub async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(io::Error::other(format!(
                "message of {} bytes with {} descriptors is over the limit ({MAX_MESSAGE} bytes, \
                 {MAX_FDS} descriptors)",
                bytes.len(),
                fds.len()
            )));
        }
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::other(
                        "descriptors do not fit the control buffer",
                    ));
                }
                // NOSIGNAL: a peer that went away is an EPIPE here, not a SIGPIPE for the process.
                let flags = SendFlags::NOSIGNAL;
                Ok(rustix::net::sendmsg(
                    fd.get_ref(),
                    &[IoSlice::new(bytes)],
                    &mut control,
                    flags,
                )?)
            });
            match sent {
                Ok(Ok(n)) if n == bytes.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::other(format!(
                        "sent {n} of {} bytes of a message",
                        bytes.len()
                    )));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message and the descriptors that came with it; `None` when the peer closed. A message
    /// over [`MAX_MESSAGE`] bytes or [`MAX_FDS`] descriptors is an error (its descriptors are closed).
    pub async fn recv(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|fd| {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    fd.get_ref(),
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds = Vec::new();
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(r) = m {
                        fds.extend(r);
                    }
                }
                Ok((msg, fds))
            });
            let (msg, fds) = match got {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            if msg
                .flags
                .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
            {
                return Err(io::Error::other(format!(
                    "a message over {MAX_MESSAGE} bytes or {MAX_FDS} descriptors: not a ringseal \
                     hand-over peer of this version"
                )));
            }
            // Zero bytes is the end of the stream: this protocol never sends an empty message.
            if msg.bytes == 0 && fds.is_empty() {
                return Ok(None);
            }
            buf.truncate(msg.bytes);
            return Ok(Some((buf, fds)));
        }
    }
}

/// The serving side's socket at a path, which it replaces atomically and removes (only if it is still
/// its own) when dropped.
pub struct SeqListener {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    /// (device, inode) of the socket file this process made: a newer process's file at the same path
    /// is never removed.
    id: (u64, u64),
    /// Set once a new process takes over: its socket replaces this one at the path. Shared with the
    /// task running the hand-over, so that it holds however this listener is dropped (also by the
    /// runtime shutting down before the serving task saw its stop).
    keep: Arc<AtomicBool>,
}

impl SeqListener {
    /// Binds a temporary name beside `path`, makes it 0600 before it listens (no connect succeeds
    /// earlier), then renames it over `path`: once the path existed it never goes missing, and a stale
    /// file left by a dead process is replaced.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("the socket path has no file name"))?;
        let mut tmp_name = name.to_owned();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(&tmp)?)?;
        let placed = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            rustix::net::listen(&fd, 8)?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            fd: register(fd)?,
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
            keep: Arc::default(),
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Seq> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                Ok(rustix::net::accept_with(
                    fd.get_ref(),
                    SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                )?)
            }) {
                Ok(r) => return Seq::new(r?),
                Err(_would_block) => continue,
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// While set, the socket file is left in place when this listener is dropped: the process taking
    /// over replaces it (a moment without the file would send a third process to bind ports that are
    /// taken, and removing it by name could remove the new process's file, renamed over it between
    /// the look at its inode and the removal).
    pub fn keeper(&self) -> Arc<AtomicBool> {
        self.keep.clone()
    }
}

impl Drop for SeqListener {
    fn drop(&mut self) {
        if !self.keep.load(Ordering::SeqCst)
            && let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[tokio::test]
    async fn messages_keep_their_boundaries_and_carry_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let listener = SeqListener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let client = Seq::connect(&path).unwrap();
        let server = listener.accept().await.unwrap();
        assert_eq!(server.peer().unwrap().uid, own_uid());
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        client.send(b"one", &[file.as_fd()]).await.unwrap();
        client.send(b"two", &[]).await.unwrap();
        let (m, fds) = server.recv().await.unwrap().unwrap();
        assert_eq!((m.as_slice(), fds.len()), (&b"one"[..], 1));
        let (m, fds) = server.recv().await.unwrap().unwrap();
        assert_eq!((m.as_slice(), fds.len()), (&b"two"[..], 0));
        // The largest message allowed goes through whole, with a connection's six descriptors.
        let big: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
        let six = [file.as_fd(); 6];
        client.send(&big, &six).await.unwrap();
        let (m, fds) = server.recv().await.unwrap().unwrap();
        assert_eq!((m == big, fds.len()), (true, 6));
        drop(client);
        assert!(server.recv().await.unwrap().is_none());
        // Too many descriptors are refused before anything is sent.
        let many: Vec<_> = (0..=MAX_FDS).map(|_| file.as_fd()).collect();
        assert!(server.send(b"x", &many).await.is_err());
        drop(listener);
        assert!(!path.exists(), "its own socket file is removed");
    }

    #[test]
    fn a_stale_file_is_replaced_and_a_newer_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        std::fs::write(&path, b"stale").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let first = SeqListener::bind(&path).unwrap();
        let second = SeqListener::bind(&path).unwrap();
        drop(first);
        assert!(path.exists(), "the newer process's socket stays");
        drop(second);
        assert!(!path.exists());
    }

    /// Once a hand-over has started, the old listener leaves the path alone however it is dropped:
    /// the taker renames its own file over it, and a removal by name racing that rename would take
    /// the taker's file (seen once in CI: the next process found no socket and started alone).
    #[test]
    fn a_listener_whose_hand_over_started_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let old = SeqListener::bind(&path).unwrap();
        old.keeper().store(true, Ordering::SeqCst);
        drop(old);
        assert!(path.exists(), "the file is the taker's to replace");
    }
}
