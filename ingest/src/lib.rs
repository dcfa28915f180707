//! The server side of the RPM system: the MQTT consumer, validation and deduplication, the
//! patient record (SQLite and PostgreSQL), the HTTP API, the web console and FHIR R4 views.
//!
//! Today it holds the configuration contract ([`config::IngestConfig`]); the consumer, the
//! record and the console arrive with the ingest and console issues.

#![deny(missing_docs)]

pub mod config;
