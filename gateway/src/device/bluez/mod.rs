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
//! A device is accepted only if it is paired as well as allowlisted
//! ([`BluezConfig::require_pairing`], `ble.require_pairing`, on by default). Before every
//! connection the backend asks BlueZ for the device's `Paired` and `Bonded` (BlueZ 5.67 and
//! later) properties, through a bluez-async session of its own since btleplug's properties
//! leave them out; a device that is neither is not connected to at all and `connect` fails
//! with [`DeviceError::NotPaired`], which is retryable: the session logs the address once,
//! counts the refusal, and is let in on its first attempt after someone pairs it. Without the
//! check an unpaired device whose characteristics need no encryption would be read by anyone
//! who put its address on the allowlist, and a read that does need encryption makes BlueZ
//! raise the link's security, which starts pairing.
//!
//! # Pitfalls handled
//!
//! - **Every BlueZ call has a timeout** ([`BluezConfig::call_timeout`], and
//!   [`BluezConfig::connect_timeout`] for connecting). BlueZ answers some calls only after
//!   the radio does, and a D-Bus method call to a wedged `bluetoothd` waits 25–30 s by
//!   default; a timed-out call is [`DeviceError::Timeout`] (retryable), never a hang, and is
//!   cancelled on the BlueZ thread.
//! - **A dead link surfaces.** btleplug's `CentralEvent::DeviceDisconnected` (BlueZ's
//!   `Connected` property turning false) becomes [`LinkEvent::Disconnected`] on that link,
//!   after any values that were already received. A link that goes quiet without BlueZ
//!   noticing is found by the session's watchdog read, which times out here. If the D-Bus
//!   connection itself ends, the value stream ends and the link reports `Disconnected`.
//! - **Stale disconnection events.** Before a `DeviceDisconnected` ends a link, BlueZ is
//!   asked whether the device is connected now, so a late event from the previous connection
//!   does not end the new one.
//! - **Match rules do not pile up.** Every btleplug event or value stream adds D-Bus match
//!   rules on the bus, and bluez-async removes them from a task spawned when the stream is
//!   dropped, `unwrap`ping the answer. On a multi-threaded runtime that removal can run while
//!   dbus-rs has the stream's filter out of its list to dispatch a signal: it fails ("No match
//!   with that id found"), panics in the detached task and leaves the rule on the bus, once per
//!   unlucky connection. So the backend (a) keeps streams for as long as the source lives: one
//!   adapter event stream (disconnections for links, devices heard for scans) and one value
//!   stream per device, shared by all its connections; and (b) runs every btleplug call and
//!   owns every stream on a current-thread runtime on a thread of its own ("bluez"), where
//!   dispatching and removing cannot interleave (bluez-async still opens and drops one stream
//!   inside each `connect`). The mock test counts the rules the bus daemon holds for the
//!   backend before and after repeated scans and connections.
//! - **Discovery is restarted.** Scans are bounded (the filter's duration) and, within a
//!   long scan, BlueZ discovery is stopped and started again every `ble.scan_restart`, so a
//!   discovery session (and BlueZ's view of what is in range) never runs indefinitely.
//! - **Reads look like notifications.** BlueZ updates a characteristic's `Value` property
//!   (and signals the change) after a read as well as on a notification; btleplug reports
//!   both as notifications. A link forwards values only of characteristics it subscribed to,
//!   so the session's Device Information and clock reads do not come back as events. A read
//!   of a subscribed characteristic (the battery level the watchdog probes) does come back,
//!   indistinguishable from a notification; the session takes it as a fresh battery level.
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
//! Errors map to [`DeviceError`] by BlueZ's D-Bus error names (see `error.rs`): a dropped
//! link, a timeout, an ATT error or a missing `bluetoothd` are retryable; refused pairing,
//! a characteristic that does not allow the operation, and a bus policy refusal are not.
//!
//! Log fields carry device addresses at debug level at most (the one exception is the
//! session's single warning naming a device that is not paired, which whoever pairs it
//! needs); never advertised names (a cuff may advertise its owner's name) and never values.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use btleplug::api::{
    Central as _, CentralEvent, CharPropFlags, Manager as _, Peripheral as _,
    ScanFilter as BtScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    Address, Advertisement, Characteristic, CharacteristicId, DeviceError, DeviceLink,
    DeviceSource, DisconnectReason, LINK_EVENT_CAPACITY, LinkEvent, Properties, ScanFilter, Uuid,
};

mod error;

use error::Op;

/// How the BlueZ backend behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BluezConfig {
    /// The adapter by name (`hci0`); the first one (by name) when `None`.
    pub adapter: Option<String>,
    /// Within a longer scan, stop and start BlueZ discovery this often.
    pub scan_restart: Duration,
    /// Longest wait for any one BlueZ call (read, write, subscribe, discovery, properties).
    pub call_timeout: Duration,
    /// Longest wait for a connection, including BlueZ's service resolution.
    pub connect_timeout: Duration,
    /// How long `connect` looks for a device BlueZ has not seen yet.
    pub find_timeout: Duration,
    /// Refuse (never connect to) a device BlueZ reports neither `Paired` nor `Bonded`:
    /// [`DeviceError::NotPaired`]. `ble.require_pairing`.
    pub require_pairing: bool,
}

impl Default for BluezConfig {
    fn default() -> Self {
        BluezConfig {
            adapter: None,
            scan_restart: Duration::from_secs(600),
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            find_timeout: Duration::from_secs(5),
            require_pairing: true,
        }
    }
}

impl BluezConfig {
    /// Defaults with the `[ble]` settings of the gateway configuration.
    pub fn from_ble(ble: &crate::config::BleConfig) -> Self {
        BluezConfig {
            adapter: ble.adapter.clone(),
            scan_restart: ble.scan_restart,
            require_pairing: ble.require_pairing,
            ..BluezConfig::default()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A current-thread tokio runtime on a thread of its own, where every btleplug future runs
/// and every btleplug stream lives and is dropped.
///
/// Why: bluez-async removes a stream's D-Bus match rule from a task spawned in the stream's
/// `Drop`, and `unwrap`s the result. dbus-rs takes a signal's matching filters out of its list
/// while it hands the signal to them; on a multi-threaded runtime the removal task can run
/// in that window, fail with "No match with that id found", panic, and leave the rule on the
/// bus. On one thread, dispatching a signal and removing a rule cannot interleave.
struct BluezThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BluezThread {
    fn start() -> Result<Arc<Self>, DeviceError> {
        let unavailable = |e: std::io::Error| DeviceError::Other {
            message: format!("starting the BlueZ thread: {e}"),
            retryable: false,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(unavailable)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bluez".into())
            .spawn(move || {
                // Ends when the source (and every link) is gone; dropping the runtime here
                // drops the remaining tasks and streams on this thread.
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(unavailable)?;
        Ok(Arc::new(BluezThread {
            handle,
            stop: Some(stop),
        }))
    }

    fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f)
    }

    /// Runs a btleplug future on the BlueZ thread, at most `limit`; a timed-out or abandoned
    /// call is cancelled there. The outer error is the timeout, the inner one btleplug's.
    async fn raw<T: Send + 'static>(
        &self,
        limit: Duration,
        f: impl Future<Output = btleplug::Result<T>> + Send + 'static,
    ) -> Result<btleplug::Result<T>, DeviceError> {
        let mut task = AbortOnDrop(self.spawn(f));
        match timeout(limit, &mut task.0).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(DeviceError::Other {
                message: format!("BlueZ call did not finish: {e}"),
                retryable: true,
            }),
            Err(_) => Err(DeviceError::Timeout),
        }
    }

    /// [`BluezThread::raw`] with btleplug's error mapped.
    async fn call<T: Send + 'static>(
        &self,
        limit: Duration,
        op: Op,
        f: impl Future<Output = btleplug::Result<T>> + Send + 'static,
    ) -> Result<T, DeviceError> {
        self.raw(limit, f)
            .await?
            .map_err(|e| error::from_btleplug(&e, op))
    }
}

impl Drop for BluezThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A task that ends when its owner is dropped (or its caller gave up).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a BlueZ call with the timeout on the current task (the BlueZ thread's own tasks).
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

/// Where a device's values and its disconnection go: the link that is current for it.
#[derive(Clone)]
struct Sink {
    generation: u64,
    tx: mpsc::Sender<LinkEvent>,
    subscribed: Arc<Mutex<HashSet<CharacteristicId>>>,
    /// Cancelled when BlueZ reports the device disconnected.
    gone: CancellationToken,
}

/// One device the source has connected to, for as long as the source lives: the btleplug
/// peripheral (whose GATT table the value stream resolves characteristics with) and the one
/// value stream (D-Bus match rules) that serves every link to it.
struct DeviceEntry {
    peripheral: Peripheral,
    sink: watch::Sender<Option<Sink>>,
    pump: AbortOnDrop<()>,
}

/// Shared with the background tasks.
struct Shared {
    /// The current link's `gone` token per device, for the disconnection watcher.
    gone: Mutex<HashMap<PeripheralId, (u64, CancellationToken)>>,
    /// Devices heard (discovered, RSSI, advertisement data), for scans.
    heard: broadcast::Sender<PeripheralId>,
}

/// One BlueZ adapter as a [`DeviceSource`].
pub struct BluezSource {
    bt: Arc<BluezThread>,
    adapter: Adapter,
    name: String,
    config: BluezConfig,
    shared: Arc<Shared>,
    devices: tokio::sync::Mutex<HashMap<PeripheralId, Arc<DeviceEntry>>>,
    next_generation: AtomicU64,
    /// One discovery session at a time (scan, or looking for a device to connect).
    discovery: tokio::sync::Mutex<()>,
    /// bluez-async's own D-Bus connection, to read `Paired` and `Bonded`, which btleplug's
    /// properties leave out; `None` when pairing is not required.
    pairing: Option<bluez_async::BluetoothSession>,
    _watch: AbortOnDrop<()>,
}

impl BluezSource {
    /// Connects to BlueZ on the system bus and picks the adapter.
    pub async fn new(config: BluezConfig) -> Result<Self, DeviceError> {
        let limit = config.call_timeout;
        let bt = BluezThread::start()?;
        let manager = bt.call(limit, Op::Adapter, Manager::new()).await?;
        let m = manager.clone();
        let adapters = bt
            .call(limit, Op::Adapter, async move { m.adapters().await })
            .await?;
        let mut named = Vec::with_capacity(adapters.len());
        for adapter in adapters {
            // "hci0 (usb:v1D6Bp0246d0540)"; an adapter whose info does not parse keeps "?".
            let a = adapter.clone();
            let info = bt.call(limit, Op::Adapter, async move { a.adapter_info().await });
            let name = match info.await {
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
        // The adapter event stream is opened here, once, so the source fails now if it
        // cannot watch for disconnections.
        let a = adapter.clone();
        let events = bt
            .call(limit, Op::Adapter, async move { a.events().await })
            .await?;
        info!(adapter = %name, "BlueZ adapter");
        let pairing = if config.require_pairing {
            Some(pairing_session(&bt, limit).await?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            gone: Mutex::default(),
            heard: broadcast::channel(256).0,
        });
        let watch = bt.spawn(watch_adapter(
            adapter.clone(),
            events,
            shared.clone(),
            limit,
        ));
        Ok(BluezSource {
            bt,
            adapter,
            name,
            config,
            shared,
            devices: tokio::sync::Mutex::default(),
            next_generation: AtomicU64::new(1),
            discovery: tokio::sync::Mutex::new(()),
            pairing,
            _watch: AbortOnDrop(watch),
        })
    }

    /// The adapter's name (`hci0`).
    pub fn adapter_name(&self) -> &str {
        &self.name
    }

    /// Runs `f` with the adapter on the BlueZ thread, with the call timeout.
    async fn on_adapter<T, Fut>(
        &self,
        op: Op,
        f: impl FnOnce(Adapter) -> Fut,
    ) -> Result<T, DeviceError>
    where
        T: Send + 'static,
        Fut: Future<Output = btleplug::Result<T>> + Send + 'static,
    {
        self.bt
            .call(self.config.call_timeout, op, f(self.adapter.clone()))
            .await
    }

    async fn find(&self, address: Address) -> Result<Option<Peripheral>, DeviceError> {
        let all = self
            .on_adapter(Op::Connect, |a| async move { a.peripherals().await })
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
            self.on_adapter(Op::Scan, |a| async move {
                a.start_scan(BtScanFilter::default()).await
            })
            .await?;
        }
        let deadline = Instant::now() + self.config.find_timeout;
        let found = loop {
            match self.find(address).await {
                Ok(Some(p)) => break Ok(Some(p)),
                Ok(None) if Instant::now() >= deadline => break Ok(None),
                Ok(None) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => break Err(e),
            }
        };
        if own.is_some() {
            self.stop_scan().await;
        }
        found?.ok_or(DeviceError::NotFound)
    }

    async fn stop_scan(&self) {
        let stopped = self
            .on_adapter(Op::Scan, |a| async move { a.stop_scan().await })
            .await;
        if let Err(e) = stopped {
            debug!(error = %e, "stopping discovery failed");
        }
    }

    /// The device's entry, made on first contact (one value stream per device for the
    /// source's life, re-made only if it ended).
    async fn entry(&self, address: Address) -> Result<Arc<DeviceEntry>, DeviceError> {
        if let Some(e) = self.known(address).await {
            return Ok(e);
        }
        let peripheral = self.find_or_discover(address).await?;
        self.entry_for(address, peripheral).await
    }

    /// The live entry of a device connected to before.
    async fn known(&self, address: Address) -> Option<Arc<DeviceEntry>> {
        known(&*self.devices.lock().await, address)
    }

    /// The entry for `peripheral`, made unless another caller just made it.
    async fn entry_for(
        &self,
        address: Address,
        peripheral: Peripheral,
    ) -> Result<Arc<DeviceEntry>, DeviceError> {
        let mut devices = self.devices.lock().await;
        if let Some(e) = known(&devices, address) {
            return Ok(e);
        }
        let p = peripheral.clone();
        let notes = self
            .bt
            .call(self.config.call_timeout, Op::Connect, async move {
                p.notifications().await
            })
            .await?;
        let (sink, _) = watch::channel(None);
        let entry = Arc::new(DeviceEntry {
            peripheral: peripheral.clone(),
            sink: sink.clone(),
            pump: AbortOnDrop(self.bt.spawn(pump(notes, sink))),
        });
        devices.insert(peripheral.id(), entry.clone());
        Ok(entry)
    }

    /// Whether BlueZ reports the device `Paired` or `Bonded` (BlueZ 5.67 and later say
    /// `Bonded` when the keys are stored; earlier ones only have `Paired`), read now, not
    /// from a cache: a device paired a minute ago is let in on the next attempt.
    async fn is_paired(
        &self,
        session: &bluez_async::BluetoothSession,
        peripheral: &Peripheral,
    ) -> Result<bool, DeviceError> {
        // btleplug's id prints as bluez-async's ("hci0/dev_C0_FF_EE_00_11_22").
        let id: bluez_async::DeviceId = peripheral
            .id()
            .to_string()
            .parse()
            .map_err(|e| error::from_bluez(&e, Op::Connect))?;
        let session = session.clone();
        let info = self
            .bt
            .call(self.config.call_timeout, Op::Connect, async move {
                Ok(session.get_device_info(&id).await?)
            })
            .await?;
        Ok(info.paired || info.bonded)
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
        let listed = self
            .on_adapter(Op::Scan, |a| async move { a.peripherals().await })
            .await;
        let all = match listed {
            Ok(all) => all,
            Err(e) => {
                debug!(error = %e, "listing devices failed");
                return;
            }
        };
        for p in all {
            let q = p.clone();
            let props = self
                .bt
                .call(limit, Op::Scan, async move { q.properties().await });
            let props = match props.await {
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

impl DeviceSource for BluezSource {
    type Link = BluezLink;

    async fn scan(&self, filter: &ScanFilter) -> Result<Vec<Advertisement>, DeviceError> {
        let _one = self.discovery.lock().await;
        let bt_filter = BtScanFilter {
            services: filter.services.iter().copied().map(to_bt_uuid).collect(),
        };
        let deadline = Instant::now() + filter.duration;
        let restart = self.config.scan_restart.max(Duration::from_secs(1));
        let mut events = self.shared.heard.subscribe();
        let mut seen: HashSet<PeripheralId> = HashSet::new();
        let mut heard: HashMap<PeripheralId, Advertisement> = HashMap::new();
        loop {
            let f = bt_filter.clone();
            self.on_adapter(Op::Scan, |a| async move { a.start_scan(f).await })
                .await?;
            let period_end = deadline.min(Instant::now() + restart);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(period_end) => break,
                    id = events.recv() => match id {
                        Ok(id) => {
                            seen.insert(id);
                        }
                        // Missed some; BlueZ's RSSI below still names them.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(period_end).await;
                            break;
                        }
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
        let entry = match &self.pairing {
            None => self.entry(address).await?,
            // Checked before anything else is set up: an unpaired device is not connected to,
            // gets no value stream, and a connection someone else made to it is left alone.
            Some(session) => {
                let peripheral = match self.known(address).await {
                    Some(e) => e.peripheral.clone(),
                    None => self.find_or_discover(address).await?,
                };
                if !self.is_paired(session, &peripheral).await? {
                    debug!(%address, "not paired; refused");
                    return Err(DeviceError::NotPaired);
                }
                self.entry_for(address, peripheral).await?
            }
        };
        let peripheral = entry.peripheral.clone();
        let id = peripheral.id();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let gone = CancellationToken::new();
        let (tx, rx) = mpsc::channel(LINK_EVENT_CAPACITY);
        let subscribed: Arc<Mutex<HashSet<CharacteristicId>>> = Arc::default();
        // Installed before connecting, so a disconnection during setup is not missed.
        lock(&self.shared.gone).insert(id.clone(), (generation, gone.clone()));
        entry.sink.send_replace(Some(Sink {
            generation,
            tx,
            subscribed: subscribed.clone(),
            gone,
        }));
        let guard = LinkGuard {
            bt: self.bt.clone(),
            shared: self.shared.clone(),
            entry: entry.clone(),
            id,
            generation,
            peripheral: Some(peripheral.clone()),
            limit: self.config.call_timeout,
        };
        debug!(%address, "connecting");
        let p = peripheral.clone();
        match self
            .bt
            .raw(
                self.config.connect_timeout,
                async move { p.connect().await },
            )
            .await?
        {
            Ok(()) => {}
            Err(e) if error::is_already_connected(&e) => {}
            Err(e) => return Err(error::from_btleplug(&e, Op::Connect)),
        }
        debug!(%address, "connected");
        Ok(BluezLink {
            bt: self.bt.clone(),
            address,
            peripheral,
            limit: self.config.call_timeout,
            events: Some(rx),
            chars: HashMap::new(),
            subscribed,
            // From here the link owns the cleanup.
            guard,
        })
    }
}

fn known(
    devices: &HashMap<PeripheralId, Arc<DeviceEntry>>,
    address: Address,
) -> Option<Arc<DeviceEntry>> {
    devices
        .values()
        .find(|e| e.peripheral.address().into_inner() == address.0)
        .filter(|e| !e.pump.0.is_finished())
        .cloned()
}

/// A bluez-async session (its own D-Bus connection) on the BlueZ thread, whose runtime then
/// serves the connection for the source's life.
async fn pairing_session(
    bt: &BluezThread,
    limit: Duration,
) -> Result<bluez_async::BluetoothSession, DeviceError> {
    let mut task = AbortOnDrop(bt.spawn(async {
        bluez_async::BluetoothSession::new()
            .await
            .map(|(_connection, session)| session)
    }));
    match timeout(limit, &mut task.0).await {
        Ok(Ok(Ok(session))) => Ok(session),
        Ok(Ok(Err(e))) => Err(error::from_bluez(&e, Op::Adapter)),
        Ok(Err(e)) => Err(DeviceError::Other {
            message: format!("BlueZ call did not finish: {e}"),
            retryable: true,
        }),
        Err(_) => Err(DeviceError::Timeout),
    }
}

/// Detaches a link from its device (values and disconnection events stop) and, unless
/// disarmed, cancels its connection: dropped when `connect` fails or is cancelled half-way,
/// or with a link dropped without `disconnect`.
struct LinkGuard {
    bt: Arc<BluezThread>,
    shared: Arc<Shared>,
    entry: Arc<DeviceEntry>,
    id: PeripheralId,
    generation: u64,
    peripheral: Option<Peripheral>,
    limit: Duration,
}

impl LinkGuard {
    fn detach(&self) {
        let generation = self.generation;
        let mut gone = lock(&self.shared.gone);
        if gone.get(&self.id).is_some_and(|(g, _)| *g == generation) {
            gone.remove(&self.id);
        }
        drop(gone);
        self.entry.sink.send_if_modified(|sink| {
            if sink.as_ref().is_some_and(|s| s.generation == generation) {
                *sink = None;
                true
            } else {
                false
            }
        });
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.detach();
        let Some(peripheral) = self.peripheral.take() else {
            return;
        };
        // Cancel a pending or established connection nobody will use (best effort).
        let limit = self.limit;
        self.bt.spawn(async move {
            let _ = timeout(limit, peripheral.disconnect()).await;
        });
    }
}

/// Watches the adapter's events for the source's life: devices heard go to scans, and
/// `DeviceDisconnected` ends the device's current link. The stream is re-opened only if it
/// ends (D-Bus trouble): streams opened and dropped over and over are what leaks match rules.
async fn watch_adapter(
    adapter: Adapter,
    mut events: EventStream,
    shared: Arc<Shared>,
    limit: Duration,
) {
    loop {
        while let Some(event) = events.next().await {
            let id = match event {
                CentralEvent::DeviceDisconnected(id) => id,
                CentralEvent::DeviceDiscovered(id)
                | CentralEvent::DeviceUpdated(id)
                | CentralEvent::RssiUpdate { id, .. }
                | CentralEvent::ServicesAdvertisement { id, .. }
                | CentralEvent::ServiceDataAdvertisement { id, .. }
                | CentralEvent::ManufacturerDataAdvertisement { id, .. } => {
                    let _ = shared.heard.send(id);
                    continue;
                }
                _ => continue,
            };
            let gone = lock(&shared.gone).get(&id).map(|(_, g)| g.clone());
            let Some(gone) = gone else { continue };
            // A late event from the previous connection must not end the current one.
            let still_up = match timeout(limit, adapter.peripheral(&id)).await {
                Ok(Ok(p)) => timeout(limit, p.is_connected())
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
        warn!("BlueZ adapter event stream ended; re-opening");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match call(limit, Op::Adapter, adapter.events()).await {
                Ok(e) => {
                    events = e;
                    break;
                }
                Err(e) => debug!(error = %e, "adapter events unavailable"),
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;

/// Moves a device's values to its current link (only characteristics that link subscribed
/// to), and ends the link with `Disconnected` when BlueZ reports the device gone, after the
/// values already received. Runs for the source's life; if the value stream itself ends,
/// the current link gets `Disconnected` and the next connection opens a new stream.
async fn pump(
    mut notes: Pin<Box<dyn Stream<Item = ValueNotification> + Send>>,
    sinks: watch::Sender<Option<Sink>>,
) {
    let mut sink_rx = sinks.subscribe();
    loop {
        let sink = sink_rx.borrow_and_update().clone();
        let gone = sink.as_ref().map(|s| s.gone.clone());
        let gone = async move {
            match gone {
                Some(g) => g.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            changed = sink_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            n = notes.next() => match n {
                Some(n) => {
                    if let Some(s) = &sink {
                        deliver(s, n, &mut sink_rx).await;
                    }
                }
                None => {
                    if let Some(s) = &sink {
                        debug!("value stream ended");
                        let _ = s.tx.send(LinkEvent::Disconnected { reason: DisconnectReason::Unknown }).await;
                    }
                    return;
                }
            },
            () = gone => {
                let Some(s) = &sink else { continue };
                // Values BlueZ delivered before the disconnection are already queued here.
                while let Some(Some(n)) = notes.next().now_or_never() {
                    deliver(s, n, &mut sink_rx).await;
                }
                debug!("device disconnected");
                let _ = s.tx.send(LinkEvent::Disconnected { reason: DisconnectReason::RemoteClosed }).await;
                // Detached: the link's channel closes once the link lets go of its end too.
                let generation = s.generation;
                sinks.send_if_modified(|current| {
                    if current.as_ref().is_some_and(|c| c.generation == generation) {
                        *current = None;
                        true
                    } else {
                        false
                    }
                });
            }
        }
    }
}

/// Sends one value to the link if it subscribed to the characteristic; gives up when the
/// link is replaced or closed meanwhile.
async fn deliver(sink: &Sink, n: ValueNotification, sink_rx: &mut watch::Receiver<Option<Sink>>) {
    let characteristic = CharacteristicId {
        service: to_uuid(n.service_uuid),
        uuid: to_uuid(n.uuid),
    };
    if !lock(&sink.subscribed).contains(&characteristic) {
        return;
    }
    let event = LinkEvent::Value {
        characteristic,
        bytes: n.value,
    };
    tokio::select! {
        _ = sink.tx.send(event) => {}
        _ = sink_rx.changed() => {}
    }
}

/// One connection through BlueZ.
pub struct BluezLink {
    bt: Arc<BluezThread>,
    address: Address,
    peripheral: Peripheral,
    limit: Duration,
    events: Option<mpsc::Receiver<LinkEvent>>,
    chars: HashMap<CharacteristicId, btleplug::api::Characteristic>,
    subscribed: Arc<Mutex<HashSet<CharacteristicId>>>,
    guard: LinkGuard,
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
        let p = self.peripheral.clone();
        self.bt
            .call(self.limit, Op::Discover, async move {
                p.discover_services().await
            })
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
        let (p, c) = (self.peripheral.clone(), c.clone());
        self.bt
            .call(self.limit, Op::Read(characteristic.uuid), async move {
                p.read(&c).await
            })
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
        let (p, c, bytes) = (self.peripheral.clone(), c.clone(), bytes.to_vec());
        self.bt
            .call(self.limit, Op::Write(characteristic.uuid), async move {
                p.write(&c, &bytes, WriteType::WithResponse).await
            })
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
        let p = self.peripheral.clone();
        let result = match self
            .bt
            .raw(self.limit, async move { p.subscribe(&c).await })
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if error::is_in_progress(&e) => Ok(()),
            Ok(Err(e)) => Err(error::from_btleplug(&e, Op::Subscribe(characteristic.uuid))),
            Err(e) => Err(e),
        };
        if result.is_err() {
            lock(&self.subscribed).remove(&characteristic);
        }
        result
    }

    async fn disconnect(&mut self) -> Result<(), DeviceError> {
        self.guard.detach();
        // Disconnecting here, not in the guard's drop.
        if self.guard.peripheral.take().is_none() {
            return Ok(());
        }
        let p = self.peripheral.clone();
        let closed = self
            .bt
            .call(
                self.limit,
                Op::Disconnect,
                async move { p.disconnect().await },
            )
            .await;
        match closed {
            Ok(()) | Err(DeviceError::Disconnected | DeviceError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
