//! `${VAR}` and `${VAR:-default}` in configuration files, replaced by the environment's values
//! before parsing (as Redpanda Connect does). `$${` writes a literal `${`. Comment lines are
//! left as written. Line numbers stay those of the file (a value with a newline is refused).

use std::path::Path;

use super::error::{ConfigError, err};

/// `text` with every `${…}` replaced from `lookup`; an unset variable without a default, an
/// unclosed `${` or a value with a line break is an error at its line.
pub fn interpolate(
    path: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let at = Some(i + 1);
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            if rest[..start].ends_with('$') {
                // `$${`: a literal `${`.
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let Some(len) = rest[start + 2..].find('}') else {
                return Err(err(
                    path,
                    at,
                    "`${` without a closing `}`; write ${VAR}, ${VAR:-default}, or $${ for a literal ${",
                ));
            };
            let inner = &rest[start + 2..start + 2 + len];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(err(
                    path,
                    at,
                    format!(
                        "`${{{inner}}}`: `{name}` is not an environment variable name (letters, digits and _, not starting with a digit)"
                    ),
                ));
            }
            let value = match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(err(
                        path,
                        at,
                        format!(
                            "environment variable `{name}` is not set (or empty); set it, or give a default as ${{{name}:-value}}"
                        ),
                    ));
                }
            };
            if value.contains(['\n', '\r']) {
                return Err(err(
                    path,
                    at,
                    format!(
                        "environment variable `{name}` holds a line break; a config value must fit on its line"
                    ),
                ));
            }
            out.push_str(&value);
            rest = &rest[start + 2 + len + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "REGION" => Some("eu".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, ConfigError> {
        interpolate(Path::new("p.yaml"), text, &env)
    }

    #[test]
    fn variables_defaults_and_escapes() {
        assert_eq!(
            run("url: https://${REGION}.example/v1\n").unwrap(),
            "url: https://eu.example/v1\n"
        );
        assert_eq!(run("a: ${NOPE:-x}\n").unwrap(), "a: x\n");
        assert_eq!(run("a: ${EMPTY:-fallback}\n").unwrap(), "a: fallback\n");
        assert_eq!(run("a: $${REGION}\n").unwrap(), "a: ${REGION}\n");
        assert_eq!(
            run("# ${UNSET} in a comment\nb: 1\n").unwrap(),
            "# ${UNSET} in a comment\nb: 1\n"
        );
        assert_eq!(run("a: ${REGION}-${REGION}").unwrap(), "a: eu-eu");
    }

    #[test]
    fn unset_unclosed_and_multiline_values_are_errors_at_their_line() {
        let e = run("a: 1\nb: ${MISSING}\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("`MISSING` is not set"), "{e}");
        assert_eq!(run("x: ${OPEN\n").unwrap_err().line, Some(1));
        assert!(
            run("x: ${MULTI}\n")
                .unwrap_err()
                .message
                .contains("line break")
        );
        assert!(
            run("x: ${9X}\n")
                .unwrap_err()
                .message
                .contains("not an environment variable name")
        );
    }
}
