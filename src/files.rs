//! Reading the files an operator names (the config, cassandra.yaml, certificates, keys, keystores,
//! password files, CRLs): regular files only, each kind up to a bound. A FIFO named by mistake would
//! hang start-up with no output, `/dev/zero` would be read until memory runs out, and a file far larger
//! than its kind can be is a wrong path (or an attack on a reload), not something to load.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use zeroize::Zeroizing;

/// How large a kind of file may be, and what to call it in a message.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub bytes: u64,
    pub what: &'static str,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

pub const CONFIG: Limit = Limit {
    bytes: MIB,
    what: "a config file",
};
/// Cassandra's own, with every comment, is about 100 KiB.
pub const CASSANDRA_YAML: Limit = Limit {
    bytes: 16 * MIB,
    what: "a cassandra.yaml",
};
pub const PEM: Limit = Limit {
    bytes: MIB,
    what: "a certificate or key file",
};
/// Thousands of certificates; a cluster's trust bundle holds a few.
pub const CA_BUNDLE: Limit = Limit {
    bytes: 4 * MIB,
    what: "a CA bundle",
};
pub const KEYSTORE: Limit = Limit {
    bytes: 4 * MIB,
    what: "a keystore",
};
pub const PASSWORD_FILE: Limit = Limit {
    bytes: 64 * KIB,
    what: "a password file",
};
/// The CRLs of large public CAs reach tens of MiB; a cluster CA's are a few KiB.
pub const CRL: Limit = Limit {
    bytes: 64 * MIB,
    what: "a CRL file",
};

/// Why a named file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    #[error("is {kind}, not a regular file; name the file itself")]
    NotRegular { kind: &'static str },
    #[error(
        "is {}, more than the {} ringseal reads for {}; is this the right file?",
        Size(*size),
        Size(limit.bytes),
        limit.what
    )]
    TooLarge { size: u64, limit: Limit },
}

/// Reads `path`: a regular file of at most `limit.bytes`. The bytes are wiped when dropped (keys and
/// passwords pass through here).
pub fn read(path: &Path, limit: Limit) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; it has no effect on
    // regular files.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let t = meta.file_type();
    if !t.is_file() {
        let kind = if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        return Err(ReadError::NotRegular { kind });
    }
    if meta.len() > limit.bytes {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    // One byte past the limit: a file that grows while it is read is still bounded, and noticed.
    file.take(limit.bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit.bytes {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read`] for text: invalid UTF-8 is an `InvalidData` I/O error.
pub fn read_text(path: &Path, limit: Limit) -> Result<Zeroizing<String>, ReadError> {
    let mut bytes = read(path, limit)?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            // The bytes moved into the error; wipe them there.
            let mut back = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut back);
            Err(ReadError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "the file is not UTF-8 text",
            )))
        }
    }
}

/// A size for messages: bytes, KiB or MiB.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= MIB => write!(f, "{:.1} MiB", n as f64 / MIB as f64),
            n if n >= KIB => write!(f, "{:.1} KiB", n as f64 / KIB as f64),
            n => write!(f, "{n} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"hello").unwrap();
        assert_eq!(read(&small, PEM).unwrap().as_slice(), b"hello");

        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(PEM.bytes + 1).unwrap();
        let e = read(&big, PEM).unwrap_err().to_string();
        assert!(
            e.contains("1.0 MiB") && e.contains("certificate or key file"),
            "{e}"
        );

        let e = read(Path::new("/dev/zero"), PEM).unwrap_err().to_string();
        assert!(e.contains("a character device"), "{e}");
        let e = read(dir.path(), PEM).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Returns at once (no writer needed) with the reason.
        let e = read(&fifo, PEM).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
    }
}
