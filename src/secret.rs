//! A string that must never reach a log line, an error body or a `Debug` dump.
//!
//! Every secret casegate handles (webhook signing keys, basic-auth passwords, shared tokens, the
//! Duvo API key) is wrapped in [`Secret`] as soon as it is read, so forgetting to redact is a type
//! error rather than a leak.

use std::fmt;

/// An owned secret. `Debug` and `Display` print `***`; the value is reached only through
/// [`Secret::expose`], which makes every use greppable.
///
/// Equality is constant-time (`subtle`): comparing a received credential with a configured one
/// must not reveal, through timing, how long a prefix matched.
#[derive(Clone)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            self.0.as_bytes(),
            other.0.as_bytes(),
        ))
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's value. Call it only where the bytes are fed to a MAC or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
