//! Secrets given inline, as `env:NAME` or as `file:PATH`, resolved once at load.

use std::fmt;

/// A secret value whose `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that is already resolved.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call sites are the only places it is revealed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Resolves `env:NAME`, `file:PATH` or an inline value. A file's trailing
    /// newline is dropped, as editors and `echo` add one.
    pub fn resolve(spec: &str) -> Result<Secret, String> {
        if let Some(name) = spec.strip_prefix("env:") {
            return match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(_) => Err(format!("environment variable {name} is not set")),
            };
        }
        if let Some(path) = spec.strip_prefix("file:") {
            return match std::fs::read_to_string(path) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\r', '\n']).to_owned();
                    if v.is_empty() {
                        Err(format!("file {path} is empty"))
                    } else {
                        Ok(Secret(v))
                    }
                }
                Err(e) => Err(format!("cannot read {path}: {e}")),
            };
        }
        if spec.is_empty() {
            return Err("empty secret".into());
        }
        Ok(Secret(spec.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }

    #[test]
    fn resolves_sources() {
        assert_eq!(Secret::resolve("inline").unwrap().expose(), "inline");
        assert!(Secret::resolve("env:SIS_GATEWAY_TEST_SURELY_UNSET")
            .unwrap_err()
            .contains("not set"));
        let dir = std::env::temp_dir().join(format!("sis-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let spec = format!("file:{}", dir.display());
        assert_eq!(Secret::resolve(&spec).unwrap().expose(), "from-file");
        std::fs::remove_file(&dir).unwrap();
        assert!(Secret::resolve("file:/nonexistent/x").is_err());
    }
}
