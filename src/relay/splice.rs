//! Zero-copy moves between sockets: socket -> pipe -> socket with `splice(2)`, the pages never mapped
//! into user space. [`Pump`] is one direction's pipe (used by the kTLS path too); [`plain`] relays
//! plaintext both ways (permissive mode's plaintext legs).
//!
//! On [`plain`]'s legs FIN is the orderly end and passes through as FIN; a reset, a deadline or an
//! abort of the other direction stops both directions' reads, delivers what the pipes hold, and
//! [`Releasable`] then resets both legs (the close semantics of [`super`]).
//!
//! A pump is filled only when it is empty, so `EAGAIN` from filling always means "the source has
//! nothing", never "the pipe is full", and is drained completely before the next fill. A pipe holds
//! 64 KiB by default (16 pages; fewer when the user exceeds /proc/sys/fs/pipe-user-pages-soft, which
//! costs throughput, not correctness). A fill that fills the pipe (a bulk stream) grows it to
//! [`MAX_PIPE`], so that a stream moves in fewer, larger splices; quiet connections keep the default
//! (the kernel allocates a pipe's pages only while they hold data, but the ring of page slots grows
//! with the size). Each direction of a connection has its own pipe: two descriptors per direction,
//! six per connection with the two sockets.

use std::future::{Future, Ready};
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll};

use rustix::fs::{FileType, OFlags};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::poll_loop::{Deadlines, Directions, Releasable, Release, Side};
use super::release::{Parts, PipeState, RelayState};
use super::{Close, Finish, Outcome, Path, RelayLimits};
use crate::metrics::ByteCounters;
use crate::sys;

/// What one splice into a pipe asks for on the kTLS path: the default pipe size.
pub(super) const CHUNK: usize = 64 * 1024;
/// What a pipe grows to once a fill has filled it: the default /proc/sys/fs/pipe-max-size.
const MAX_PIPE: usize = 1024 * 1024;

/// Runs a non-blocking system call on `sock`; when it would block, clears tokio's readiness, registers
/// for the next readiness event and returns `Pending` (or retries at once if it became ready meanwhile).
pub(super) fn poll_io<T>(
    cx: &mut Context<'_>,
    sock: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        match sock.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let ready = if interest.is_readable() {
                    sock.poll_read_ready(cx)
                } else {
                    sock.poll_write_ready(cx)
                };
                match ready {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return Poll::Ready(r),
        }
    }
}

/// One direction's pipe and how many bytes it holds.
pub(super) struct Pump {
    pipe: sys::Pipe,
    held: usize,
    /// The pipe's size as far as we know; `grow` is false once it has grown or cannot.
    capacity: usize,
    grow: bool,
}

impl Pump {
    pub(super) fn new() -> io::Result<Self> {
        Ok(Self {
            pipe: sys::Pipe::new()?,
            held: 0,
            capacity: CHUNK,
            grow: true,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Fills the empty pipe from `src` with at most `max` (> 0) bytes: `Ok(0)` is end of stream.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        debug_assert!(self.is_empty() && max > 0);
        let to = self.pipe.write.as_fd();
        let len = max.min(self.capacity);
        let r = poll_io(cx, src, Interest::READABLE, || {
            sys::splice(src.as_fd(), to, len)
        });
        if let Poll::Ready(Ok(n)) = r {
            self.held += n;
            if n == self.capacity && self.grow && max > self.capacity {
                // Over the user's pipe-page allowance (EPERM) it stays as it is, for good.
                self.grow = false;
                if let Ok(size) = sys::set_pipe_size(to, MAX_PIPE) {
                    self.capacity = size;
                }
            }
        }
        r
    }

    /// Moves up to `max` of the held bytes to `dst`.
    pub(super) fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let from = self.pipe.read.as_fd();
        let len = self.held.min(max);
        let r = poll_io(cx, dst, Interest::WRITABLE, || {
            sys::splice(from, dst.as_fd(), len)
        });
        if let Poll::Ready(Ok(n)) = r {
            self.held -= n;
        }
        r
    }

    /// Takes the pump apart for a release: what the state keeps, and its pipe's ends (read, write)
    /// with the bytes they hold.
    pub(super) fn release(self) -> (PipeState, [OwnedFd; 2]) {
        let state = PipeState {
            held: self.held,
            grow: self.grow,
        };
        (state, [self.pipe.read.into(), self.pipe.write.into()])
    }

    /// Rebuilds a released pump from its pipe's ends, which must be the read and the write end of
    /// one pipe holding exactly `state.held` bytes; `Err` says which check failed.
    pub(super) fn resume(state: PipeState, read: OwnedFd, write: OwnedFd) -> Result<Self, String> {
        let read_stat = pipe_end(&read, true).map_err(|e| format!("read end: {e}"))?;
        let write_stat = pipe_end(&write, false).map_err(|e| format!("write end: {e}"))?;
        if (read_stat.st_dev, read_stat.st_ino) != (write_stat.st_dev, write_stat.st_ino) {
            return Err("the read and write ends belong to different pipes".into());
        }
        let held = rustix::io::ioctl_fionread(&read).map_err(|e| format!("FIONREAD: {e}"))?;
        if held != state.held as u64 {
            return Err(format!(
                "it holds {held} bytes, the state says {}",
                state.held
            ));
        }
        let capacity =
            rustix::pipe::fcntl_getpipe_size(&write).map_err(|e| format!("F_GETPIPE_SZ: {e}"))?;
        Ok(Self {
            pipe: sys::Pipe {
                read: read.into(),
                write: write.into(),
            },
            held: state.held,
            capacity,
            grow: state.grow,
        })
    }

    /// Throws the held bytes away (their destination is gone).
    pub(super) fn discard(&mut self) {
        let mut scratch = [0u8; 4096];
        while self.held > 0 {
            match (&self.pipe.read).read(&mut scratch) {
                Ok(n) if n > 0 => self.held -= n.min(self.held),
                _ => {
                    // Cannot happen with bytes held; never loop on it.
                    self.held = 0;
                }
            }
        }
    }
}

/// Checks that `fd` is a pipe end opened for reading or for writing, and makes it non-blocking (it
/// is already, unless another process changed its flags: they belong to the open pipe, which
/// every copy of the descriptor shares).
fn pipe_end(fd: &OwnedFd, read: bool) -> Result<rustix::fs::Stat, String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::Fifo {
        return Err(format!("not a pipe but a {kind:?}"));
    }
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| format!("F_GETFL: {e}"))?;
    let (mode, other) = match read {
        true => (OFlags::RDONLY, "writing"),
        false => (OFlags::WRONLY, "reading"),
    };
    if flags & OFlags::RWMODE != mode {
        return Err(format!("opened for {other}"));
    }
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK).map_err(|e| format!("F_SETFL: {e}"))?;
    Ok(stat)
}

/// One direction of a plaintext relay.
struct Flow {
    pump: Pump,
    /// The source ended (EOF or error); finish once the pipe is empty.
    src_done: bool,
    /// The destination cannot be written any more; what the pipe holds is discarded.
    dst_dead: bool,
    done: bool,
    bytes: u64,
}

impl Flow {
    fn new() -> io::Result<Self> {
        Ok(Self::resumed(Pump::new()?, 0))
    }

    fn resumed(pump: Pump, bytes: u64) -> Self {
        Self {
            pump,
            src_done: false,
            dst_dead: false,
            done: false,
            bytes,
        }
    }

    /// Both ends open and nothing ended: the flow can move to another relay as it is.
    fn open(&self) -> bool {
        !(self.src_done || self.dst_dead || self.done)
    }
}

/// Permissive mode's plaintext legs, spliced both ways.
pub(super) struct PlainRelay {
    peer: TcpStream,
    backend: TcpStream,
    /// peer -> backend
    up: Flow,
    /// backend -> peer
    down: Flow,
    /// The abort's cause (`None`: everything so far was in order).
    close: Option<Close>,
    counters: ByteCounters,
    deadlines: Deadlines,
}

/// One end of a plaintext flow: its socket, and which side of the relay it is (for the outcome).
#[derive(Clone, Copy)]
struct Leg<'a> {
    sock: &'a TcpStream,
    side: Side,
}

/// Moves `flow` from `src` to `dst` until it would block; true if anything moved. Once `close` is set
/// (the connection aborts), nothing more is read from `src` and no FIN is sent.
fn poll_flow(
    cx: &mut Context<'_>,
    flow: &mut Flow,
    src: Leg<'_>,
    dst: Leg<'_>,
    close: &mut Option<Close>,
    count: &metrics::Counter,
) -> bool {
    let (src, src_side, dst, dst_side) = (src.sock, src.side, dst.sock, dst.side);
    let mut progress = false;
    while !flow.done {
        if !flow.pump.is_empty() {
            if flow.dst_dead {
                flow.pump.discard();
                progress = true;
                continue;
            }
            match flow.pump.poll_drain(cx, dst, usize::MAX) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(n)) => {
                    flow.bytes += n as u64;
                    count.increment(n as u64);
                }
                Poll::Ready(Err(e)) => {
                    close.get_or_insert_with(|| dst_side.close_for(&e));
                    flow.dst_dead = true;
                }
            }
            progress = true;
            continue;
        }
        if flow.src_done || close.is_some() {
            if !flow.dst_dead && close.is_none() {
                // FIN after everything was written: the other side sees the end of the stream.
                let _ = SockRef::from(dst).shutdown(Shutdown::Write);
            }
            flow.done = true;
            return true;
        }
        match flow.pump.poll_fill(cx, src, usize::MAX) {
            Poll::Pending => return progress,
            Poll::Ready(Ok(0)) => flow.src_done = true,
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => {
                close.get_or_insert_with(|| src_side.close_for(&e));
                flow.src_done = true;
            }
        }
        progress = true;
    }
    progress
}

impl Directions for PlainRelay {
    fn step(&mut self, cx: &mut Context<'_>) -> bool {
        let peer = Leg {
            sock: &self.peer,
            side: Side::Peer,
        };
        let backend = Leg {
            sock: &self.backend,
            side: Side::Backend,
        };
        let up = poll_flow(
            cx,
            &mut self.up,
            peer,
            backend,
            &mut self.close,
            &self.counters.from_peer,
        );
        let down = poll_flow(
            cx,
            &mut self.down,
            backend,
            peer,
            &mut self.close,
            &self.counters.to_peer,
        );
        up || down
    }

    fn finished(&self) -> (bool, bool) {
        (self.up.done, self.down.done)
    }

    fn aborted(&self) -> bool {
        self.close.is_some()
    }

    fn deadlines(&mut self) -> &mut Deadlines {
        &mut self.deadlines
    }

    fn sockets(&self) -> [&TcpStream; 2] {
        [&self.peer, &self.backend]
    }

    fn drain_parts(&mut self) -> (&mut Deadlines, [Option<&TcpStream>; 2]) {
        let peer = (!self.down.dst_dead).then_some(&self.peer);
        let backend = (!self.up.dst_dead).then_some(&self.backend);
        (&mut self.deadlines, [peer, backend])
    }

    fn end(&mut self, close: Option<Close>) -> Outcome {
        if let Some(close) = close {
            self.close.get_or_insert(close);
        }
        Outcome {
            from_peer: self.up.bytes,
            to_peer: self.down.bytes,
            close: self.close.take().unwrap_or(Close::Clean),
        }
    }

    fn releasable(&self) -> bool {
        self.close.is_none() && self.up.open() && self.down.open()
    }
}

impl Release for PlainRelay {
    fn release(self) -> Finish {
        let parts = Parts {
            peer: self.peer,
            backend: self.backend,
            up: self.up.pump,
            down: self.down.pump,
        };
        parts.release(Path::Splice, self.up.bytes, self.down.bytes, None)
    }
}

/// Continues a released plaintext relay (its parts checked by [`super::resume`]).
pub(super) fn resume(
    parts: Parts,
    state: &RelayState,
    limits: RelayLimits,
    counters: ByteCounters,
    release: CancellationToken,
) -> impl Future<Output = Finish> + Send + use<> {
    let relay = PlainRelay {
        peer: parts.peer,
        backend: parts.backend,
        up: Flow::resumed(parts.up, state.from_peer),
        down: Flow::resumed(parts.down, state.to_peer),
        close: None,
        counters,
        deadlines: Deadlines::new(limits),
    };
    Releasable::new(relay, release)
}

/// A plaintext relay's future (not an `async fn`: the relay is held once, it is part of the
/// connection's task).
pub(super) fn plain(
    peer: TcpStream,
    backend: TcpStream,
    limits: RelayLimits,
    counters: ByteCounters,
    release: CancellationToken,
) -> Either<Ready<Finish>, Releasable<PlainRelay>> {
    let flows = Flow::new().and_then(|up| Ok((up, Flow::new()?)));
    let (up, down) = match flows {
        Ok(f) => f,
        // Out of descriptors or pipe memory: nothing was read, so nothing is lost.
        Err(e) => {
            return Either::Left(std::future::ready(Finish::Done(Outcome {
                from_peer: 0,
                to_peer: 0,
                close: Close::Io(format!("cannot create a pipe: {e}")),
            })));
        }
    };
    let relay = PlainRelay {
        peer,
        backend,
        up,
        down,
        close: None,
        counters,
        deadlines: Deadlines::new(limits),
    };
    Either::Right(Releasable::new(relay, release))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (a, l.accept().await.unwrap().0)
    }

    /// An aborting relay finishes here even when asked to move: both pipes hold bytes for
    /// destinations that do not read, and the abort waits to deliver them before the resets.
    #[tokio::test]
    async fn an_aborting_relay_is_not_released() {
        use crate::relay::poll_loop::{Driven, arm_reset, drive_until};

        let (client, peer) = pair().await;
        let (backend, server) = pair().await;
        arm_reset(&peer);
        arm_reset(&backend);
        let limits = RelayLimits {
            idle: None,
            linger: std::time::Duration::from_secs(30),
        };
        let mut relay = PlainRelay {
            peer,
            backend,
            up: Flow::new().unwrap(),
            down: Flow::new().unwrap(),
            close: None,
            counters: ByteCounters {
                from_peer: metrics::Counter::noop(),
                to_peer: metrics::Counter::noop(),
            },
            deadlines: Deadlines::new(limits),
        };
        // Both ends write and neither reads, until nothing moves and both pipes hold bytes.
        let chunk = vec![5u8; 64 * 1024];
        let (mut sent, mut rounds) = ([0usize; 2], 0);
        loop {
            rounds += 1;
            assert!(rounds < 100_000, "the relay never filled up");
            let mut wrote = false;
            for (i, end) in [&client, &server].into_iter().enumerate() {
                if let Ok(n) = end.try_write(&chunk) {
                    sent[i] += n;
                    wrote = true;
                }
            }
            let moved = poll_fn(|cx| Poll::Ready(relay.step(cx))).await;
            if !wrote && !moved && !relay.up.pump.is_empty() && !relay.down.pump.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(relay.releasable(), "stalled, in order: releasable");

        // An abort, as when the peer's reset has been read: what is held must still be delivered.
        relay.close = Some(Close::PeerReset);
        match poll_fn(|cx| Poll::Ready(drive_until(&mut relay, cx, true))).await {
            Poll::Pending => {}
            Poll::Ready(Driven::Release) => panic!("an aborting relay was released"),
            Poll::Ready(Driven::Done(o)) => panic!("ended before delivering: {o:?}"),
        }

        let read = |mut end: TcpStream| async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0;
            loop {
                match end.read(&mut buf).await {
                    Ok(0) => return (got, None),
                    Ok(n) => got += n,
                    Err(e) => return (got, Some(e.kind())),
                }
            }
        };
        let (client_got, server_got) = (tokio::spawn(read(client)), tokio::spawn(read(server)));
        let outcome = match poll_fn(|cx| drive_until(&mut relay, cx, true)).await {
            Driven::Done(o) => o,
            Driven::Release => panic!("an aborting relay was released"),
        };
        assert_eq!(outcome.close, Close::PeerReset);
        assert_eq!(outcome.from_peer, relay.up.bytes);
        drop(relay);
        // Everything the relay had read arrived, then the reset (no FIN).
        let (got, end) = server_got.await.unwrap();
        assert_eq!(end, Some(io::ErrorKind::ConnectionReset));
        assert_eq!(got as u64, outcome.from_peer);
        let (got, end) = client_got.await.unwrap();
        assert_eq!(end, Some(io::ErrorKind::ConnectionReset));
        assert_eq!(got as u64, outcome.to_peer);
        assert!(outcome.from_peer > 0 && outcome.from_peer < sent[0] as u64);
    }

    /// A pipe grows once a fill has filled it, and then moves more per splice; a fill limited to the
    /// default size (the kTLS path) never grows it.
    #[tokio::test]
    async fn a_filled_pipe_grows_and_carries_more_per_fill() {
        let (mut tx, src) = pair().await;
        let (dst, mut rx) = pair().await;
        let sent: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move { tx.write_all(&sent).await.unwrap() })
        };
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut pump = Pump::new().unwrap();
        let mut fills = Vec::new();
        let mut moved = 0;
        while moved < sent.len() {
            let n = poll_fn(|cx| pump.poll_fill(cx, &src, usize::MAX))
                .await
                .unwrap();
            fills.push(n);
            while !pump.is_empty() {
                poll_fn(|cx| pump.poll_drain(cx, &dst, usize::MAX))
                    .await
                    .unwrap();
            }
            moved += n;
        }
        writer.await.unwrap();
        drop(dst);
        assert_eq!(reader.await.unwrap(), sent, "bytes changed on the way");
        assert_eq!(pump.capacity, MAX_PIPE, "fills: {fills:?}");
        assert!(
            fills.iter().any(|&n| n > CHUNK),
            "no fill moved more than the default pipe size: {fills:?}"
        );

        let (mut tx, src) = pair().await;
        let (dst, _rx) = pair().await;
        tx.write_all(&sent[..200_000]).await.unwrap();
        let mut pump = Pump::new().unwrap();
        let mut moved = 0;
        while moved < 200_000 {
            moved += poll_fn(|cx| pump.poll_fill(cx, &src, CHUNK)).await.unwrap();
            while !pump.is_empty() {
                poll_fn(|cx| pump.poll_drain(cx, &dst, usize::MAX))
                    .await
                    .unwrap();
            }
        }
        assert_eq!(
            pump.capacity, CHUNK,
            "a fill bounded by CHUNK grew the pipe"
        );
    }
}
