//! The server side of the RPM system: the MQTT consumer, validation and deduplication, the
//! patient record (SQLite and PostgreSQL), the HTTP API, the web console and FHIR R4 views.
//!
//! Not built yet: this crate is laid out so the workspace has the shape `DESIGN.md` gives it.
//! The ingest issue fills it in.
