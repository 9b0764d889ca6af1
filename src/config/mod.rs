//! Configuration: the limits directory (envoyproxy/ratelimit's YAML format
//! plus tollgate's extensions), the service config file, and hot reload.
//!
//! Every error names the file, the line and the problem, and a directory with
//! any error is rejected whole: a config is never half-applied.

pub mod auth;
mod limits_file;
mod reload;
mod service;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use limits_file::parse_limits_file;
pub use reload::{LimitsWatcher, ReloadStatus};
pub use service::{LogFormat, ServiceConfig, UsageBackend};

use crate::limits::Limits;

/// One problem in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given (relative to the working directory if it was).
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub problem: String,
}

impl ConfigError {
    /// A problem at `line` of `file`.
    pub fn new(file: &Path, line: Option<usize>, problem: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.problem),
            None => write!(f, "{}: {}", self.file.display(), self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        Self(vec![e])
    }
}

/// Whether a directory entry is a limits file: `*.yaml` or `*.yml`, not hidden.
///
/// The reference loads every file whatever its name; skipping dot-files and
/// other extensions keeps editor swap and backup files from breaking a reload.
fn is_limits_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    !hidden && yaml
}

/// The limits files under `dir`, recursively, in a stable order.
///
/// # Errors
/// When `dir` or a subdirectory cannot be read.
pub fn limits_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            ConfigError::new(&d, None, format!("cannot read limits directory: {e}"))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                ConfigError::new(&d, None, format!("cannot read limits directory: {e}"))
            })?;
            let path = entry.path();
            let hidden = entry
                .file_name()
                .to_str()
                .is_none_or(|n| n.starts_with('.'));
            // `metadata` follows symlinks, so a symlinked file or directory
            // (the reference's RUNTIME_ROOT swap) is read through.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() && !hidden => pending.push(path),
                Ok(m) if m.is_file() && is_limits_file(&path) => files.push(path),
                Ok(_) => {}
                Err(e) => return Err(ConfigError::new(&path, None, format!("cannot read: {e}"))),
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every limits file under `dir` into one [`Limits`].
///
/// # Errors
/// Every problem in every file, and domains defined twice; then nothing is
/// returned, so a caller keeps whatever limits it had.
pub fn load_limits_dir(dir: &Path) -> Result<Limits, ConfigErrors> {
    let files = limits_files(dir)?;
    let mut errors = Vec::new();
    let mut domains: Vec<crate::limits::DomainLimits> = Vec::new();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::new(file, None, format!("cannot read: {e}")));
                continue;
            }
        };
        match parse_limits_file(file, &text) {
            Ok(domain) => {
                if let Some(first) = domains.iter().find(|d| d.name == domain.name) {
                    errors.push(ConfigError::new(
                        file,
                        Some(domain.line),
                        format!(
                            "duplicate domain '{}' in config file (first defined in {})",
                            domain.name, first.source
                        ),
                    ));
                } else {
                    domains.push(domain);
                }
            }
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    if errors.is_empty() {
        Ok(Limits::from_domains(domains))
    } else {
        Err(ConfigErrors(errors))
    }
}
