//! The server side of the RPM system: the MQTT consumer, validation and deduplication, the
//! patient record (SQLite and PostgreSQL), the HTTP API, the web console and FHIR R4 views.
//!
//! Today it holds the configuration contract ([`config::IngestConfig`]) and the patient record
//! ([`record::Record`]): the registry of patients, gateways and devices that validation checks
//! every reading against, the deduplicating batch insert the consumer commits through before it
//! acknowledges a message, dead letters, replay detection and the audit log. The consumer and
//! the console arrive with the ingest and console issues; they will use the record, not SQL.
//!
//! It is not the rules engine (`rules`, pure and clock-free) nor the notifier (`notifier`): it
//! feeds the first and hands alerts to the second, as outbox rows written in the alert's own
//! transaction ([`notify`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ingest::record::RecordError> {
//! let record = ingest::record::Record::connect("sqlite::memory:", 1).await?;
//! let outcome = record.insert_batch(&[]).await?;
//! assert!(outcome.new.is_empty());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod config;
pub mod console;
pub mod consume;
pub mod http;
pub mod notify;
pub mod pages;
pub mod record;
