//! [`RecordError`]: what went wrong talking to the record, sorted by what a caller does next.

/// An error from the patient record. [`RecordError::is_retryable`] tells the consumer whether
/// to back off and try the same batch again (the broker message stays unacknowledged) or to
/// give up on it.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The database cannot be reached or stopped answering (connection refused or lost, pool
    /// timed out, server shutting down, disk full or I/O error). Retry with backoff.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Lost a race with another writer (SQLite busy/locked, PostgreSQL serialization failure
    /// or deadlock). Retry soon; nothing was committed.
    #[error("database busy or transaction conflict: {0}")]
    Contention(#[source] sqlx::Error),
    /// A row broke a constraint: a reading for a patient or gateway the registry does not
    /// know, a duplicate key where none is allowed. Retrying the same input fails again.
    #[error("constraint violated: {0}")]
    Constraint(#[source] sqlx::Error),
    /// A registry lookup or change named something that does not exist.
    #[error("{what} `{key}` not found")]
    NotFound {
        /// What kind of thing (`patient`, `gateway`, `device`, `binding`).
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// A registry change that contradicts what is there (the patient already exists, the
    /// device slot is already bound).
    #[error("{0}")]
    Conflict(String),
    /// An argument the record cannot store (a sequence number over `i64::MAX`, a bad URL).
    #[error("{0}")]
    Invalid(String),
    /// A stored row this build cannot read back (hand-edited, or written by a newer build).
    #[error("unreadable row in `{table}`: {why}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What did not parse.
        why: String,
    },
    /// Applying the schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error; treated as permanent.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl RecordError {
    /// True when the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RecordError::Unavailable(_) | RecordError::Contention(_)
        )
    }

    pub(crate) fn corrupt(table: &'static str, why: impl std::fmt::Display) -> Self {
        RecordError::Corrupt {
            table,
            why: why.to_string(),
        }
    }
}

impl From<sqlx::Error> for RecordError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        use sqlx::error::ErrorKind;
        match &e {
            E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed => RecordError::Unavailable(e),
            E::Database(db) => {
                if matches!(
                    db.kind(),
                    ErrorKind::UniqueViolation
                        | ErrorKind::ForeignKeyViolation
                        | ErrorKind::NotNullViolation
                        | ErrorKind::CheckViolation
                ) {
                    return RecordError::Constraint(e);
                }
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let transient = if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    sqlite_transient(&code)
                } else {
                    pg_transient(&code)
                };
                match transient {
                    Some(Transient::Contention) => RecordError::Contention(e),
                    Some(Transient::Unavailable) => RecordError::Unavailable(e),
                    None => RecordError::Database(e),
                }
            }
            _ => RecordError::Database(e),
        }
    }
}

enum Transient {
    Contention,
    Unavailable,
}

/// SQLite result codes (the primary code is the low byte of the extended one).
fn sqlite_transient(code: &str) -> Option<Transient> {
    let primary = code.parse::<i32>().ok()? & 0xff;
    match primary {
        5 | 6 => Some(Transient::Contention), // SQLITE_BUSY, SQLITE_LOCKED
        10 | 13 | 14 => Some(Transient::Unavailable), // SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
        _ => None,
    }
}

/// PostgreSQL SQLSTATEs.
fn pg_transient(code: &str) -> Option<Transient> {
    match code {
        "40001" | "40P01" | "55P03" => Some(Transient::Contention),
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
            Some(Transient::Unavailable)
        }
        _ => None,
    }
}

/// Results of record operations.
pub type Result<T, E = RecordError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes_are_classified() {
        assert!(matches!(sqlite_transient("5"), Some(Transient::Contention)));
        assert!(matches!(
            sqlite_transient("517"),
            Some(Transient::Contention)
        ));
        assert!(matches!(
            sqlite_transient("13"),
            Some(Transient::Unavailable)
        ));
        assert!(sqlite_transient("19").is_none());
        assert!(matches!(pg_transient("40001"), Some(Transient::Contention)));
        assert!(matches!(
            pg_transient("08006"),
            Some(Transient::Unavailable)
        ));
        assert!(matches!(
            pg_transient("57P01"),
            Some(Transient::Unavailable)
        ));
        assert!(pg_transient("23503").is_none());
        assert!(RecordError::Unavailable(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!RecordError::Invalid("x".into()).is_retryable());
    }
}
