//! The home hub: it reads Bluetooth LE medical devices and forwards their readings.
//!
//! This crate is for the gateway side of remote patient monitoring: turning the bytes a
//! blood pressure cuff or pulse oximeter sends over GATT into typed, checked values
//! ([`codec`]), and — later — finding devices, keeping readings in a durable queue and
//! publishing them over MQTT. The same codecs encode, so the simulators emit exactly the
//! bytes real devices do.
//!
//! It is not for interpreting readings clinically (that is the `rules` crate), nor for
//! anything on the server side; it knows nothing about patients beyond a pseudonymous key.
//!
//! Start from [`codec::decode`]:
//!
//! ```
//! use gateway::codec::{self, Decoded};
//!
//! // A PLX spot-check: flags 0, SpO2 97 %, pulse rate 72 /min.
//! let value = codec::decode(0x2A5E, &[0x00, 0x61, 0x00, 0x48, 0x00])?;
//! if let Decoded::PlxSpotCheckMeasurement(m) = &value {
//!     assert_eq!(m.spo2_percent.to_f64(), Some(97.0));
//! }
//! assert_eq!(codec::encode(&value)?, [0x00, 0x61, 0x00, 0x48, 0x00]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;

// The `rpm gateway` configuration contract.
pub mod config;

// The durable store-and-forward queue.
pub mod queue;

// The MQTT forwarder.
pub mod publish;

// BLE device sources and the per-device session.
pub mod device;
