//! Secrets and references to them. A provider key is configured as a reference
//! (`env:NAME` or `file:PATH`), resolved once at start into a [`Secret`] whose `Debug` and
//! `Display` print `***`, so it cannot leak through logs, errors or envelopes by accident.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value. Only [`Secret::expose`] reveals it, at the one place it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; call only where it leaves the process (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a key comes from. Printing a reference is safe: it names the place, not the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// An environment variable.
    Env(String),
    /// A file whose trimmed content is the key.
    File(PathBuf),
}

/// Why a key reference could not be read or resolved. Texts name the reference, never a value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not `env:NAME` or `file:PATH` (perhaps a key pasted inline; it is not echoed).
    #[error("a key must be given as a reference, `env:NAME` or `file:PATH`, never inline")]
    NotAReference,
    /// The variable is unset or empty.
    #[error("environment variable {0} is not set (or empty); export it before starting")]
    Unset(String),
    /// The file is empty.
    #[error("key file {} is empty", .0.display())]
    EmptyFile(PathBuf),
    /// The file cannot be read.
    #[error("cannot read key file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl KeyRef {
    /// Parses `env:NAME` or `file:PATH`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if let Some(name) = text.strip_prefix("env:").filter(|n| !n.is_empty()) {
            Ok(KeyRef::Env(name.to_string()))
        } else if let Some(path) = text.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(KeyRef::File(PathBuf::from(path)))
        } else {
            // Never echo the value: it may be a key pasted inline by mistake.
            Err(KeyError::NotAReference)
        }
    }

    /// Reads the key. The error names the reference, never a value.
    pub fn resolve(&self) -> Result<Secret, KeyError> {
        match self {
            KeyRef::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                _ => Err(KeyError::Unset(name.clone())),
            },
            KeyRef::File(path) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(KeyError::EmptyFile(path.clone())),
                Err(source) => Err(KeyError::Unreadable {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Env(n) => write!(f, "env:{n}"),
            KeyRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl Serialize for KeyRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        KeyRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Replaces every occurrence of each secret in `text` with `***`.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.0.len() >= 4 {
            out = out.replace(&s.0, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-live-123456");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(
            scrub("bad key sk-live-123456 here", [&s]),
            "bad key *** here"
        );
    }

    #[test]
    fn key_refs_parse_and_inline_keys_are_refused_without_echo() {
        assert_eq!(
            KeyRef::parse("env:A_KEY").unwrap(),
            KeyRef::Env("A_KEY".into())
        );
        assert_eq!(
            KeyRef::parse("file:/run/k").unwrap(),
            KeyRef::File("/run/k".into())
        );
        let err = KeyRef::parse("sk-inline-secret").unwrap_err().to_string();
        assert!(!err.contains("sk-inline-secret"));
    }

    #[test]
    fn missing_env_names_the_variable() {
        let err = KeyRef::Env("SWITCHYARD_TEST_SURELY_UNSET".into())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("SWITCHYARD_TEST_SURELY_UNSET"));
    }
}
