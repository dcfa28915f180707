//! Alert routing, escalation, the durable outbox and the delivery channels (SMTP, webhooks,
//! SMS gateways). It knows nothing of MQTT, HTTP routes or SQL schemas beyond its outbox.
//!
//! Not built yet: the notifier issue fills it in.
