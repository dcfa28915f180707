//! Real Bluetooth LE on Linux: BlueZ through btleplug, behind [`DeviceSource`] and
//! [`DeviceLink`].
//!
//! [`BluezSource`] is one adapter (`ble.adapter`, e.g. `hci0`, or the first one BlueZ lists).
//! It scans for the health services (Blood Pressure 0x1810, Pulse Oximeter 0x1822, Generic
//! Health Sensor 0x1840) and connects; a [`BluezLink`] discovers the GATT table, reads,
//! writes with response and subscribes, and delivers notifications, indications and the
//! disconnection on the link's one [`LinkEvent`] channel, as the session expects.
//!
//! # What the hub needs at run time
//!
//! - A **system D-Bus** and **`bluetoothd`** (BlueZ 5.50 or later), as Raspberry Pi OS and
//!   Debian ship them (`systemctl status bluetooth`). libdbus itself is built into the binary
//!   (the `libdbus-sys` `vendored` feature), so building needs no `libdbus-1-dev`; only the
//!   daemons are needed when running. `DBUS_SYSTEM_BUS_ADDRESS` overrides the bus address, as
//!   for every libdbus program (the tests use it to point the backend at a mock BlueZ).
//! - Permission to talk to BlueZ: root, or a user in group `bluetooth` (Debian's D-Bus policy
//!   in `/etc/dbus-1/system.d/bluetooth.conf`). A refusal is a permanent error naming this.
//! - A powered adapter: the backend powers it on before scanning; `rfkill unblock bluetooth`
//!   if it is soft-blocked.
//!
//! # Pairing and bonding
//!
//! Many cuffs and oximeters encrypt their measurement characteristics and need bonding once.
//! Bond while the device is in pairing mode, on the hub, with `bluetoothctl`:
//!
//! ```text
//! $ bluetoothctl
//! [bluetooth]# scan le
//! [bluetooth]# pair C0:FF:EE:00:11:22      # confirm the passkey if the device shows one
//! [bluetooth]# trust C0:FF:EE:00:11:22     # reconnect without asking again
//! [bluetooth]# scan off
//! ```
//!
//! BlueZ keeps the keys in `/var/lib/bluetooth/<adapter>/<device>/info`. A device whose bond
//! was lost (reset, batteries out on some models) fails with
//! [`DeviceError::AuthenticationFailed`], which is permanent: the session stops and someone
//! must `remove` and `pair` it again. The backend never pairs on its own: a hub that pairs
//! with whatever advertises a health service would bond a neighbour's cuff.
//!
//! # Pitfalls handled
//!
//! - **Every BlueZ call has a timeout** ([`BluezConfig::call_timeout`], and
//!   [`BluezConfig::connect_timeout`] for connecting). BlueZ answers some calls only after
//!   the radio does, and a D-Bus method call to a wedged `bluetoothd` waits 25–30 s by
//!   default; a timed-out call is [`DeviceError::Timeout`] (retryable), never a hang.
//! - **A dead link surfaces.** btleplug's `CentralEvent::DeviceDisconnected` (BlueZ's
//!   `Connected` property turning false) becomes [`LinkEvent::Disconnected`] on that link,
//!   after any values that were already received. A link that goes quiet without BlueZ
//!   noticing is found by the session's watchdog read, which times out here. If the D-Bus
//!   connection itself ends, the value stream ends and the link reports `Disconnected`.
//! - **Stale disconnection events.** Before a `DeviceDisconnected` ends a link, BlueZ is
//!   asked whether the device is connected now, so a late event from the previous connection
//!   does not end the new one.
//! - **Match rules do not pile up.** Each btleplug event stream adds D-Bus match rules to the
//!   connection; long-lived streams and discovery sessions left running are a known source of
//!   slowdowns in BlueZ. Scans are bounded (the filter's duration), restarted every
//!   `ble.scan_restart` within a long scan, and the adapter event stream that watches for
//!   disconnections is re-created on the same period; dropping a stream removes its rules.
//! - **Reads look like notifications.** BlueZ updates a characteristic's `Value` property
//!   (and signals the change) after a read as well as on a notification; btleplug reports
//!   both as notifications. A link forwards values only of characteristics it subscribed to,
//!   so the session's DIS, battery and clock reads do not come back as events.
//! - **Subscribing twice is harmless.** A link remembers what it subscribed; a second
//!   `subscribe` is a no-op, and BlueZ's `InProgress` answer to a duplicate `StartNotify` is
//!   success. Re-subscribing after a reconnect (the session's job) subscribes again on the new
//!   link: BlueZ drops notification sessions with the connection.
//! - **Indications vs notifications.** BlueZ's `StartNotify` enables notifications when the
//!   characteristic has both, indications otherwise, and BlueZ (not the gateway) confirms each
//!   indication. The D-Bus API offers no way to prefer indications (writing the CCCD is
//!   refused), so on BlueZ "preferred when supported" is BlueZ's choice.
//! - **Cancelled connects.** When the caller gives up on [`DeviceSource::connect`] (the
//!   session's operation timeout) the pending connection is cancelled with `Disconnect`, so
//!   BlueZ does not keep a half-open link the next attempt would trip over; a device that is
//!   already connected is accepted as connected.
//! - **Devices BlueZ has not seen.** `connect` to an address BlueZ does not know runs a short
//!   discovery ([`BluezConfig::find_timeout`]) for it first; a bonded device is known already.
//!
//! Errors map to [`DeviceError`] by BlueZ's D-Bus error names (see [`error`]): a dropped
//! link, a timeout, an ATT error or a missing `bluetoothd` are retryable; refused pairing,
//! a characteristic that does not allow the operation, and a bus policy refusal are not.
//!
//! Log fields carry device addresses at debug level at most; never advertised names (a cuff
//! may advertise its owner's name) and never values.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use btleplug::api::{
    Central as _, CentralEvent, CharPropFlags, Manager as _, Peripheral as _,
    ScanFilter as BtScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    Address, Advertisement, Characteristic, CharacteristicId, DeviceError, DeviceLink,
    DeviceSource, DisconnectReason, LINK_EVENT_CAPACITY, LinkEvent, Properties, ScanFilter, Uuid,
};

pub mod error;

use error::Op;

/// How the BlueZ backend behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BluezConfig {
    /// The adapter by name (`hci0`); the first one (by name) when `None`.
    pub adapter: Option<String>,
    /// Restart discovery and re-create adapter event streams this often.
    pub scan_restart: Duration,
    /// Longest wait for any one BlueZ call (read, write, subscribe, discovery, properties).
    pub call_timeout: Duration,
    /// Longest wait for a connection, including BlueZ's service resolution.
    pub connect_timeout: Duration,
    /// How long `connect` looks for a device BlueZ has not seen yet.
    pub find_timeout: Duration,
}

impl Default for BluezConfig {
    fn default() -> Self {
        BluezConfig {
            adapter: None,
            scan_restart: Duration::from_secs(600),
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            find_timeout: Duration::from_secs(5),
        }
    }
}

impl BluezConfig {
    /// Defaults with the `[ble]` settings of the gateway configuration.
    pub fn from_ble(ble: &crate::config::BleConfig) -> Self {
        BluezConfig {
            adapter: ble.adapter.clone(),
            scan_restart: ble.scan_restart,
            ..BluezConfig::default()
        }
    }
}

/// Where a disconnection event goes: the link registered for a device, by generation so an
/// old link's cleanup never unregisters its successor.
struct Registration {
    generation: u64,
    gone: CancellationToken,
}

type Registry = Arc<Mutex<HashMap<PeripheralId, Registration>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A task that ends when its owner is dropped.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One BlueZ adapter as a [`DeviceSource`].
pub struct BluezSource {
    adapter: Adapter,
    name: String,
    config: BluezConfig,
    registry: Registry,
    next_generation: std::sync::atomic::AtomicU64,
    /// One discovery session at a time (scan, or looking for a device to connect).
    discovery: tokio::sync::Mutex<()>,
    _watch: Owned,
}

/// Runs a BlueZ call with the timeout; maps its error.
async fn call<T>(
    limit: Duration,
    op: Op,
    f: impl Future<Output = btleplug::Result<T>>,
) -> Result<T, DeviceError> {
    match timeout(limit, f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(error::from_btleplug(&e, op)),
        Err(_) => Err(DeviceError::Timeout),
    }
}

fn to_uuid(u: uuid::Uuid) -> Uuid {
    Uuid(u.as_u128())
}

fn to_bt_uuid(u: Uuid) -> uuid::Uuid {
    uuid::Uuid::from_u128(u.as_u128())
}

impl BluezSource {
    /// Connects to BlueZ on the system bus and picks the adapter.
    pub async fn new(config: BluezConfig) -> Result<Self, DeviceError> {
        let limit = config.call_timeout;
        let manager = call(limit, Op::Adapter, Manager::new()).await?;
        let adapters = call(limit, Op::Adapter, manager.adapters()).await?;
        let mut named = Vec::with_capacity(adapters.len());
        for adapter in adapters {
            // "hci0 (usb:v1D6Bp0246d0540)"; an adapter whose info does not parse keeps "?".
            let name = match call(limit, Op::Adapter, adapter.adapter_info()).await {
                Ok(info) => info.split(' ').next().unwrap_or_default().to_string(),
                Err(e) => {
                    debug!(error = %e, "adapter info unavailable");
                    "?".to_string()
                }
            };
            named.push((name, adapter));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let found: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
        let chosen = match &config.adapter {
            Some(want) => named.into_iter().find(|(n, _)| n == want),
            None => named.into_iter().next(),
        };
        let Some((name, adapter)) = chosen else {
            return Err(DeviceError::AdapterUnavailable(match &config.adapter {
                Some(want) => format!("no adapter {want} (BlueZ has: {})", found.join(", ")),
                None => "BlueZ reports no adapter".to_string(),
            }));
        };
        info!(adapter = %name, "BlueZ adapter");
        let registry: Registry = Arc::default();
        let watch = tokio::spawn(watch_disconnections(
            adapter.clone(),
            registry.clone(),
            config.clone(),
        ));
        Ok(BluezSource {
            adapter,
            name,
            config,
            registry,
            next_generation: std::sync::atomic::AtomicU64::new(1),
            discovery: tokio::sync::Mutex::new(()),
            _watch: Owned(watch),
        })
    }

    /// The adapter's name (`hci0`).
    pub fn adapter_name(&self) -> &str {
        &self.name
    }

    async fn events(&self) -> Result<EventStream, DeviceError> {
        call(self.config.call_timeout, Op::Scan, self.adapter.events()).await
    }

    async fn find(&self, address: Address) -> Result<Option<Peripheral>, DeviceError> {
        let all = call(
            self.config.call_timeout,
            Op::Connect,
            self.adapter.peripherals(),
        )
        .await?;
        Ok(all
            .into_iter()
            .find(|p| p.address().into_inner() == address.0))
    }

    /// The peripheral for `address`, discovering for a while when BlueZ has not seen it.
    async fn find_or_discover(&self, address: Address) -> Result<Peripheral, DeviceError> {
        if let Some(p) = self.find(address).await? {
            return Ok(p);
        }
        debug!(%address, "device unknown to BlueZ; discovering");
        // A scan in progress already discovers; otherwise run our own for a while.
        let own = self.discovery.try_lock().ok();
        if own.is_some() {
            call(
                self.config.call_timeout,
                Op::Scan,
                self.adapter.start_scan(BtScanFilter::default()),
            )
            .await?;
        }
        let deadline = Instant::now() + self.config.find_timeout;
        let found = loop {
            if let Some(p) = self.find(address).await? {
                break Some(p);
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if own.is_some() {
            self.stop_scan().await;
        }
        found.ok_or(DeviceError::NotFound)
    }

    async fn stop_scan(&self) {
        if let Err(e) = call(self.config.call_timeout, Op::Scan, self.adapter.stop_scan()).await {
            debug!(error = %e, "stopping discovery failed");
        }
    }

    fn register(&self, id: &PeripheralId) -> (u64, CancellationToken) {
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gone = CancellationToken::new();
        lock(&self.registry).insert(
            id.clone(),
            Registration {
                generation,
                gone: gone.clone(),
            },
        );
        (generation, gone)
    }

    /// Adds to `heard` the advertisers of the filtered services among the devices seen in
    /// events or with a current RSSI.
    async fn collect(
        &self,
        seen: &HashSet<PeripheralId>,
        heard: &mut HashMap<PeripheralId, Advertisement>,
        filter: &ScanFilter,
    ) {
        let limit = self.config.call_timeout;
        let all = match call(limit, Op::Scan, self.adapter.peripherals()).await {
            Ok(all) => all,
            Err(e) => {
                debug!(error = %e, "listing devices failed");
                return;
            }
        };
        for p in all {
            let props = match call(limit, Op::Scan, p.properties()).await {
                Ok(Some(props)) => props,
                // Gone again between the event and now.
                Ok(None) | Err(_) => continue,
            };
            let id = p.id();
            if props.rssi.is_none() && !seen.contains(&id) {
                continue;
            }
            let services: Vec<Uuid> = props.services.iter().copied().map(to_uuid).collect();
            // BlueZ merges every client's discovery filter, so filter again here.
            if !filter.services.is_empty() && !services.iter().any(|s| filter.services.contains(s))
            {
                continue;
            }
            let ad = Advertisement {
                address: Address(props.address.into_inner()),
                local_name: props.local_name,
                services,
                rssi: props.rssi,
            };
            // A later period's RSSI is fresher; an earlier one's stays when BlueZ lost it.
            match heard.get_mut(&id) {
                Some(old) if ad.rssi.is_none() => old.services = ad.services,
                _ => {
                    heard.insert(id, ad);
                }
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;

/// Takes what an event stream has ready without waiting: the synthetic "discovered" events
/// btleplug emits for every device BlueZ already knows, which say nothing about what is in
/// range now.
fn skip_ready(events: &mut EventStream) {
    while let Some(Some(_)) = events.next().now_or_never() {}
}

fn seen_id(event: CentralEvent) -> Option<PeripheralId> {
    match event {
        CentralEvent::DeviceDiscovered(id)
        | CentralEvent::DeviceUpdated(id)
        | CentralEvent::RssiUpdate { id, .. }
        | CentralEvent::ServicesAdvertisement { id, .. }
        | CentralEvent::ServiceDataAdvertisement { id, .. }
        | CentralEvent::ManufacturerDataAdvertisement { id, .. } => Some(id),
        _ => None,
    }
}

impl DeviceSource for BluezSource {
    type Link = BluezLink;

    async fn scan(&self, filter: &ScanFilter) -> Result<Vec<Advertisement>, DeviceError> {
        let _one = self.discovery.lock().await;
        let limit = self.config.call_timeout;
        let bt_filter = BtScanFilter {
            services: filter.services.iter().copied().map(to_bt_uuid).collect(),
        };
        let deadline = Instant::now() + filter.duration;
        let restart = self.config.scan_restart.max(Duration::from_secs(1));
        let mut seen: HashSet<PeripheralId> = HashSet::new();
        let mut heard: HashMap<PeripheralId, Advertisement> = HashMap::new();
        loop {
            // A fresh event stream per discovery period: the old one's match rules go with it.
            let mut events = self.events().await?;
            skip_ready(&mut events);
            call(limit, Op::Scan, self.adapter.start_scan(bt_filter.clone())).await?;
            let period_end = deadline.min(Instant::now() + restart);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(period_end) => break,
                    event = events.next() => match event {
                        Some(e) => seen.extend(seen_id(e)),
                        // The D-Bus connection went away; what BlueZ lists below still counts.
                        None => break,
                    },
                }
            }
            // Read what was heard while discovery still runs: BlueZ sets RSSI exactly for
            // the devices heard in this discovery, and forgets it when discovery stops.
            self.collect(&seen, &mut heard, filter).await;
            self.stop_scan().await;
            if Instant::now() >= deadline {
                break;
            }
            debug!("restarting discovery");
        }
        let mut out: Vec<Advertisement> = heard.into_values().collect();
        out.sort_by_key(|a| a.address);
        Ok(out)
    }

    async fn connect(&self, address: Address) -> Result<BluezLink, DeviceError> {
        let peripheral = self.find_or_discover(address).await?;
        let id = peripheral.id();
        let (generation, gone) = self.register(&id);
        let guard = LinkGuard {
            registry: self.registry.clone(),
            id: id.clone(),
            generation,
            peripheral: Some(peripheral.clone()),
            limit: self.config.call_timeout,
        };
        debug!(%address, "connecting");
        match timeout(self.config.connect_timeout, peripheral.connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if error::is_already_connected(&e) => {}
            Ok(Err(e)) => return Err(error::from_btleplug(&e, Op::Connect)),
            Err(_) => return Err(DeviceError::Timeout),
        }
        // Opened before anything is subscribed, so no early value is missed.
        let notes = call(
            self.config.call_timeout,
            Op::Connect,
            peripheral.notifications(),
        )
        .await?;
        let (tx, rx) = mpsc::channel(LINK_EVENT_CAPACITY);
        let subscribed: Arc<Mutex<HashSet<CharacteristicId>>> = Arc::default();
        let stop = CancellationToken::new();
        let pump = tokio::spawn(pump(notes, gone, stop.clone(), subscribed.clone(), tx));
        debug!(%address, "connected");
        Ok(BluezLink {
            address,
            peripheral,
            limit: self.config.call_timeout,
            events: Some(rx),
            chars: HashMap::new(),
            subscribed,
            stop,
            _pump: Owned(pump),
            // From here the link owns the cleanup.
            registration: Some(guard),
        })
    }
}

/// Unregisters a link and cancels its connection unless disarmed; dropped when `connect`
/// fails or is cancelled half-way.
struct LinkGuard {
    registry: Registry,
    id: PeripheralId,
    generation: u64,
    peripheral: Option<Peripheral>,
    limit: Duration,
}

impl LinkGuard {
    /// Leaves the connection alone when dropped (it was closed another way).
    fn disarm(&mut self) {
        self.peripheral = None;
    }

    fn unregister(&self) {
        let mut registry = lock(&self.registry);
        if registry
            .get(&self.id)
            .is_some_and(|r| r.generation == self.generation)
        {
            registry.remove(&self.id);
        }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.unregister();
        let Some(peripheral) = self.peripheral.take() else {
            return;
        };
        // Cancel a pending or established connection nobody will use. Best effort: outside a
        // runtime there is nothing to run it on, and BlueZ drops idle links itself.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let limit = self.limit;
            handle.spawn(async move {
                let _ = timeout(limit, peripheral.disconnect()).await;
            });
        }
    }
}

/// Routes btleplug's `DeviceDisconnected` to the link registered for the device. Re-creates
/// its event stream every `scan_restart` (and whenever it ends) so its match rules are fresh.
async fn watch_disconnections(adapter: Adapter, registry: Registry, config: BluezConfig) {
    let period = config.scan_restart.max(Duration::from_secs(1));
    loop {
        let mut events = match call(config.call_timeout, Op::Adapter, adapter.events()).await {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "BlueZ adapter events unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let renew = Instant::now() + period;
        loop {
            let event = tokio::select! {
                () = tokio::time::sleep_until(renew) => break,
                e = events.next() => e,
            };
            let Some(event) = event else {
                debug!("adapter event stream ended; re-creating");
                break;
            };
            let CentralEvent::DeviceDisconnected(id) = event else {
                continue;
            };
            let gone = lock(&registry).get(&id).map(|r| r.gone.clone());
            let Some(gone) = gone else { continue };
            // A late event from the previous connection must not end the current one.
            let still_up = match timeout(config.call_timeout, adapter.peripheral(&id)).await {
                Ok(Ok(p)) => timeout(config.call_timeout, p.is_connected())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(false),
                _ => false,
            };
            if still_up {
                debug!("stale disconnection event ignored");
            } else {
                gone.cancel();
            }
        }
    }
}

/// Moves values of subscribed characteristics to the link's channel; ends it with
/// `Disconnected` when the device goes (after the values already received) or the value
/// stream ends.
async fn pump(
    mut notes: Pin<Box<dyn Stream<Item = ValueNotification> + Send>>,
    gone: CancellationToken,
    stop: CancellationToken,
    subscribed: Arc<Mutex<HashSet<CharacteristicId>>>,
    tx: mpsc::Sender<LinkEvent>,
) {
    let to_event = |n: ValueNotification| {
        let characteristic = CharacteristicId {
            service: to_uuid(n.service_uuid),
            uuid: to_uuid(n.uuid),
        };
        lock(&subscribed)
            .contains(&characteristic)
            .then_some(LinkEvent::Value {
                characteristic,
                bytes: n.value,
            })
    };
    let send = |event: LinkEvent| {
        let tx = tx.clone();
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => false,
                r = tx.send(event) => r.is_ok(),
            }
        }
    };
    let reason = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            n = notes.next() => match n {
                Some(n) => {
                    if let Some(event) = to_event(n)
                        && !send(event).await
                    {
                        return;
                    }
                }
                None => break DisconnectReason::Unknown,
            },
            () = gone.cancelled() => {
                // Values BlueZ delivered before the disconnection are already queued here.
                while let Some(Some(n)) = notes.next().now_or_never() {
                    if let Some(event) = to_event(n)
                        && !send(event).await
                    {
                        return;
                    }
                }
                break DisconnectReason::RemoteClosed;
            }
        }
    };
    debug!(?reason, "link ended");
    let _ = send(LinkEvent::Disconnected { reason }).await;
}

/// One connection through BlueZ.
pub struct BluezLink {
    address: Address,
    peripheral: Peripheral,
    limit: Duration,
    events: Option<mpsc::Receiver<LinkEvent>>,
    chars: HashMap<CharacteristicId, btleplug::api::Characteristic>,
    subscribed: Arc<Mutex<HashSet<CharacteristicId>>>,
    stop: CancellationToken,
    _pump: Owned,
    /// Unregisters and disconnects when the link is dropped without `disconnect`.
    registration: Option<LinkGuard>,
}

fn properties(flags: CharPropFlags) -> Properties {
    Properties {
        read: flags.contains(CharPropFlags::READ),
        write: flags.contains(CharPropFlags::WRITE),
        notify: flags.contains(CharPropFlags::NOTIFY),
        indicate: flags.contains(CharPropFlags::INDICATE),
    }
}

impl BluezLink {
    fn characteristic(
        &self,
        id: CharacteristicId,
    ) -> Result<&btleplug::api::Characteristic, DeviceError> {
        self.chars
            .get(&id)
            .ok_or(DeviceError::NoSuchCharacteristic(id.uuid))
    }
}

impl DeviceLink for BluezLink {
    fn address(&self) -> Address {
        self.address
    }

    fn take_events(&mut self) -> Option<mpsc::Receiver<LinkEvent>> {
        self.events.take()
    }

    async fn discover(&mut self) -> Result<Vec<Characteristic>, DeviceError> {
        call(
            self.limit,
            Op::Discover,
            self.peripheral.discover_services(),
        )
        .await?;
        self.chars = self
            .peripheral
            .services()
            .into_iter()
            .flat_map(|s| s.characteristics)
            .map(|c| {
                let id = CharacteristicId {
                    service: to_uuid(c.service_uuid),
                    uuid: to_uuid(c.uuid),
                };
                (id, c)
            })
            .collect();
        let mut out: Vec<Characteristic> = self
            .chars
            .iter()
            .map(|(id, c)| Characteristic {
                id: *id,
                properties: properties(c.properties),
            })
            .collect();
        out.sort_by_key(|c| (c.id.service, c.id.uuid));
        Ok(out)
    }

    async fn read(&mut self, characteristic: CharacteristicId) -> Result<Vec<u8>, DeviceError> {
        let c = self.characteristic(characteristic)?;
        if !c.properties.contains(CharPropFlags::READ) {
            return Err(DeviceError::NotPermitted(characteristic.uuid, "read"));
        }
        call(
            self.limit,
            Op::Read(characteristic.uuid),
            self.peripheral.read(c),
        )
        .await
    }

    async fn write(
        &mut self,
        characteristic: CharacteristicId,
        bytes: &[u8],
    ) -> Result<(), DeviceError> {
        let c = self.characteristic(characteristic)?;
        if !c.properties.contains(CharPropFlags::WRITE) {
            return Err(DeviceError::NotPermitted(characteristic.uuid, "write"));
        }
        call(
            self.limit,
            Op::Write(characteristic.uuid),
            self.peripheral.write(c, bytes, WriteType::WithResponse),
        )
        .await
    }

    async fn subscribe(&mut self, characteristic: CharacteristicId) -> Result<(), DeviceError> {
        let c = self.characteristic(characteristic)?.clone();
        if !c
            .properties
            .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
        {
            return Err(DeviceError::NotPermitted(characteristic.uuid, "subscribe"));
        }
        // Listed first, so a value sent right after StartNotify's answer is not filtered out.
        if !lock(&self.subscribed).insert(characteristic) {
            return Ok(());
        }
        let result = match timeout(self.limit, self.peripheral.subscribe(&c)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if error::is_in_progress(&e) => Ok(()),
            Ok(Err(e)) => Err(error::from_btleplug(&e, Op::Subscribe(characteristic.uuid))),
            Err(_) => Err(DeviceError::Timeout),
        };
        if result.is_err() {
            lock(&self.subscribed).remove(&characteristic);
        }
        result
    }

    async fn disconnect(&mut self) -> Result<(), DeviceError> {
        self.stop.cancel();
        let Some(mut registration) = self.registration.take() else {
            return Ok(());
        };
        registration.unregister();
        // Disconnecting here, not in the guard's drop.
        registration.disarm();
        match call(self.limit, Op::Disconnect, self.peripheral.disconnect()).await {
            Ok(()) | Err(DeviceError::Disconnected | DeviceError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for BluezLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
