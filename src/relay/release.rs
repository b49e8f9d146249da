//! Release and resume: a kTLS or spliced-plaintext relay gives up its connection at a quiescent
//! point ([`Released`]: its descriptors and a serialisable [`RelayState`]), and [`resume`] continues
//! it from those parts, in this process or another one (the descriptors travel over `SCM_RIGHTS`).
//! See "Release and resume" in [`super`].

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::poll_loop::arm_reset;
use super::splice::Pump;
use super::{Close, Outcome, Path, RelayLimits, Run};
use crate::metrics::ByteCounters;

/// How a relay's future ends: the connection finished here, or it was released to be resumed.
#[derive(Debug)]
pub enum Finish {
    Done(Outcome),
    Released(Released),
}

/// A connection given up at a quiescent point: everything [`resume`] needs.
///
/// `fds`, on both paths: `[peer socket, backend socket, up pipe read end, up pipe write end, down
/// pipe read end, down pipe write end]` (up: peer -> backend). On the kTLS path the peer socket is
/// the kTLS one; on the plaintext path, the socket whose bytes count as `from_peer`.
#[derive(Debug)]
pub struct Released {
    pub state: RelayState,
    pub fds: Vec<OwnedFd>,
}

impl Released {
    pub fn path(&self) -> Path {
        self.state.path
    }

    /// (from_peer, to_peer): the bytes relayed so far, before the release.
    pub fn bytes(&self) -> (u64, u64) {
        (self.state.from_peer, self.state.to_peer)
    }
}

/// The most plaintext a released kTLS relay carries in its state (`KtlsState::pending`): one control
/// record's worth, which a hand-over message holds. A relay holding more (what rustls had decrypted
/// before kTLS took over) delivers it before it can be released.
pub const MAX_PENDING: usize = 16 * 1024 + 256;

/// Everything of a released relay that is not in its descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayState {
    /// `ktls` or `splice` (a user-space relay is never released).
    pub path: Path,
    pub from_peer: u64,
    pub to_peer: u64,
    /// The pipe peer -> backend.
    pub up: PipeState,
    /// The pipe backend -> peer.
    pub down: PipeState,
    /// kTLS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ktls: Option<KtlsState>,
}

/// A pipe of a released relay: the bytes it holds move with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipeState {
    /// Bytes in the pipe (checked against the pipe on resume).
    pub held: usize,
    /// The pipe may still be grown (false once it has grown or the kernel refused).
    pub grow: bool,
}

/// What a kTLS relay holds besides its descriptors (the keys and sequence numbers stay in the
/// kernel, with the socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KtlsState {
    /// Plaintext from the peer already read into user space, not yet written to the backend.
    pub pending: Vec<u8>,
    /// We are the TLS client (a NewSessionTicket or HelloRequest is legitimate).
    pub client: bool,
    /// The TX key's cipher: the exact record count is read back from the kernel with it.
    pub cipher: StateCipher,
    /// The suite's confidentiality limit in records (the key stops at 7/8 of it).
    pub confidentiality_limit: u64,
}

/// The kTLS cipher of a released connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateCipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// What each of [`Released::fds`] is, in order.
const FD_ROLES: [&str; 6] = [
    "peer socket",
    "backend socket",
    "up pipe read end",
    "up pipe write end",
    "down pipe read end",
    "down pipe write end",
];

/// Continues a released relay from its parts: checks that the descriptors are what the state says
/// (connected TCP sockets; the two ends of a pipe each way, holding the bytes the state counts),
/// registers the sockets with this process's runtime (call it inside one) and rebuilds the relay.
/// Its deadlines start afresh; its byte counts go on from the state's. Nothing is touched before
/// every descriptor has passed its checks; on an error they are closed (a reset: it is armed).
pub fn resume(
    released: Released,
    limits: RelayLimits,
    counters: ByteCounters,
    release: CancellationToken,
) -> io::Result<Run> {
    let running: Pin<Box<dyn Future<Output = Finish> + Send>> = match released.path() {
        Path::Ktls => {
            let (parts, state, tx) = Parts::resume(released, super::ktls::check_resumed)?;
            Box::pin(super::ktls::resume(
                parts, &state, tx, limits, counters, release,
            ))
        }
        _ => {
            let (parts, state, ()) = Parts::resume(released, |_, _| Ok(()))?;
            Box::pin(super::splice::resume(
                parts, &state, limits, counters, release,
            ))
        }
    };
    Ok(Run(super::Running::Boxed(running)))
}

/// A resume refused: which descriptor and why, for the operator.
fn refused(path: Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cannot resume a released {} relay: {what}", path.label()),
    )
}

/// What moves with a released relay on both paths: its two sockets and its two pipes.
pub(super) struct Parts {
    pub(super) peer: TcpStream,
    pub(super) backend: TcpStream,
    pub(super) up: Pump,
    pub(super) down: Pump,
}

impl Parts {
    /// Takes the parts out of this process: the sockets are deregistered from its runtime (their
    /// `SO_LINGER` 0, the armed reset, stays with them). Deregistering cannot fail short of a broken
    /// epoll instance; if it does, the connection ends here, with the reset.
    pub(super) fn release(
        self,
        path: Path,
        from_peer: u64,
        to_peer: u64,
        ktls: Option<KtlsState>,
    ) -> Finish {
        let (up, [up_read, up_write]) = self.up.release();
        let (down, [down_read, down_write]) = self.down.release();
        let sockets = self
            .peer
            .into_std()
            .and_then(|peer| Ok((peer, self.backend.into_std()?)));
        let (peer, backend) = match sockets {
            Ok(s) => s,
            Err(e) => {
                return Finish::Done(Outcome {
                    from_peer,
                    to_peer,
                    close: Close::Io(format!("releasing the relay: {e}")),
                });
            }
        };
        let fds = vec![
            peer.into(),
            backend.into(),
            up_read,
            up_write,
            down_read,
            down_write,
        ];
        let state = RelayState {
            path,
            from_peer,
            to_peer,
            up,
            down,
            ktls,
        };
        Finish::Released(Released { state, fds })
    }

    /// Checks a released relay's descriptors against its state (`check_peer`: what the path needs
    /// of the peer socket besides being TCP) and rebuilds its parts.
    fn resume<T>(
        released: Released,
        check_peer: impl FnOnce(&OwnedFd, &RelayState) -> Result<T, String>,
    ) -> io::Result<(Self, RelayState, T)> {
        let Released { state, fds } = released;
        let (path, count) = (state.path, fds.len());
        match (path, &state.ktls) {
            (Path::Userspace, _) => {
                return Err(refused(path, "the user-space path is never released"));
            }
            (Path::Ktls, None) => return Err(refused(path, "the state has no kTLS part")),
            (Path::Splice, Some(_)) => {
                return Err(refused(path, "the state has a kTLS part"));
            }
            _ => {}
        }
        let Ok([peer, backend, up_read, up_write, down_read, down_write]) =
            <[OwnedFd; 6]>::try_from(fds)
        else {
            return Err(refused(
                path,
                format!("{count} descriptors, expected 6 ({})", FD_ROLES.join(", ")),
            ));
        };
        let what = |i: usize, why: String| {
            refused(path, format!("{} (descriptor {i}): {why}", FD_ROLES[i]))
        };
        tcp_socket(&peer).map_err(|why| what(0, why))?;
        let checked = check_peer(&peer, &state).map_err(|why| what(0, why))?;
        tcp_socket(&backend).map_err(|why| what(1, why))?;
        let pipe = |name: &str, i: usize, why: String| {
            refused(
                path,
                format!("{name} pipe (descriptors {i} and {}): {why}", i + 1),
            )
        };
        let up = Pump::resume(state.up, up_read, up_write).map_err(|why| pipe("up", 2, why))?;
        let down =
            Pump::resume(state.down, down_read, down_write).map_err(|why| pipe("down", 4, why))?;
        let peer = registered(peer).map_err(|e| what(0, e.to_string()))?;
        let backend = registered(backend).map_err(|e| what(1, e.to_string()))?;
        let parts = Self {
            peer,
            backend,
            up,
            down,
        };
        Ok((parts, state, checked))
    }
}

/// Checks that `fd` is a connected TCP socket.
fn tcp_socket(fd: &OwnedFd) -> Result<(), String> {
    let sock = SockRef::from(fd);
    let kind = sock.r#type().map_err(|e| format!("not a socket ({e})"))?;
    let protocol = sock.protocol().map_err(|e| format!("SO_PROTOCOL: {e}"))?;
    if kind != socket2::Type::STREAM || protocol != Some(socket2::Protocol::TCP) {
        return Err(format!(
            "not a TCP socket (type {kind:?}, protocol {protocol:?})"
        ));
    }
    sock.peer_addr()
        .map_err(|e| format!("not a connected socket ({e})"))?;
    Ok(())
}

/// A checked socket, non-blocking, registered with this process's runtime, its reset armed (it was
/// already: `SO_LINGER` travels with the socket; armed again in case it was changed meanwhile).
fn registered(fd: OwnedFd) -> io::Result<TcpStream> {
    let sock = std::net::TcpStream::from(fd);
    sock.set_nonblocking(true)?;
    let sock = TcpStream::from_std(sock)?;
    arm_reset(&sock);
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, IoSliceMut};
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use ringseal_testkit::stream::{MIB, Seeded, expected_hash};
    use ringseal_testkit::within;
    use rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    };
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::sync::{Notify, watch};

    use super::*;
    use crate::relay::{Offload, Relay, plain};

    fn counters() -> ByteCounters {
        ByteCounters {
            from_peer: metrics::Counter::noop(),
            to_peer: metrics::Counter::noop(),
        }
    }

    fn limits() -> RelayLimits {
        RelayLimits {
            idle: None,
            linger: Duration::from_secs(30),
        }
    }

    /// A connected loopback pair with small fixed buffers, so that what is in flight is bounded and a
    /// writer whose reader pauses soon blocks.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let b = l.accept().await.unwrap().0;
        for s in [&a, &b] {
            let s = SockRef::from(s);
            s.set_send_buffer_size(64 * 1024).unwrap();
            s.set_recv_buffer_size(64 * 1024).unwrap();
        }
        (a, b)
    }

    /// One direction of the test traffic, as its writer and reader report it.
    #[derive(Default)]
    struct Progress {
        written: AtomicUsize,
        writer_blocked: AtomicBool,
        read: AtomicUsize,
        changed: Notify,
    }

    impl Progress {
        /// Waits until the reader stopped at `checkpoint` and the writer is blocked: every buffer
        /// between them is full.
        async fn stalled_at(&self, checkpoint: usize) {
            loop {
                let changed = self.changed.notified();
                if self.read.load(Ordering::SeqCst) == checkpoint
                    && self.writer_blocked.load(Ordering::SeqCst)
                {
                    return;
                }
                changed.await;
            }
        }
    }

    /// Writes a seeded stream, noting when the socket takes no more, then FIN.
    async fn write_seeded(w: OwnedWriteHalf, seed: u64, len: usize, p: Arc<Progress>) {
        let mut data = Seeded::new(seed, len);
        while let Some(mut chunk) = data.next_chunk() {
            while !chunk.is_empty() {
                match w.try_write(chunk) {
                    Ok(n) => {
                        chunk = &chunk[n..];
                        p.written.fetch_add(n, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        p.writer_blocked.store(true, Ordering::SeqCst);
                        p.changed.notify_waiters();
                        w.writable().await.unwrap();
                        p.writer_blocked.store(false, Ordering::SeqCst);
                    }
                    Err(e) => panic!("writing the stream: {e}"),
                }
            }
        }
        drop(w);
    }

    /// Reads to the end of the stream (a reset fails), stopping at the limit `allowed` says.
    /// Returns (length, SHA-256).
    async fn read_until_end(
        mut r: OwnedReadHalf,
        p: Arc<Progress>,
        mut allowed: watch::Receiver<usize>,
    ) -> (usize, Vec<u8>) {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let limit = *allowed.borrow_and_update();
            if total >= limit {
                allowed.changed().await.unwrap();
                continue;
            }
            let want = (limit - total).min(buf.len());
            let n = r
                .read(&mut buf[..want])
                .await
                .expect("the stream must end in order (FIN), not with a reset");
            if n == 0 {
                return (total, hash.finalize().to_vec());
            }
            hash.update(&buf[..n]);
            total += n;
            p.read.store(total, Ordering::SeqCst);
            p.changed.notify_waiters();
        }
    }

    /// Moves a released relay the way a hand-over does: its state as JSON and its descriptors over
    /// `SCM_RIGHTS` through a Unix socket; the originals are closed, so only the copies carry it.
    fn through_unix_socket(released: Released) -> Released {
        let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let json = serde_json::to_vec(&released.state).unwrap();
        let fds: Vec<BorrowedFd<'_>> = released.fds.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(6))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let sent = rustix::net::sendmsg(
            &tx,
            &[IoSlice::new(&json)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(sent, json.len());
        drop(fds);
        drop(released);

        let mut buf = vec![0u8; 64 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(6))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &rx,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let state = serde_json::from_slice(&buf[..got.bytes]).unwrap();
        Released { state, fds }
    }

    /// A spliced plaintext relay is released eight times while both directions stream, with bytes
    /// in its pipes, moved through a Unix socket and resumed in a new task: both streams
    /// arrive byte-exact and end with FIN, and the outcome counts every byte.
    #[tokio::test]
    async fn a_spliced_relay_moves_mid_stream_and_loses_nothing() {
        const LEN: usize = 16 * MIB;
        const RELEASES: usize = 8;
        let (client, relay_peer) = pair().await;
        let (relay_backend, server) = pair().await;
        let (client_r, client_w) = client.into_split();
        let (server_r, server_w) = server.into_split();
        let (up, down) = (Arc::new(Progress::default()), Arc::new(Progress::default()));
        let (up_allowed, up_allowed_rx) = watch::channel(0);
        let (down_allowed, down_allowed_rx) = watch::channel(0);
        tokio::spawn(write_seeded(client_w, 1, LEN, up.clone()));
        tokio::spawn(write_seeded(server_w, 2, LEN, down.clone()));
        let up_read = tokio::spawn(read_until_end(server_r, up.clone(), up_allowed_rx));
        let down_read = tokio::spawn(read_until_end(client_r, down.clone(), down_allowed_rx));

        let mut release = CancellationToken::new();
        let mut relay = tokio::spawn(plain(
            relay_peer,
            relay_backend,
            limits(),
            counters(),
            release.clone(),
        ));
        // Releases that found bytes in the pipe (up, down).
        let mut holding = (0, 0);
        for i in 1..=RELEASES {
            let checkpoint = i * 3 * MIB / 2;
            up_allowed.send(checkpoint).unwrap();
            down_allowed.send(checkpoint).unwrap();
            within("both directions stalled", async {
                up.stalled_at(checkpoint).await;
                down.stalled_at(checkpoint).await;
            })
            .await;
            release.cancel();
            let released = match within("the release", relay).await.unwrap() {
                Finish::Released(r) => r,
                Finish::Done(o) => panic!("release {i}: the relay finished instead: {o:?}"),
            };
            let state = &released.state;
            assert_eq!(released.path(), Path::Splice);
            assert!(state.ktls.is_none());
            assert_eq!(released.fds.len(), 6);
            holding.0 += usize::from(state.up.held > 0);
            holding.1 += usize::from(state.down.held > 0);
            // The readers stopped at the checkpoint: at least that much was relayed.
            let (from_peer, to_peer) = released.bytes();
            assert!(from_peer >= checkpoint as u64 && to_peer >= checkpoint as u64);
            for fd in &released.fds[..2] {
                assert_eq!(
                    SockRef::from(fd).linger().unwrap(),
                    Some(Duration::ZERO),
                    "release {i}: the reset must stay armed"
                );
            }

            let released = through_unix_socket(released);
            release = CancellationToken::new();
            let token = release.clone();
            relay = tokio::spawn(async move {
                resume(released, limits(), counters(), token)
                    .expect("resume")
                    .await
            });
        }
        // A stalled relay holds bytes in the pipe of each direction: its writer is blocked, its
        // reader stopped. "Stalled" is seen from outside, so the release may come a moment early
        // (the writer's flag not yet cleared, the relay not yet woken), with an empty pipe: rarely,
        // and not at every one of the releases.
        assert!(
            holding.0 > 0 && holding.1 > 0,
            "no release found bytes in a pipe (up, down): {holding:?}"
        );
        up_allowed.send(usize::MAX).unwrap();
        down_allowed.send(usize::MAX).unwrap();

        let outcome = match within("the relay's end", relay).await.unwrap() {
            Finish::Done(o) => o,
            Finish::Released(r) => panic!("released without being asked: {:?}", r.state),
        };
        assert_eq!(outcome.close, Close::Clean);
        assert_eq!(
            (outcome.from_peer, outcome.to_peer),
            (LEN as u64, LEN as u64)
        );
        let up_got = within("peer -> backend", up_read).await.unwrap();
        let down_got = within("backend -> peer", down_read).await.unwrap();
        assert_eq!(up_got, (LEN, expected_hash(1, LEN)), "peer -> backend");
        assert_eq!(down_got, (LEN, expected_hash(2, LEN)), "backend -> peer");
    }

    /// Once one direction has ended, the relay stays and finishes here even when asked to move.
    #[tokio::test]
    async fn a_half_closed_relay_is_not_released() {
        let (mut client, relay_peer) = pair().await;
        let (relay_backend, mut server) = pair().await;
        let release = CancellationToken::new();
        let relay = tokio::spawn(plain(
            relay_peer,
            relay_backend,
            limits(),
            counters(),
            release.clone(),
        ));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        within("the FIN", server.read_to_end(&mut got))
            .await
            .unwrap();
        assert_eq!(got, b"hello");

        release.cancel();
        let reply = tokio::spawn(async move {
            server.write_all(&[7u8; 300_000]).await.unwrap();
            server.shutdown().await.unwrap();
            server
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        match within("the relay", relay).await.unwrap() {
            Finish::Done(o) => {
                assert_eq!(o.close, Close::Clean);
                assert_eq!((o.from_peer, o.to_peer), (5, 300_000));
            }
            Finish::Released(r) => panic!("a half-closed relay was released: {:?}", r.state),
        }
        within("the reply", reply).await.unwrap();
        assert_eq!(within("the reader", reader).await.unwrap(), 300_000);
    }

    /// rustls holds a user-space relay's TLS state: it never moves, whatever the token says.
    #[tokio::test]
    async fn a_user_space_relay_is_never_released() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let provider = crate::tls::provider();
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        // app <-> client relay <-TLS-> server relay <-> backend, both relays on the user-space path.
        let (tls_client, tls_server) = pair().await;
        let (mut app, client_plain) = pair().await;
        let (server_plain, mut backend) = pair().await;
        let mut client_conn = rustls::Connection::Client(
            rustls::ClientConnection::new(client_config.into(), "localhost".try_into().unwrap())
                .unwrap(),
        );
        let mut server_conn = rustls::Connection::Server(
            rustls::ServerConnection::new(server_config.into()).unwrap(),
        );
        let (c, s) = tokio::join!(
            crate::relay::handshake(&tls_client, &mut client_conn),
            crate::relay::handshake(&tls_server, &mut server_conn),
        );
        c.unwrap();
        s.unwrap();
        let release = CancellationToken::new();
        release.cancel();
        let mut relays = Vec::new();
        for (tls, conn, plain) in [
            (tls_client, client_conn, client_plain),
            (tls_server, server_conn, server_plain),
        ] {
            let relay = Relay::start(tls, conn, plain, Offload::Off).await;
            assert_eq!(relay.path(), Path::Userspace);
            relays.push(tokio::spawn(relay.run(
                limits(),
                counters(),
                release.clone(),
            )));
        }
        let (a, b) = tokio::join!(
            async {
                app.write_all(&[1u8; 200_000]).await.unwrap();
                app.shutdown().await.unwrap();
                let mut got = Vec::new();
                app.read_to_end(&mut got).await.unwrap();
                got.len()
            },
            async {
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                backend.write_all(&got).await.unwrap();
                backend.shutdown().await.unwrap();
                got.len()
            },
        );
        assert_eq!((a, b), (200_000, 200_000));
        for relay in relays {
            match within("a user-space relay", relay).await.unwrap() {
                Finish::Done(o) => assert_eq!(o.close, Close::Clean),
                Finish::Released(_) => panic!("a user-space relay was released"),
            }
        }
    }

    fn ktls_state() -> RelayState {
        RelayState {
            path: Path::Ktls,
            from_peer: 1 << 40,
            to_peer: 12,
            up: PipeState {
                held: 0,
                grow: true,
            },
            down: PipeState {
                held: 0,
                grow: false,
            },
            ktls: Some(KtlsState {
                pending: b"decrypted, not yet delivered".to_vec(),
                client: true,
                cipher: StateCipher::Aes256Gcm,
                confidentiality_limit: 1 << 23,
            }),
        }
    }

    #[test]
    fn the_state_survives_json() {
        let state = ktls_state();
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains(r#""path":"ktls""#), "{json}");
        assert!(json.contains(r#""cipher":"aes256-gcm""#), "{json}");
        assert_eq!(serde_json::from_str::<RelayState>(&json).unwrap(), state);
        let splice = RelayState {
            path: Path::Splice,
            ktls: None,
            ..state
        };
        let json = serde_json::to_string(&splice).unwrap();
        assert!(!json.contains("ktls\":"), "{json}");
        assert_eq!(serde_json::from_str::<RelayState>(&json).unwrap(), splice);
        let unknown = json.replacen('{', r#"{"surprise":1,"#, 1);
        assert!(serde_json::from_str::<RelayState>(&unknown).is_err());
    }

    /// Six descriptors of a relay as a release leaves them (without the relay).
    async fn parts() -> (Vec<OwnedFd>, [TcpStream; 2]) {
        let (peer, far_peer) = pair().await;
        let (backend, far_backend) = pair().await;
        let (up, down) = (
            crate::sys::Pipe::new().unwrap(),
            crate::sys::Pipe::new().unwrap(),
        );
        let fds = vec![
            OwnedFd::from(peer.into_std().unwrap()),
            OwnedFd::from(backend.into_std().unwrap()),
            up.read.into(),
            up.write.into(),
            down.read.into(),
            down.write.into(),
        ];
        (fds, [far_peer, far_backend])
    }

    fn refusal(state: RelayState, fds: Vec<OwnedFd>) -> String {
        match resume(
            Released { state, fds },
            limits(),
            counters(),
            CancellationToken::new(),
        ) {
            Ok(_) => panic!("resumed"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
                e.to_string()
            }
        }
    }

    #[tokio::test]
    async fn resume_refuses_descriptors_that_are_not_what_the_state_says() {
        let splice = RelayState {
            path: Path::Splice,
            ktls: None,
            ..ktls_state()
        };
        // A pipe where the peer socket belongs.
        let (mut fds, _far) = parts().await;
        fds.swap(0, 2);
        let e = refusal(splice.clone(), fds);
        assert!(
            e.starts_with(
                "cannot resume a released splice relay: peer socket (descriptor 0): not a socket"
            ),
            "{e}"
        );
        // A socket where a pipe end belongs.
        let (mut fds, _far) = parts().await;
        let (socket, _other) = pair().await;
        fds[4] = OwnedFd::from(socket.into_std().unwrap());
        let e = refusal(splice.clone(), fds);
        assert!(
            e.contains("down pipe (descriptors 4 and 5): read end: not a pipe but a Socket"),
            "{e}"
        );
        // The ends of a pipe swapped, ends of different pipes, a wrong count of held bytes.
        let (mut fds, _far) = parts().await;
        fds.swap(2, 3);
        let e = refusal(splice.clone(), fds);
        assert!(
            e.contains("up pipe (descriptors 2 and 3): read end: opened for writing"),
            "{e}"
        );
        let (mut fds, _far) = parts().await;
        fds.swap(3, 5);
        let e = refusal(splice.clone(), fds);
        assert!(
            e.contains("the read and write ends belong to different pipes"),
            "{e}"
        );
        let (fds, _far) = parts().await;
        let mut holding = splice.clone();
        holding.down.held = 10;
        let e = refusal(holding, fds);
        assert!(
            e.contains("down pipe (descriptors 4 and 5): it holds 0 bytes, the state says 10"),
            "{e}"
        );
        // Five descriptors, a state that does not fit its path.
        let (mut fds, _far) = parts().await;
        fds.pop();
        let e = refusal(splice.clone(), fds);
        assert!(
            e.contains("5 descriptors, expected 6 (peer socket, "),
            "{e}"
        );
        let (fds, _far) = parts().await;
        let e = refusal(
            RelayState {
                path: Path::Userspace,
                ..splice.clone()
            },
            fds,
        );
        assert!(e.contains("the user-space path is never released"), "{e}");
        // A TCP socket without kTLS where the kTLS one belongs (the tls ULP is not set again).
        let (fds, _far) = parts().await;
        let e = refusal(ktls_state(), fds);
        assert!(
            e.starts_with(
                "cannot resume a released ktls relay: peer socket (descriptor 0): not a kTLS \
                 socket with a AES-256-GCM TX key (getsockopt TLS_TX: "
            ),
            "{e}"
        );
        // The same descriptors as a splice state resume (the checks above refused nothing else).
        let (fds, _far) = parts().await;
        let run = resume(
            Released { state: splice, fds },
            limits(),
            counters(),
            CancellationToken::new(),
        );
        assert!(run.is_ok(), "{:?}", run.err());
    }
}
