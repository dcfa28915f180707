//! Loading component configuration: a TOML file, then `RPM_<COMPONENT>__<KEY>__<SUBKEY>`
//! environment variables on top (`RPM_INGEST__DATABASE__URL=postgres://…`). A bad file gets an
//! error that names the file (or the variable), the key and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

/// A component with a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    /// `rpm gateway`.
    Gateway,
    /// `rpm ingest`.
    Ingest,
}

impl Component {
    /// The environment prefix of its overrides.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Component::Gateway => "RPM_GATEWAY__",
            Component::Ingest => "RPM_INGEST__",
        }
    }

    /// The documented sample, embedded so `rpm config sample` works from any directory.
    pub fn sample(self) -> &'static str {
        match self {
            Component::Gateway => include_str!("../fixtures/config/gateway.toml"),
            Component::Ingest => include_str!("../fixtures/config/ingest.toml"),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A key is wrong: `{file}: key `{key}`: {problem}`.
    Key {
        /// The file, or the environment variable the value came from.
        source: String,
        /// Dotted key (`broker.keep_alive`), or empty for the file as a whole.
        key: String,
        /// What was wrong and what was expected.
        problem: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, error } => {
                write!(f, "{}: cannot read: {error}", file.display())
            }
            ConfigError::Key {
                source,
                key,
                problem,
            } if key.is_empty() => write!(f, "{source}: {problem}"),
            ConfigError::Key {
                source,
                key,
                problem,
            } => write!(f, "{source}: key `{key}`: {problem}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads `file`, applies the component's environment overrides, deserialises and runs the
/// type's own `check`.
pub fn load<T: DeserializeOwned>(
    component: Component,
    file: &Path,
    check: impl FnOnce(&T) -> Result<(), (&'static str, String)>,
) -> Result<T, ConfigError> {
    // Read once up front so a missing or unreadable file is its own clear error (figment would
    // treat a missing file as empty).
    std::fs::metadata(file).map_err(|error| ConfigError::Read {
        file: file.to_owned(),
        error,
    })?;
    let figment = Figment::new().merge(Toml::file_exact(file)).merge(
        Env::prefixed(component.env_prefix())
            .split("__")
            .lowercase(true),
    );
    let config: T = figment
        .extract()
        .map_err(|e| from_figment(&figment, file, component, e))?;
    check(&config).map_err(|(key, problem)| ConfigError::Key {
        source: file.display().to_string(),
        key: key.to_owned(),
        problem,
    })?;
    Ok(config)
}

fn from_figment(
    figment: &Figment,
    file: &Path,
    component: Component,
    e: figment::Error,
) -> ConfigError {
    let mut key = e.path.join(".");
    // A missing key is reported on its table; name the key itself.
    if let figment::error::Kind::MissingField(field) = &e.kind {
        key = if key.is_empty() {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
    }
    // Name where the bad value came from: the file, or the environment variable.
    let source = match figment.find_metadata(&key) {
        Some(meta) if meta.name.contains("environment") => {
            format!(
                "environment variable {}{}",
                component.env_prefix(),
                e.path.join("__").to_uppercase()
            )
        }
        _ => file.display().to_string(),
    };
    use figment::error::Kind;
    let problem = match &e.kind {
        Kind::Message(m) => clean_toml_message(m),
        Kind::MissingField(_) => "missing; this key is required".to_owned(),
        Kind::UnknownField(_, expected) => {
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        kind => kind.to_string(),
    };
    ConfigError::Key {
        source,
        key,
        problem,
    }
}

/// toml's parse errors come as a multi-line snippet; keep the first line and the caret hint.
fn clean_toml_message(m: &str) -> String {
    let lines: Vec<&str> = m.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [first, .., last] if first.starts_with("TOML parse error") => {
            format!("{first}: {}", last.trim_start_matches(['|', '^', ' ']))
        }
        _ => m.to_owned(),
    }
}
