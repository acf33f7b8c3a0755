//! Configuration errors: the file, the line when known, what is wrong and what to do; and
//! YAML parsing with file:line:column.

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration error: the file, the line when known, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault.
    pub path: PathBuf,
    /// 1-based line, when it could be located.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All the errors found in one load, so a user can fix them in one go.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

pub(crate) fn err(path: &Path, line: Option<usize>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_path_buf(),
        line,
        column: None,
        message: message.into(),
    }
}

/// The first line of `text` that contains `needle`, to point an error at it.
pub(crate) fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Reads and parses a YAML file into `T`, with file:line:column on failure.
pub(crate) fn read_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            path,
            None,
            format!(
                "cannot read: {e}; check the path (relative paths are from the pipeline folder)"
            ),
        )
    })?;
    let text = super::interpolate::interpolate(path, &text, &|name| std::env::var(name).ok())?;
    let value = parse_yaml(path, &text)?;
    Ok((value, text))
}

/// Parses YAML text into `T`; errors carry `path` and the parser's line and column.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    serde_norway::from_str(text).map_err(|e| {
        let loc = e.location();
        let mut message = e.to_string();
        // The location is printed in front; drop the parser's own " at line X column Y".
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        ConfigError {
            path: path.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// pipeline.yaml
