//! What this kernel can offload: probed once per process on loopback sockets with throwaway keys,
//! with the reason when it offloads nothing.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::sync::OnceLock;

use rustls::{CipherSuite, SupportedCipherSuite};

use crate::sys::{self, CryptoInfo, KtlsCipher, KtlsDirection};

/// Offloadable ciphers per protocol version, as probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ciphers(u8);

const ALL_CIPHERS: [KtlsCipher; 3] = [
    KtlsCipher::Aes128Gcm,
    KtlsCipher::Aes256Gcm,
    KtlsCipher::Chacha20Poly1305,
];

impl Ciphers {
    fn bit(tls13: bool, cipher: KtlsCipher) -> u8 {
        let i = ALL_CIPHERS.iter().position(|c| *c == cipher).unwrap_or(0);
        1 << (i + if tls13 { 3 } else { 0 })
    }

    pub(super) fn supports(self, tls13: bool, cipher: KtlsCipher) -> bool {
        self.0 & Self::bit(tls13, cipher) != 0
    }
}

pub(super) fn cipher_name(c: KtlsCipher) -> &'static str {
    match c {
        KtlsCipher::Aes128Gcm => "AES-128-GCM",
        KtlsCipher::Aes256Gcm => "AES-256-GCM",
        KtlsCipher::Chacha20Poly1305 => "CHACHA20-POLY1305",
    }
}

/// What this kernel can offload, probed once per process.
#[derive(Debug)]
pub struct KtlsSupport {
    /// The ciphers, or why kTLS cannot be used at all.
    pub result: Result<Ciphers, KtlsUnavailable>,
}

impl KtlsSupport {
    pub fn available(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether a negotiated suite can be offloaded.
    pub fn offloads(&self, suite: SupportedCipherSuite) -> bool {
        let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
        match (&self.result, cipher_of(suite.suite())) {
            (Ok(c), Some(cipher)) => c.supports(tls13, cipher),
            _ => false,
        }
    }

    /// For the start-up line: "AES-128-GCM, ... on TLS 1.2 and 1.3", or why not.
    pub fn describe(&self) -> String {
        match &self.result {
            Err(why) => why.to_string(),
            Ok(c) => {
                let mut parts = Vec::new();
                for (tls13, name) in [(false, "TLS 1.2"), (true, "TLS 1.3")] {
                    let names: Vec<_> = ALL_CIPHERS
                        .iter()
                        .filter(|x| c.supports(tls13, **x))
                        .map(|x| cipher_name(*x))
                        .collect();
                    if !names.is_empty() {
                        parts.push(format!("{} on {name}", names.join(", ")));
                    }
                }
                parts.join("; ")
            }
        }
    }
}

/// The kernel's kTLS support, probed on first use (loopback sockets with throwaway keys, a few
/// milliseconds). Loading the `tls` module later needs a restart to be noticed.
pub fn support() -> &'static KtlsSupport {
    static SUPPORT: OnceLock<KtlsSupport> = OnceLock::new();
    SUPPORT.get_or_init(|| KtlsSupport { result: probe() })
}

/// Why this kernel offloads no connection at all.
#[derive(Debug, thiserror::Error)]
pub enum KtlsUnavailable {
    #[error("cannot probe for kTLS on loopback: {0}")]
    Probe(io::Error),
    #[error(
        "the kernel's tls module is not loaded (setsockopt TCP_ULP \"tls\": ENOENT); \
         `modprobe tls` (and list it in /etc/modules-load.d/) then restart ringseal"
    )]
    ModuleNotLoaded,
    #[error("the kernel refuses the tls ULP (setsockopt TCP_ULP \"tls\": {0})")]
    UlpRefused(io::Error),
    #[error(
        "the kernel's tls module takes none of AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 \
         (setsockopt SOL_TLS: {})",
        .0.as_ref().map_or_else(|| "?".into(), |e| e.to_string())
    )]
    NoCipher(Option<io::Error>),
}

fn probe() -> Result<Ciphers, KtlsUnavailable> {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(KtlsUnavailable::Probe)?;
    let addr = listener.local_addr().map_err(KtlsUnavailable::Probe)?;
    let mut ciphers = Ciphers::default();
    let mut refused = None;
    for tls13 in [false, true] {
        for cipher in ALL_CIPHERS {
            let pair = std::net::TcpStream::connect(addr).and_then(|c| Ok((c, listener.accept()?)));
            let (client, _server) = pair.map_err(KtlsUnavailable::Probe)?;
            if let Err(e) = sys::set_tls_ulp(client.as_fd()) {
                return Err(if e.raw_os_error() == Some(libc::ENOENT) {
                    KtlsUnavailable::ModuleNotLoaded
                } else {
                    KtlsUnavailable::UlpRefused(e)
                });
            }
            let key = [0u8; 32];
            let key_len = if cipher == KtlsCipher::Aes128Gcm {
                16
            } else {
                32
            };
            let Some(info) = CryptoInfo::new(cipher, tls13, &key[..key_len], &[0u8; 12], 0) else {
                continue;
            };
            let set = sys::set_crypto(client.as_fd(), KtlsDirection::Tx, &info)
                .and_then(|()| sys::set_crypto(client.as_fd(), KtlsDirection::Rx, &info));
            match set {
                Ok(()) => ciphers.0 |= Ciphers::bit(tls13, cipher),
                Err(e) => refused = Some(e),
            }
        }
    }
    if ciphers == Ciphers::default() {
        return Err(KtlsUnavailable::NoCipher(refused));
    }
    Ok(ciphers)
}

pub(super) fn cipher_of(suite: CipherSuite) -> Option<KtlsCipher> {
    use CipherSuite::*;
    match suite {
        TLS13_AES_128_GCM_SHA256
        | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(KtlsCipher::Aes128Gcm),
        TLS13_AES_256_GCM_SHA384
        | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(KtlsCipher::Aes256Gcm),
        TLS13_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(KtlsCipher::Chacha20Poly1305),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_map_to_kernel_ciphers() {
        for suite in crate::tls::provider().cipher_suites.iter() {
            assert!(
                cipher_of(suite.suite()).is_some(),
                "{:?} has no kTLS cipher",
                suite.suite()
            );
        }
        let c = Ciphers(Ciphers::bit(true, KtlsCipher::Chacha20Poly1305));
        assert!(c.supports(true, KtlsCipher::Chacha20Poly1305));
        assert!(!c.supports(false, KtlsCipher::Chacha20Poly1305));
        assert!(!c.supports(true, KtlsCipher::Aes128Gcm));
    }
}
