//! Simulated BLE peripherals that emit exactly the GATT bytes real devices do, clinical
//! scenarios in accelerated time, and the fleet load generator.
//!
//! Not built yet: the devices issue fills it in.
