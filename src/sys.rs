//! The kernel interfaces that need `unsafe`: kernel TLS (the `tls` ULP, `SOL_TLS` keys, records of a
//! given type), `splice(2)`, pipes, `recv(MSG_PEEK)` into a plain byte slice, the bytes a socket has
//! received (`FIONREAD`) and its unacknowledged bytes (`SIOCOUTQ`), and interface indexes. The only
//! module of the crate allowed `unsafe`; every block says why it is sound. Callers get safe functions
//! over borrowed descriptors and plain byte slices.
//!
//! Everything here is non-blocking: the sockets are tokio's (O_NONBLOCK), pipes are created O_NONBLOCK,
//! splice gets SPLICE_F_NONBLOCK and recvmsg/sendmsg MSG_DONTWAIT, so `WouldBlock` comes back instead of
//! a blocked runtime thread.

use std::fs::File;
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A TLS record's content type (RFC 8446 5.1).
pub const RECORD_ALERT: u8 = 21;
pub const RECORD_HANDSHAKE: u8 = 22;
pub const RECORD_APPLICATION_DATA: u8 = 23;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_len(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Whether a network interface has this index (an IPv6 scope id such as `%2` names one). std has no
/// safe wrapper for `if_indextoname(3)`.
pub fn interface_exists(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` is IF_NAMESIZE bytes, the size if_indextoname writes at most (its contract); the
    // returned pointer is only compared with null.
    !unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null()
}

/// Copies what the socket has received into `buf` without taking it off the socket (`MSG_PEEK`).
/// std has this only for its own `TcpStream`, tokio only as a future that cannot tell "nothing new
/// arrived" apart from "ready".
pub fn peek(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes for the duration of the call; the kernel writes at
    // most that many.
    check_len(unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    })
}

/// How many bytes the socket has received and not yet handed out (`FIONREAD`, i.e. `SIOCINQ` on TCP; a
/// FIN is not counted). Lets the handshake driver wait for a whole record without copying it anywhere.
pub fn queued(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to `n` for the whole call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// A pipe, both ends non-blocking and close-on-exec: the kernel buffer that `splice` moves pages through.
pub struct Pipe {
    pub read: File,
    pub write: File,
}

impl Pipe {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two c_ints for pipe2 to fill.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self {
            read: File::from(read),
            write: File::from(write),
        })
    }
}

/// Asks for a pipe of `size` bytes (`F_SETPIPE_SZ`); returns the size the kernel gave (rounded up to a
/// power-of-two number of pages). EPERM when the user's pipe pages exceed
/// /proc/sys/fs/pipe-user-pages-soft, or `size` exceeds /proc/sys/fs/pipe-max-size (1 MiB by default).
pub fn set_pipe_size(pipe: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size =
        libc::c_int::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
    let ret = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    check(ret)?;
    Ok(ret as usize)
}

/// Moves up to `len` bytes from `from` to `to` (one of them a pipe) without copying them through user
/// space. `Ok(0)` is end of stream on `from`.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are valid for the borrow; null offsets mean "the file position", which is
    // what sockets and pipes require; no memory is passed.
    check_len(unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet, sent or not (`SIOCOUTQ`):
/// 0 once everything written has reached the peer's kernel, where a reset no longer destroys it (the
/// peer reads what it received, then sees the reset). Also 0 for a connection that is closed already
/// (reset by the peer): its bytes never will be acknowledged, and the kernel's count is stale then.
pub fn unacknowledged(sock: BorrowedFd<'_>) -> io::Result<usize> {
    // TCP_CLOSE in include/net/tcp_states.h; libc does not name the TCP states.
    const TCP_CLOSE: u8 = 7;
    let mut state: u8 = 0;
    let mut len: libc::socklen_t = 1;
    // SAFETY: the kernel copies at most `len` (1) bytes of its `struct tcp_info`, whose first field is
    // the one-byte `tcpi_state`, into `state`, valid and writable for the call.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            (&mut state as *mut u8).cast(),
            &mut len,
        )
    })?;
    if state == TCP_CLOSE {
        return Ok(0);
    }
    let mut n: libc::c_int = 0;
    // SIOCOUTQ has the value of TIOCOUTQ (linux/sockios.h), which is what libc names.
    // SAFETY: the ioctl writes one int through the pointer, valid and writable for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Attaches the kernel's `tls` upper-layer protocol to a connected TCP socket. `ENOENT`: the kernel has
/// no `tls` module (or it is not loaded and we may not load it); `ENOTCONN`: the socket is not connected
/// (which still proves the module is there).
pub fn set_tls_ulp(sock: BorrowedFd<'_>) -> io::Result<()> {
    const NAME: &[u8] = b"tls";
    // SAFETY: the option value is a valid byte string of the given length; the kernel copies it.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            NAME.as_ptr().cast(),
            NAME.len() as libc::socklen_t,
        )
    })
}

/// The ciphers kernel TLS can take (the AEADs ringseal negotiates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlsCipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// Which way a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlsDirection {
    Tx,
    Rx,
}

impl KtlsDirection {
    fn optname(self) -> libc::c_int {
        match self {
            Self::Tx => libc::TLS_TX,
            Self::Rx => libc::TLS_RX,
        }
    }
}

/// The key material of one direction in the kernel's `tls12_crypto_info_*` layout. Zeroed on drop.
pub struct CryptoInfo(CryptoInfoInner);

enum CryptoInfoInner {
    Aes128(libc::tls12_crypto_info_aes_gcm_128),
    Aes256(libc::tls12_crypto_info_aes_gcm_256),
    Chacha(libc::tls12_crypto_info_chacha20_poly1305),
}

impl CryptoInfo {
    /// `tls13`: the record protocol version; `key` and `iv` as rustls extracts them (`iv` is the
    /// 12-byte nonce base: for AES-GCM its first 4 bytes are the kernel's salt); `seq`: the next record's
    /// sequence number. `None` if a length does not match the cipher.
    pub fn new(cipher: KtlsCipher, tls13: bool, key: &[u8], iv: &[u8], seq: u64) -> Option<Self> {
        let info = |cipher_type| libc::tls_crypto_info {
            version: if tls13 {
                libc::TLS_1_3_VERSION
            } else {
                libc::TLS_1_2_VERSION
            },
            cipher_type,
        };
        let rec_seq = seq.to_be_bytes();
        let inner = match cipher {
            KtlsCipher::Aes128Gcm => {
                let (salt, iv) = (iv.get(..4)?, iv.get(4..)?);
                CryptoInfoInner::Aes128(libc::tls12_crypto_info_aes_gcm_128 {
                    info: info(libc::TLS_CIPHER_AES_GCM_128),
                    iv: iv.try_into().ok()?,
                    key: key.try_into().ok()?,
                    salt: salt.try_into().ok()?,
                    rec_seq,
                })
            }
            KtlsCipher::Aes256Gcm => {
                let (salt, iv) = (iv.get(..4)?, iv.get(4..)?);
                CryptoInfoInner::Aes256(libc::tls12_crypto_info_aes_gcm_256 {
                    info: info(libc::TLS_CIPHER_AES_GCM_256),
                    iv: iv.try_into().ok()?,
                    key: key.try_into().ok()?,
                    salt: salt.try_into().ok()?,
                    rec_seq,
                })
            }
            KtlsCipher::Chacha20Poly1305 => {
                CryptoInfoInner::Chacha(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: iv.try_into().ok()?,
                    key: key.try_into().ok()?,
                    salt: [],
                    rec_seq,
                })
            }
        };
        Some(Self(inner))
    }

    fn as_bytes(&self) -> (*const libc::c_void, usize) {
        match &self.0 {
            CryptoInfoInner::Aes128(i) => (std::ptr::from_ref(i).cast(), mem::size_of_val(i)),
            CryptoInfoInner::Aes256(i) => (std::ptr::from_ref(i).cast(), mem::size_of_val(i)),
            CryptoInfoInner::Chacha(i) => (std::ptr::from_ref(i).cast(), mem::size_of_val(i)),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        match &mut self.0 {
            CryptoInfoInner::Aes128(i) => {
                i.key.zeroize();
                i.iv.zeroize();
                i.salt.zeroize();
            }
            CryptoInfoInner::Aes256(i) => {
                i.key.zeroize();
                i.iv.zeroize();
                i.salt.zeroize();
            }
            CryptoInfoInner::Chacha(i) => {
                i.key.zeroize();
                i.iv.zeroize();
            }
        }
    }
}

/// Hands one direction's key to the kernel (after [`set_tls_ulp`]). From then on the kernel encrypts
/// what is written (TX) or decrypts what is read (RX).
pub fn set_crypto(sock: BorrowedFd<'_>, dir: KtlsDirection, info: &CryptoInfo) -> io::Result<()> {
    let (ptr, len) = info.as_bytes();
    // SAFETY: `ptr` points to a live, initialised `tls12_crypto_info_*` struct of `len` bytes (repr(C)
    // in libc, the layout the kernel expects for the cipher type it names); the kernel copies it.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_TLS,
            dir.optname(),
            ptr,
            len as libc::socklen_t,
        )
    })
}

/// The sequence number of the next record the kernel will send (TLS_TX's `rec_seq`): exactly how many
/// records this key has protected so far.
pub fn tx_record_seq(sock: BorrowedFd<'_>, cipher: KtlsCipher) -> io::Result<u64> {
    // The largest of the three structs is 56 bytes; rec_seq is its last 8 bytes.
    let mut buf = [0u8; 56];
    let size = match cipher {
        KtlsCipher::Aes128Gcm => mem::size_of::<libc::tls12_crypto_info_aes_gcm_128>(),
        KtlsCipher::Aes256Gcm => mem::size_of::<libc::tls12_crypto_info_aes_gcm_256>(),
        KtlsCipher::Chacha20Poly1305 => mem::size_of::<libc::tls12_crypto_info_chacha20_poly1305>(),
    };
    let mut len = size as libc::socklen_t;
    // SAFETY: `buf` is writable for `len` (<= 56) bytes, and `len` is a valid socklen_t the kernel
    // updates.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_TLS,
            libc::TLS_TX,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let result = check(ret).and_then(|()| {
        let len = len as usize;
        buf.get(len.saturating_sub(8)..len)
            .filter(|_| len == size)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| io::Error::other("unexpected TLS_TX layout"))
    });
    // The kernel returned the key too; do not leave it on the stack.
    zeroize::Zeroize::zeroize(&mut buf);
    result
}

/// Control message space for one `u8` record type (CMSG_SPACE(1)), with room to spare.
const CMSG_BUF: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([MaybeUninit<u8>; CMSG_BUF]);

/// Sends one record of `record_type` (e.g. an alert) through a kTLS socket: the kernel encrypts it with
/// the current key.
pub fn send_record(sock: BorrowedFd<'_>, record_type: u8, payload: &[u8]) -> io::Result<usize> {
    let mut cmsg_buf = CmsgBuf([MaybeUninit::new(0); CMSG_BUF]);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message; the fields set below point to live buffers.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(1) } as usize;
    assert!(space <= CMSG_BUF);
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` writable, 8-aligned bytes, enough for one header with one
    // byte of data, so CMSG_FIRSTHDR is non-null and CMSG_DATA stays inside the buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = record_type;
    }
    // SAFETY: `msg` and everything it points to (iov over `payload`, read-only for sendmsg; the control
    // buffer) outlive the call.
    check_len(unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Receives from a kTLS socket with the record type: `(type, bytes)`. The kernel returns data of one
/// record type per call; a record that is not application data can only be read this way (plain reads
/// and splice fail with EIO/EINVAL on it).
pub fn recv_record(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut cmsg_buf = CmsgBuf([MaybeUninit::new(0); CMSG_BUF]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message; the fields set below point to live buffers.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF as _;
    // SAFETY: `buf` is writable for its length and the control buffer for CMSG_BUF bytes, both for the
    // duration of the call; the kernel writes at most that much into each.
    let n = check_len(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) })?;
    let mut record_type = RECORD_APPLICATION_DATA;
    // SAFETY: the kernel set msg_controllen to what it wrote into the control buffer; the CMSG macros
    // walk only within that length, and a TLS_GET_RECORD_TYPE message carries one byte of data.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_TLS && (*cmsg).cmsg_type == libc::TLS_GET_RECORD_TYPE
            {
                record_type = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((record_type, n))
}
