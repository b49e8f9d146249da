//! Java KeyStore (JKS) files, read without a JVM.
//!
//! Cassandra operators keep their node identity in the keystores `keytool -storetype JKS` writes, and no
//! maintained Rust crate reads them (PKCS#12 is read elsewhere, with `p12-keystore`). This module is a
//! small, bounded, fuzzed parser for that one format, written from OpenJDK's
//! `sun.security.provider.JavaKeyStore` (`engineLoad`/`engineStore`) and
//! `sun.security.provider.KeyProtector`. Everything is big-endian:
//!
//! ```text
//! u32 magic 0xFEEDFEED   u32 version (1 or 2)   u32 entry count
//! per entry, u32 tag then
//!   1 = private key:  UTF alias, u64 timestamp (ms), u32 len + EncryptedPrivateKeyInfo (DER),
//!                     u32 chain count, per certificate: [v2: UTF type "X.509"] u32 len + DER
//!   2 = trusted cert: UTF alias, u64 timestamp, [v2: UTF type "X.509"] u32 len + DER
//! 20 bytes: SHA-1(password as UTF-16BE || "Mighty Aphrodite" || every preceding byte of the file)
//! ```
//!
//! "UTF" is Java's `DataOutput.writeUTF`: a u16 byte length, then "modified UTF-8" (NUL as `C0 80`,
//! characters outside the BMP as two 3-byte surrogates).
//!
//! A private key is protected by Sun's proprietary KeyProtector (OID 1.3.6.1.4.1.42.2.17.1.1): the
//! EncryptedPrivateKeyInfo's encryptedData is `salt(20) || key XOR stream || SHA-1(password || key)`,
//! where the stream is `d1 = SHA-1(password || salt)`, `dn = SHA-1(password || dn-1)`, concatenated.
//! The trailing digest is the only way to tell a wrong key password.
//!
//! Order of work: the whole file is split first (every length is checked against the bytes left, so a
//! hostile length allocates nothing), then the integrity digest is checked with the password, and only
//! then is any key decrypted. So a wrong store password is always [`JksError::WrongPassword`], and a key
//! that then fails its own check was protected with a different key password.
//!
//! JKS is weak by design (SHA-1 integrity, a SHA-1 XOR stream for keys): the password is the only
//! protection, so the file itself must be readable by the sidecar alone. JCEKS (magic 0xCECECECE) is
//! recognised by [`is_jceks`] but not read: it needs MD5 and 3DES, and `keytool -importkeystore` converts
//! it to PKCS#12.

use std::collections::HashSet;
use std::fmt;

use aws_lc_rs::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
use zeroize::{Zeroize, Zeroizing};

const JKS_MAGIC: [u8; 4] = [0xFE, 0xED, 0xFE, 0xED];
const JCEKS_MAGIC: [u8; 4] = [0xCE, 0xCE, 0xCE, 0xCE];
const TAG_PRIVATE_KEY: u32 = 1;
const TAG_TRUSTED_CERT: u32 = 2;
const SHA1_LEN: usize = 20;
/// KeyProtector's salt length, fixed by the JDK.
const SALT_LEN: usize = 20;
/// The fixed string JavaKeyStore hashes between the password and the file body.
const INTEGRITY_SALT: &[u8] = b"Mighty Aphrodite";
/// DER contents of OID 1.3.6.1.4.1.42.2.17.1.1 (KnownOIDs.JAVASOFT_JDKKeyProtector).
const KEY_PROTECTOR_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x2a, 0x02, 0x11, 0x01, 0x01];
/// The smallest entry the format allows (tag, empty alias, timestamp, empty version-1 certificate); it
/// only caps how much is reserved up front for a declared entry count.
const MIN_ENTRY_LEN: usize = 4 + 2 + 8 + 4;

/// True when `data` starts with the JKS magic (0xFEEDFEED).
pub fn is_jks(data: &[u8]) -> bool {
    data.starts_with(&JKS_MAGIC)
}

/// True when `data` starts with the JCEKS magic (0xCECECECE).
pub fn is_jceks(data: &[u8]) -> bool {
    data.starts_with(&JCEKS_MAGIC)
}

/// A parsed keystore: its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jks {
    pub entries: Vec<Entry>,
}

/// One keystore entry. `Debug` shows aliases and sizes, never key bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Entry {
    /// A private key entry: `pkcs8` is the decrypted PKCS#8 PrivateKeyInfo DER; `chain` is the
    /// certificate chain, leaf first (DER). The JDK allows an empty chain; keytool never writes one.
    PrivateKey {
        alias: String,
        pkcs8: Vec<u8>,
        chain: Vec<Vec<u8>>,
    },
    /// A trusted certificate entry (DER).
    TrustedCert { alias: String, der: Vec<u8> },
}

impl Entry {
    /// The entry's alias as stored (keytool lower-cases aliases of JKS stores).
    pub fn alias(&self) -> &str {
        match self {
            Entry::PrivateKey { alias, .. } | Entry::TrustedCert { alias, .. } => alias,
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::PrivateKey {
                alias,
                pkcs8,
                chain,
            } => f
                .debug_struct("PrivateKey")
                .field("alias", alias)
                .field("pkcs8", &format_args!("<{} bytes, redacted>", pkcs8.len()))
                .field(
                    "chain",
                    &format_args!(
                        "<{} certificates: {:?} bytes>",
                        chain.len(),
                        chain.iter().map(Vec::len).collect::<Vec<_>>()
                    ),
                )
                .finish(),
            Entry::TrustedCert { alias, der } => f
                .debug_struct("TrustedCert")
                .field("alias", alias)
                .field("der", &format_args!("<{} bytes>", der.len()))
                .finish(),
        }
    }
}

/// Why a keystore could not be read. Messages name the field and offset or the alias, never the
/// password; the caller prefixes the file name ("keystore /etc/c/node.jks: wrong password (...)").
#[derive(Debug, thiserror::Error)]
pub enum JksError {
    #[error("not a JKS keystore (it does not start with the JKS magic 0xFEEDFEED)")]
    NotJks,
    #[error(
        "JCEKS keystores are not supported; convert with keytool -importkeystore -srcstoretype JCEKS \
         -deststoretype PKCS12"
    )]
    Jceks,
    #[error("unsupported JKS version {0} (only 1 and 2 exist)")]
    UnsupportedVersion(u32),
    #[error(
        "truncated or corrupt: {field} at offset {offset} needs {needed} bytes, only {available} left"
    )]
    Truncated {
        offset: usize,
        field: String,
        needed: usize,
        available: usize,
    },
    #[error("corrupt at offset {offset}: {field}: {reason}")]
    Corrupt {
        offset: usize,
        field: String,
        reason: Corruption,
    },
    /// The integrity digest does not match: the password is wrong, or the file was modified.
    #[error("wrong password (integrity check failed)")]
    WrongPassword,
    #[error(
        "private key entry {alias:?} cannot be decrypted with the keystore password: its key password \
         differs from the store password, and Cassandra needs both equal (keytool -keypasswd -alias \
         {alias:?} -keystore FILE)"
    )]
    KeyPasswordMismatch { alias: String },
    #[error(
        "private key entry {alias:?}: unsupported key protection algorithm {oid} (JKS uses \
         1.3.6.1.4.1.42.2.17.1.1)"
    )]
    UnsupportedKeyProtection { alias: String, oid: String },
    #[error("entry {alias:?}: certificate type {cert_type:?} is not supported (only X.509)")]
    UnsupportedCertType { alias: String, cert_type: String },
    #[error("{len} bytes of trailing garbage at offset {offset}, after the integrity digest")]
    TrailingData { offset: usize, len: usize },
}

/// What is wrong with the field at a [`JksError::Corrupt`] offset; `der` is the DER reader's finding.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    #[error("{alias:?} appears twice")]
    DuplicateAlias { alias: String },
    #[error("unknown entry type {tag} (1 = private key, 2 = trusted certificate)")]
    UnknownEntryType { tag: u32 },
    #[error("malformed modified UTF-8 (Java writeUTF)")]
    MalformedUtf8,
    #[error("not a DER certificate: {der}")]
    NotDerCertificate { der: &'static str },
    #[error("not an EncryptedPrivateKeyInfo: {der}")]
    NotEncryptedPrivateKeyInfo { der: &'static str },
    #[error("encrypted data shorter than its salt and check digest (40 bytes)")]
    EncryptedKeyTooShort,
    #[error("decrypted key is not PKCS#8 DER: {der}")]
    NotPkcs8 { der: &'static str },
}

/// Parse a JKS keystore, checking its integrity digest with `password` and decrypting every private-key
/// entry with the same password (Cassandra requires keystore password == key password).
pub fn parse(data: &[u8], password: &str) -> Result<Jks, JksError> {
    if is_jceks(data) {
        return Err(JksError::Jceks);
    }
    if !is_jks(data) {
        return Err(JksError::NotJks);
    }
    let mut r = Reader::new(data);
    r.take(JKS_MAGIC.len(), "magic")?;
    let version = r.u32("version")?;
    if version != 1 && version != 2 {
        return Err(JksError::UnsupportedVersion(version));
    }
    let count = r.u32("entry count")? as usize;

    let mut raw = Vec::with_capacity(count.min(r.remaining() / MIN_ENTRY_LEN));
    let mut aliases = HashSet::new();
    for index in 1..=count {
        raw.push(raw_entry(&mut r, version, index, &mut aliases)?);
    }
    r.context.clear();

    let body_end = r.pos;
    let stored = r.take(SHA1_LEN, "integrity digest")?;
    if r.remaining() > 0 {
        return Err(JksError::TrailingData {
            offset: r.pos,
            len: r.remaining(),
        });
    }
    let password = password_bytes(password);
    let computed = sha1(&[&password, INTEGRITY_SALT, &data[..body_end]]);
    if !constant_time_eq(&computed, stored) {
        return Err(JksError::WrongPassword);
    }

    let entries = raw
        .into_iter()
        .map(|entry| match entry {
            RawEntry::Key {
                alias,
                protected,
                offset,
                chain,
            } => Ok(Entry::PrivateKey {
                pkcs8: recover_key(&alias, protected, offset, &password)?,
                chain: chain.into_iter().map(<[u8]>::to_vec).collect(),
                alias,
            }),
            RawEntry::Cert { alias, der } => Ok(Entry::TrustedCert {
                alias,
                der: der.to_vec(),
            }),
        })
        .collect::<Result<_, JksError>>()?;
    Ok(Jks { entries })
}

/// Entry number `index` (from 1), read but not decrypted; its alias must be new.
fn raw_entry<'a>(
    r: &mut Reader<'a>,
    version: u32,
    index: usize,
    aliases: &mut HashSet<String>,
) -> Result<RawEntry<'a>, JksError> {
    r.context = format!("entry {index}: ");
    let tag_offset = r.pos;
    let tag = r.u32("tag")?;
    let alias_offset = r.pos;
    let alias = r.utf("alias")?;
    if !aliases.insert(alias.clone()) {
        return Err(r.corrupt(alias_offset, "alias", Corruption::DuplicateAlias { alias }));
    }
    r.context = format!("entry {index} ({alias:?}): ");
    r.take(8, "timestamp")?;
    match tag {
        TAG_PRIVATE_KEY => {
            let protected = r.bytes("protected key")?;
            let offset = r.pos - protected.len();
            let chain_len = r.u32("certificate count")? as usize;
            // Each certificate takes at least its u32 length.
            let mut chain = Vec::with_capacity(chain_len.min(r.remaining() / 4));
            for n in 1..=chain_len {
                chain.push(r.certificate(version, &format!("certificate {n}"), &alias)?);
            }
            Ok(RawEntry::Key {
                alias,
                protected,
                offset,
                chain,
            })
        }
        TAG_TRUSTED_CERT => {
            let der = r.certificate(version, "certificate", &alias)?;
            Ok(RawEntry::Cert { alias, der })
        }
        tag => Err(r.corrupt(tag_offset, "tag", Corruption::UnknownEntryType { tag })),
    }
}

/// An entry split out of the file, before the integrity check allows decrypting it.
enum RawEntry<'a> {
    Key {
        alias: String,
        protected: &'a [u8],
        /// File offset of `protected`, for errors.
        offset: usize,
        chain: Vec<&'a [u8]>,
    },
    Cert {
        alias: String,
        der: &'a [u8],
    },
}

/// A cursor over the file that turns every short read into [`JksError::Truncated`] naming the field.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// "entry 2 ("node1"): ", prefixed to field names in errors.
    context: String,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            context: String::new(),
        }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], JksError> {
        if len > self.remaining() {
            return Err(JksError::Truncated {
                offset: self.pos,
                field: format!("{}{field}", self.context),
                needed: len,
                available: self.remaining(),
            });
        }
        let bytes = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], JksError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32, JksError> {
        self.array(field).map(u32::from_be_bytes)
    }

    /// A u32 length, then that many bytes.
    fn bytes(&mut self, field: &str) -> Result<&'a [u8], JksError> {
        let len = self.u32(&format!("{field} length"))? as usize;
        self.take(len, field)
    }

    /// `DataInput.readUTF`: a u16 byte length, then modified UTF-8.
    fn utf(&mut self, field: &str) -> Result<String, JksError> {
        let len = usize::from(u16::from_be_bytes(self.array(&format!("{field} length"))?));
        let start = self.pos;
        let bytes = self.take(len, field)?;
        modified_utf8(bytes)
            .map_err(|at| self.corrupt(start + at, field, Corruption::MalformedUtf8))
    }

    /// One certificate: its type (version 2 only; version 1 stores are X.509 by definition), then its
    /// length-prefixed DER, which must be exactly one DER SEQUENCE.
    fn certificate(
        &mut self,
        version: u32,
        field: &str,
        alias: &str,
    ) -> Result<&'a [u8], JksError> {
        if version == 2 {
            let cert_type = self.utf(&format!("{field} type"))?;
            // Java looks certificate factories up case-insensitively, and "X509" is an alias of "X.509".
            if !cert_type.eq_ignore_ascii_case("X.509") && !cert_type.eq_ignore_ascii_case("X509") {
                return Err(JksError::UnsupportedCertType {
                    alias: alias.to_owned(),
                    cert_type,
                });
            }
        }
        let der = self.bytes(field)?;
        if let Err(der_error) = der_only(der, DER_SEQUENCE) {
            let offset = self.pos - der.len();
            let reason = Corruption::NotDerCertificate { der: der_error };
            return Err(self.corrupt(offset, field, reason));
        }
        Ok(der)
    }

    fn corrupt(&self, offset: usize, field: &str, reason: Corruption) -> JksError {
        JksError::Corrupt {
            offset,
            field: format!("{}{field}", self.context),
            reason,
        }
    }
}

/// Decodes Java's modified UTF-8 (`DataInputStream.readUTF`): 1-, 2- and 3-byte forms of UTF-16 code
/// units (overlong `C0 80` for NUL included), then UTF-16 to a `String`. Java accepts unpaired
/// surrogates; they become U+FFFD here so that an alias is always printable. `Err` is the offset of the
/// first malformed byte.
fn modified_utf8(bytes: &[u8]) -> Result<String, usize> {
    let continuation = |i: usize| match bytes.get(i) {
        Some(&b) if b & 0xc0 == 0x80 => Ok(u16::from(b & 0x3f)),
        _ => Err(i),
    };
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let (unit, width) = match b {
            0x00..=0x7f => (u16::from(b), 1),
            0xc0..=0xdf => (u16::from(b & 0x1f) << 6 | continuation(i + 1)?, 2),
            0xe0..=0xef => (
                u16::from(b & 0x0f) << 12 | continuation(i + 1)? << 6 | continuation(i + 2)?,
                3,
            ),
            _ => return Err(i),
        };
        units.push(unit);
        i += width;
    }
    Ok(char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect())
}

/// KeyProtector.recover: checks the algorithm, strips the salt, XORs the SHA-1 stream off and verifies
/// the trailing SHA-1(password || key). Only called after the store's integrity digest matched.
fn recover_key(
    alias: &str,
    protected: &[u8],
    offset: usize,
    password: &[u8],
) -> Result<Vec<u8>, JksError> {
    let corrupt = |reason| JksError::Corrupt {
        offset,
        field: format!("entry {alias:?}: protected key"),
        reason,
    };
    let (oid, encrypted) = encrypted_private_key_info(protected)
        .map_err(|der| corrupt(Corruption::NotEncryptedPrivateKeyInfo { der }))?;
    if oid != KEY_PROTECTOR_OID {
        return Err(JksError::UnsupportedKeyProtection {
            alias: alias.to_owned(),
            oid: oid_to_string(oid),
        });
    }
    if encrypted.len() < SALT_LEN + SHA1_LEN {
        return Err(corrupt(Corruption::EncryptedKeyTooShort));
    }
    let (salt, rest) = encrypted.split_at(SALT_LEN);
    let (masked, check) = rest.split_at(rest.len() - SHA1_LEN);

    let mut key = masked.to_vec();
    let mut block = Zeroizing::new([0u8; SHA1_LEN]);
    block.copy_from_slice(salt);
    for chunk in key.chunks_mut(SHA1_LEN) {
        *block = sha1(&[password, &block[..]]);
        for (k, s) in chunk.iter_mut().zip(block.iter()) {
            *k ^= s;
        }
    }
    if !constant_time_eq(&sha1(&[password, &key]), check) {
        key.zeroize();
        return Err(JksError::KeyPasswordMismatch {
            alias: alias.to_owned(),
        });
    }
    if let Err(der) = der_only(&key, DER_SEQUENCE) {
        key.zeroize();
        return Err(corrupt(Corruption::NotPkcs8 { der }));
    }
    Ok(key)
}

// A few lines of DER reading rather than the `der` or `asn1-rs` crates (both in the tree through
// x509-parser): JKS needs three fixed elements of one structure and a "is this one SEQUENCE" check, and a
// reader that only slices its input keeps the whole fuzzed surface in this file, allocation-free.
const DER_SEQUENCE: u8 = 0x30;
const DER_OCTET_STRING: u8 = 0x04;
const DER_OID: u8 = 0x06;

/// One DER element at the start of `input`: (tag, contents, rest). Low tag numbers and definite lengths
/// only; the length is checked against the input.
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let [tag, first, rest @ ..] = input else {
        return Err("DER element cut short");
    };
    if tag & 0x1f == 0x1f {
        return Err("unsupported high-number DER tag");
    }
    let (len, rest) = match *first {
        len @ 0..=0x7f => (usize::from(len), rest),
        0x80 => return Err("indefinite DER length"),
        n @ 0x81..=0x84 => {
            let n = usize::from(n & 0x7f);
            if rest.len() < n {
                return Err("DER length cut short");
            }
            let (len, rest) = rest.split_at(n);
            (
                len.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b)),
                rest,
            )
        }
        _ => return Err("DER length over 4 bytes"),
    };
    if len > rest.len() {
        return Err("DER length runs past the data");
    }
    let (contents, rest) = rest.split_at(len);
    Ok((*tag, contents, rest))
}

/// The contents of `input` when it is exactly one DER element with tag `tag`.
fn der_only(input: &[u8], tag: u8) -> Result<&[u8], &'static str> {
    let (found, contents, rest) = der_element(input)?;
    if found != tag {
        return Err("unexpected DER tag");
    }
    if !rest.is_empty() {
        return Err("bytes after the DER element");
    }
    Ok(contents)
}

/// EncryptedPrivateKeyInfo ::= SEQUENCE { AlgorithmIdentifier SEQUENCE { OID, parameters OPTIONAL },
/// encryptedData OCTET STRING }: returns (OID contents, encryptedData). The JDK writes NULL parameters;
/// any single parameters element is tolerated, as KeyProtector ignores them.
fn encrypted_private_key_info(der: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let info = der_only(der, DER_SEQUENCE)?;
    let (tag, algorithm, rest) = der_element(info)?;
    if tag != DER_SEQUENCE {
        return Err("algorithm identifier is not a SEQUENCE");
    }
    let encrypted = der_only(rest, DER_OCTET_STRING)?;
    let (tag, oid, parameters) = der_element(algorithm)?;
    if tag != DER_OID {
        return Err("algorithm is not an OBJECT IDENTIFIER");
    }
    if !parameters.is_empty() {
        let (_, _, after) = der_element(parameters)?;
        if !after.is_empty() {
            return Err("bytes after the algorithm parameters");
        }
    }
    Ok((oid, encrypted))
}

/// Dotted form of DER OID contents, for error messages; odd or oversized ones are described instead.
fn oid_to_string(oid: &[u8]) -> String {
    let malformed = || format!("(a malformed OID of {} bytes)", oid.len());
    if oid.is_empty() || oid.len() > 64 || oid[oid.len() - 1] & 0x80 != 0 {
        return malformed();
    }
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        if value > u64::MAX >> 7 {
            return malformed();
        }
        value = value << 7 | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    let (first, second) = match arcs[0] {
        v @ 0..40 => (0, v),
        v @ 40..80 => (1, v - 40),
        v => (2, v - 80),
    };
    let mut out = format!("{first}.{second}");
    for arc in &arcs[1..] {
        out.push('.');
        out.push_str(&arc.to_string());
    }
    out
}

/// The password as Java hashes it: its UTF-16 code units, big-endian (Rust's UTF-16 of a `str` is the
/// same sequence of `char`s a Java `char[]` holds).
fn password_bytes(password: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(password.encode_utf16().flat_map(u16::to_be_bytes).collect())
}

fn sha1(parts: &[&[u8]]) -> [u8; SHA1_LEN] {
    let mut context = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    for part in parts {
        context.update(part);
    }
    let mut out = [0; SHA1_LEN];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Compares digests without an early exit, like Java's `MessageDigest.isEqual`.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
