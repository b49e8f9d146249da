//! [`Secret`]: a password as the config names it. Its own module because both `config` (which parses
//! it) and `tls` (which uses it to open a keystore) need it, and neither may depend on the other.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

/// A password that never reaches a log line or a `Debug` dump. Copies (every config snapshot holds
/// one) share one allocation, which is wiped when the last of them is dropped.
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(Arc::new(Zeroizing::new(s.into())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
