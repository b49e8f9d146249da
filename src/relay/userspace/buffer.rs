//! The relay's byte buffers. A connection holds no buffer while it is quiet: each is lent from the
//! worker thread's [`SPARE`] for one poll and given back at the end of it if it is empty then; a read
//! that fills a buffer grows it, and the connection keeps the grown one (a bulk stream) until
//! [`SHRINK_AFTER`] without traffic.

use std::cell::RefCell;
use std::time::Duration;

/// The size of a buffer before it grows: 16 KiB, one full TLS record. A connection holds no buffer of
/// this size while it is quiet: each is lent from the worker thread's [`SPARE`] for one poll and given
/// back at the end of it if it is empty then (small messages, gossip and mutations, are relayed within
/// the poll that read them). The first read that fills a buffer grows it, and the connection keeps
/// that one (a bulk stream) until [`SHRINK_AFTER`].
const MIN_BUF: usize = 16 * 1024;
/// Empty [`MIN_BUF`] buffers a worker thread keeps for lending; a connection uses at most three at
/// once (`cin`, `pin`, `pout`).
const SPARE_KEPT: usize = 4;

thread_local! {
    /// The worker thread's empty buffers of [`MIN_BUF`], lent to connections for one poll.
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A [`MIN_BUF`] buffer from the thread's [`SPARE`], or a new one.
fn borrow_spare() -> Box<[u8]> {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| vec![0; MIN_BUF].into_boxed_slice())
}

/// Gives an empty [`MIN_BUF`] buffer back to the thread's [`SPARE`] (or frees it when that is full).
fn return_spare(buf: Box<[u8]>) {
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_KEPT {
            spare.push(buf);
        }
    });
}

/// Buffers that sockets are read into (`cin`, `pin`) grow to 768 KiB once a read fills them: a reader
/// that was scheduled late drains everything queued in one `recv`, so fewer reads and wake-ups per
/// byte (smaller measured costlier per byte, larger no better: README, *Benchmarks*).
pub(super) const MAX_IN: usize = 768 * 1024;
/// What is written to a socket at once (`pout`, and rustls's send queue) grows to 256 KiB: 16 full
/// records per `send`/`writev`. Larger writes measured worse, more so on a busy machine.
pub(super) const MAX_OUT: usize = 256 * 1024;
/// Grown buffers are released once the connection has moved nothing for this long, so that only
/// connections streaming right now hold large buffers (about 2 MiB at most each), not every connection
/// that ever did.
pub(super) const SHRINK_AFTER: Duration = Duration::from_secs(5);

/// A byte buffer whose unconsumed bytes are `data[pos..len]`. Reads append at `len`; once everything
/// is consumed both go back to 0 (and the buffer grows then, if the last fill asked for it).
pub(super) struct Buf {
    data: Box<[u8]>,
    pos: usize,
    len: usize,
    /// The size it grows to.
    max: usize,
    grow: bool,
}

impl Buf {
    /// Allocated at the first read into it.
    pub(super) fn new(max: usize) -> Self {
        Self {
            data: Box::default(),
            pos: 0,
            len: 0,
            max,
            grow: false,
        }
    }

    /// Grown beyond [`MIN_BUF`].
    pub(super) fn is_grown(&self) -> bool {
        self.data.len() > MIN_BUF
    }

    /// Gives a [`MIN_BUF`] buffer back to the thread's [`SPARE`] if it is empty (the end of every
    /// poll): a quiet connection holds none.
    pub(super) fn return_if_idle(&mut self) {
        if self.is_empty() && self.data.len() == MIN_BUF && !self.grow {
            return_spare(std::mem::take(&mut self.data));
        }
    }

    /// Released (allocated again at the next read) if it is grown and empty.
    pub(super) fn shrink(&mut self) {
        if self.is_grown() && self.is_empty() {
            self.data = Box::default();
            self.pos = 0;
            self.len = 0;
        }
    }

    pub(super) fn pending(&self) -> &[u8] {
        &self.data[self.pos..self.len]
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos == self.len
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.len {
            self.clear();
        }
    }

    pub(super) fn clear(&mut self) {
        self.pos = 0;
        self.len = 0;
        if self.grow {
            // Once per bulk transfer (see SHRINK_AFTER), not per chunk.
            self.grow = false;
            let small = std::mem::replace(&mut self.data, vec![0; self.max].into_boxed_slice());
            if small.len() == MIN_BUF {
                return_spare(small);
            }
        }
    }

    /// Where the next read goes: the free tail (empty when the buffer is full).
    pub(super) fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = borrow_spare();
        }
        &mut self.data[self.len..]
    }

    /// `n` bytes were read into [`Buf::spare`].
    pub(super) fn filled(&mut self, n: usize) {
        self.len += n;
        if self.len == self.data.len() && self.data.len() < self.max {
            self.grow = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Buf, MAX_IN, MIN_BUF};

    fn fill(b: &mut Buf, n: usize) {
        let spare = b.spare();
        assert!(spare.len() >= n);
        spare[..n].fill(7);
        b.filled(n);
    }

    #[test]
    fn a_buffer_stays_small_until_a_read_fills_it() {
        let mut b = Buf::new(MAX_IN);
        assert!(b.data.is_empty(), "nothing allocated before the first read");
        fill(&mut b, 1000);
        assert_eq!(b.pending().len(), 1000);
        b.consume(400);
        assert_eq!(b.pending().len(), 600);
        b.consume(600);
        assert!(b.is_empty());
        // Emptied: the next read starts at the front, and the buffer did not grow.
        assert_eq!(b.spare().len(), MIN_BUF);
        assert!(!b.is_grown());
    }

    #[test]
    fn a_full_buffer_grows_once_it_is_empty() {
        let mut b = Buf::new(MAX_IN);
        fill(&mut b, MIN_BUF - 10);
        fill(&mut b, 10);
        assert!(b.spare().is_empty());
        // Still full of unconsumed bytes: nothing is moved or reallocated under them.
        b.consume(MIN_BUF / 2);
        assert!(b.spare().is_empty());
        assert_eq!(b.pending().len(), MIN_BUF / 2);
        b.consume(MIN_BUF / 2);
        assert_eq!(b.spare().len(), MAX_IN);
        fill(&mut b, MAX_IN);
        b.clear();
        assert_eq!(b.spare().len(), MAX_IN);
    }

    #[test]
    fn an_empty_small_buffer_goes_back_to_the_thread() {
        let mut b = Buf::new(MAX_IN);
        fill(&mut b, 100);
        b.return_if_idle();
        assert_eq!(
            b.pending().len(),
            100,
            "bytes still waiting keep their buffer"
        );
        b.consume(100);
        b.return_if_idle();
        assert!(b.data.is_empty(), "a quiet connection holds no buffer");
        assert_eq!(b.spare().len(), MIN_BUF, "the next read borrows one again");
        // A read that fills it: a stream, which keeps its grown buffer.
        fill(&mut b, MIN_BUF);
        b.clear();
        b.return_if_idle();
        assert!(b.is_grown());
    }

    #[test]
    fn a_grown_buffer_shrinks_only_when_empty() {
        let mut b = Buf::new(MAX_IN);
        fill(&mut b, MIN_BUF);
        b.clear();
        assert!(b.is_grown());
        fill(&mut b, 100);
        b.shrink();
        assert!(b.is_grown(), "bytes still waiting are never dropped");
        assert_eq!(b.pending().len(), 100);
        b.consume(100);
        b.shrink();
        assert!(!b.is_grown());
        assert!(b.data.is_empty(), "released");
        assert_eq!(b.spare().len(), MIN_BUF);
    }
}
