#!/usr/bin/env python3
"""A small org.bluez for the gateway's BlueZ backend tests (gateway/tests/bluez_mock.rs).

It owns the name `org.bluez` on the bus given with --bus (a private dbus-daemon the test
started) and serves what btleplug / bluez-async use of BlueZ 5's D-Bus API:

- ObjectManager at `/` (GetManagedObjects, InterfacesAdded, InterfacesRemoved);
- Adapter1 at /org/bluez/hci0 (Powered, SetDiscoveryFilter, StartDiscovery, StopDiscovery);
- Device1 per device (Connect, Disconnect; Connected, ServicesResolved, RSSI, UUIDs, and
  Paired/Bonded: every device starts paired, as one bonded with `bluetoothctl pair` is);
- GattService1 / GattCharacteristic1 under a connected device (ReadValue, WriteValue,
  StartNotify, StopNotify; notifications and indications as PropertiesChanged("Value")).

Like bluetoothd, it exports a device when discovery starts and the device advertises a
service the discovery filter asks for, signals RSSI while discovering, exports the GATT
objects on Connect (then sets ServicesResolved) and removes them on disconnection, signals a
Value change after a ReadValue too, and refuses operations a characteristic's flags do not
allow.

The test drives it with lines on stdin:
    notify DEVICE UUID16 HEX   send a value on a characteristic (if the client subscribed)
    disconnect DEVICE          the device drops the link
    unpair DEVICE              the bond is removed (Paired and Bonded false; link dropped)
    pair DEVICE                the device is paired and bonded (Paired and Bonded true)
    store DEVICE SEQ HEX       keep a stored record (a Blood Pressure Record value) that the
                               device's RACP reports and deletes by sequence number
    hang-reads on|off          ReadValue never answers (a wedged link)
    match-rules                how many D-Bus match rules the clients hold (MATCH_RULES n)
    ignore-filter on|off       advertise to this client whatever another client's discovery
                               filter let in (bluetoothd merges all clients' filters)
    quit
and reads what the client did from stdout, one line each: READY, CONNECT cuff,
START_NOTIFY cuff 2a35, WRITE cuff 2a2b HEX, SENT cuff 2a35, DROPPED cuff 2a35,
DELETED bls 0,1 ...

The "bls" cuff (Blood Pressure Service 1.1 with record storage) also plays a cuff's Record
Access Control Point (0x2A52: report, delete and count stored records; "all records" or by
sequence number with the <=, >= and range operators; responses as the RACP specification
gives them) over its Blood Pressure Record (0x2B36), and a Current Time (0x2A2B) clock that
starts wrong (2020-01-01) and keeps time from whatever the client writes.

Only dbus-python and PyGObject (GLib main loop) are needed: Debian's python3-dbus and
python3-gi.
"""

import argparse
import datetime
import os
import struct
import sys
import time

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

BLUEZ = "org.bluez"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
ADAPTER_PATH = "/org/bluez/hci0"


def uuid16(short):
    return "0000%04x-0000-1000-8000-00805f9b34fb" % short


def say(*words):
    print(" ".join(str(w) for w in words), flush=True)


def dis_string(text):
    return dbus.Array([dbus.Byte(b) for b in text.encode("utf-8")], signature="y")


def byte_array(data):
    return dbus.Array([dbus.Byte(b) for b in data], signature="y")


def current_time(dt):
    """Current Time (0x2A2B): Date Time, day of week, fractions256, adjust reason."""
    return struct.pack("<HBBBBBBBB", dt.year, dt.month, dt.day, dt.hour, dt.minute,
                       dt.second, dt.isoweekday(), 0, 0)


class Clock:
    """A device clock: starts at `start` and keeps time from the last value written."""

    def __init__(self, start):
        self.at = start
        self.since = time.monotonic()

    def now(self):
        return self.at + datetime.timedelta(seconds=round(time.monotonic() - self.since))

    def write(self, value):
        year, month, day, hour, minute, second = struct.unpack_from("<HBBBBB", value)
        self.at = datetime.datetime(year, month, day, hour, minute, second)
        self.since = time.monotonic()


class Failed(dbus.DBusException):
    def __init__(self, name, message=""):
        super().__init__(message)
        self._dbus_error_name = "org.bluez.Error." + name


# The devices in range. GATT layout: (service uuid16, [(char uuid16, flags, value bytes)]).
DEVICES = {
    "cuff": {
        "address": "C0:FF:EE:00:11:22",
        "name": "BP Cuff",
        "advertised": [0x1810, 0x180A, 0x180F],
        "gatt": [
            (0x1810, [
                (0x2A35, ["indicate"], b""),
                (0x2A49, ["read"], bytes([0x00, 0x00])),
            ]),
            (0x180A, [
                (0x2A29, ["read"], b"Acme Medical"),
                (0x2A24, ["read"], b"BP-100"),
                (0x2A25, ["read"], b"SN0001"),
                (0x2A26, ["read"], b"1.2.3"),
            ]),
            (0x180F, [
                (0x2A19, ["read", "notify"], bytes([87])),
            ]),
            # A writable characteristic with no meaning for the session (a vendor control
            # point), to test write-with-response.
            (0xFFF0, [
                (0xFFF1, ["read", "write"], b""),
            ]),
        ],
    },
    "oxi": {
        "address": "C0:FF:EE:00:33:44",
        "name": "Oximeter",
        "advertised": [0x1822],
        "gatt": [
            (0x1822, [
                (0x2A5E, ["indicate"], b""),
                (0x2A60, ["read"], bytes([0x00, 0x00])),
            ]),
        ],
    },
    # A Blood Pressure Service 1.1 cuff that stores measurements (Blood Pressure Record and
    # RACP) and has a clock (Current Time, set wrong).
    "bls": {
        "address": "C0:FF:EE:00:77:88",
        "name": "BP Cuff 2",
        "advertised": [0x1810],
        "gatt": [
            (0x1810, [
                (0x2A35, ["indicate"], b""),
                (0x2B36, ["indicate"], b""),
                (0x2A52, ["write", "indicate"], b""),
                (0x2A49, ["read"], bytes([0x00, 0x00])),
            ]),
            (0x180A, [
                (0x2A29, ["read"], b"Acme Medical"),
                (0x2A24, ["read"], b"BP-200"),
            ]),
            (0x180F, [
                (0x2A19, ["read", "notify"], bytes([64])),
            ]),
            (0x1805, [
                (0x2A2B, ["read", "write", "notify"], None),
            ]),
        ],
    },
    # Advertises Heart Rate only: a health-service scan must not report it.
    "hrm": {
        "address": "C0:FF:EE:00:55:66",
        "name": "HR Strap",
        "advertised": [0x180D],
        "gatt": [],
    },
}


class PropertiesObject(dbus.service.Object):
    """An object with one BlueZ interface and org.freedesktop.DBus.Properties."""

    def __init__(self, mock, path, iface, props):
        dbus.service.Object.__init__(self)
        self.mock = mock
        self.path = path
        self.iface = iface
        self.props = props
        self.exported = False

    def export(self):
        if not self.exported:
            self.add_to_connection(self.mock.bus, self.path)
            self.exported = True
            self.mock.root.InterfacesAdded(self.path, {self.iface: self.props})

    def unexport(self):
        if self.exported:
            self.remove_from_connection()
            self.exported = False
            self.mock.root.InterfacesRemoved(self.path, [self.iface])

    def set(self, **changes):
        for k, v in changes.items():
            self.props[k] = v
        if self.exported:
            self.PropertiesChanged(self.iface, changes, [])

    def _check(self, iface):
        if iface != self.iface:
            raise dbus.DBusException(
                "no interface " + iface,
                name="org.freedesktop.DBus.Error.UnknownInterface",
            )

    @dbus.service.method(PROPS_IFACE, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        self._check(iface)
        if name not in self.props:
            raise dbus.DBusException(
                "no property " + name, name="org.freedesktop.DBus.Error.InvalidArgs"
            )
        return self.props[name]

    @dbus.service.method(PROPS_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        self._check(iface)
        return self.props

    @dbus.service.method(PROPS_IFACE, in_signature="ssv")
    def Set(self, iface, name, value):
        self._check(iface)
        self.set(**{name: value})

    @dbus.service.signal(PROPS_IFACE, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass


class Root(dbus.service.Object):
    def __init__(self, mock):
        self.mock = mock
        dbus.service.Object.__init__(self, mock.bus, "/")

    @dbus.service.method(OM_IFACE, out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        return {
            o.path: {o.iface: o.props} for o in self.mock.all_objects() if o.exported
        }

    @dbus.service.signal(OM_IFACE, signature="oa{sa{sv}}")
    def InterfacesAdded(self, path, interfaces):
        pass

    @dbus.service.signal(OM_IFACE, signature="oas")
    def InterfacesRemoved(self, path, interfaces):
        pass


class Adapter(PropertiesObject):
    def __init__(self, mock):
        super().__init__(mock, ADAPTER_PATH, ADAPTER_IFACE, {
            "Address": "00:1A:7D:DA:71:13",
            "AddressType": "public",
            "Name": "rpm-hub",
            "Alias": "rpm-hub",
            "Class": dbus.UInt32(0),
            "Modalias": "usb:v1D6Bp0246d0540",
            "Powered": dbus.Boolean(False),
            "Discoverable": dbus.Boolean(False),
            "Pairable": dbus.Boolean(True),
            "Discovering": dbus.Boolean(False),
            "UUIDs": dbus.Array([], signature="s"),
        })
        self.filter_uuids = []
        self.rssi_timer = None

    @dbus.service.method(ADAPTER_IFACE, in_signature="a{sv}")
    def SetDiscoveryFilter(self, filt):
        self.filter_uuids = [str(u).lower() for u in filt.get("UUIDs", [])]

    @dbus.service.method(ADAPTER_IFACE)
    def StartDiscovery(self):
        if not self.props["Powered"]:
            raise Failed("NotReady", "Resource Not Ready")
        say("START_DISCOVERY", ",".join(self.filter_uuids) or "-")
        self.set(Discovering=dbus.Boolean(True))
        self.advertise()
        if self.rssi_timer is None:
            self.rssi_timer = GLib.timeout_add(200, self.advertise)

    @dbus.service.method(ADAPTER_IFACE)
    def StopDiscovery(self):
        say("STOP_DISCOVERY")
        if self.rssi_timer is not None:
            GLib.source_remove(self.rssi_timer)
            self.rssi_timer = None
        self.set(Discovering=dbus.Boolean(False))
        # bluetoothd forgets the RSSI of what it heard when discovery ends.
        for dev in self.mock.devices.values():
            if "RSSI" in dev.props:
                del dev.props["RSSI"]
                if dev.exported:
                    dev.PropertiesChanged(DEVICE_IFACE, {}, ["RSSI"])

    @dbus.service.method(ADAPTER_IFACE, in_signature="o")
    def RemoveDevice(self, path):
        for dev in self.mock.devices.values():
            if dev.path == path:
                dev.drop_link()
                dev.unexport()

    def advertise(self):
        for dev in self.mock.devices.values():
            wanted = self.mock.ignore_filter or not self.filter_uuids or any(
                uuid16(u) in self.filter_uuids for u in dev.advertised
            )
            if not wanted or dev.props["Connected"]:
                continue
            dev.props["RSSI"] = dbus.Int16(-60)
            if not dev.exported:
                dev.export()
            else:
                dev.PropertiesChanged(DEVICE_IFACE, {"RSSI": dbus.Int16(-60)}, [])
        return True


class Device(PropertiesObject):
    def __init__(self, mock, key, spec):
        path = ADAPTER_PATH + "/dev_" + spec["address"].replace(":", "_")
        super().__init__(mock, path, DEVICE_IFACE, {
            "Address": spec["address"],
            "AddressType": "public",
            "Name": spec["name"],
            "Alias": spec["name"],
            "Paired": dbus.Boolean(True),
            "Bonded": dbus.Boolean(True),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "UUIDs": dbus.Array([uuid16(u) for u in spec["advertised"]], signature="s"),
            "Adapter": dbus.ObjectPath(ADAPTER_PATH),
        })
        self.key = key
        self.advertised = spec["advertised"]
        self.services = []
        # Stored records (sequence number -> Blood Pressure Record value) and the clock.
        self.records = {}
        self.clock = Clock(datetime.datetime(2020, 1, 1, 0, 0, 0))
        handle = 0x10
        for service_uuid, chars in spec["gatt"]:
            spath = "%s/service%04x" % (path, handle)
            service = GattService(mock, spath, service_uuid, path)
            handle += 1
            for char_uuid, flags, value in chars:
                if value is None:
                    value = current_time(self.clock.now())
                cpath = "%s/char%04x" % (spath, handle)
                service.chars.append(
                    GattCharacteristic(mock, self, cpath, char_uuid, spath, flags, value)
                )
                handle += 2
            self.services.append(service)

    @dbus.service.method(DEVICE_IFACE)
    def Connect(self):
        if self.props["Connected"]:
            raise Failed("AlreadyConnected", "Already Connected")
        say("CONNECT", self.key)
        self.set(Connected=dbus.Boolean(True))
        for service in self.services:
            service.export()
            for char in service.chars:
                char.export()
        # bluetoothd answers Connect, then resolves services.
        GLib.timeout_add(50, self.resolved)

    def resolved(self):
        if self.props["Connected"]:
            self.set(ServicesResolved=dbus.Boolean(True))
        return False

    @dbus.service.method(DEVICE_IFACE)
    def Disconnect(self):
        say("DISCONNECT", self.key)
        self.drop_link()

    @dbus.service.method(DEVICE_IFACE)
    def Pair(self):
        raise Failed("AuthenticationFailed", "Authentication Failed")

    def char(self, short):
        for service in self.services:
            for char in service.chars:
                if char.short == short:
                    return char
        return None

    def selected(self, request):
        """The stored sequence numbers a RACP request's operator and operand select, or
        None when the request is not one this cuff supports."""
        operator = request[1] if len(request) > 1 else 0
        operand = request[2:]
        seqs = sorted(self.records)
        if operator == 0x01 and not operand:
            return seqs
        if operator in (0x02, 0x03) and len(operand) == 3 and operand[0] == 0x01:
            (n,) = struct.unpack_from("<H", operand, 1)
            return [q for q in seqs if (q <= n if operator == 0x02 else q >= n)]
        if operator == 0x04 and len(operand) == 5 and operand[0] == 0x01:
            lo, hi = struct.unpack_from("<HH", operand, 1)
            return [q for q in seqs if lo <= q <= hi]
        return None

    def racp(self, request):
        """Answers a RACP request: report (stored records on 0x2B36, then the response),
        delete, or count; 0x06 responses name the request op code."""
        cp = self.char("2a52")
        op = request[0] if request else 0
        if op not in (0x01, 0x02, 0x04):
            cp.send(bytes([0x06, 0x00, op, 0x02]))  # op code not supported
            return False
        seqs = self.selected(request)
        if seqs is None:
            cp.send(bytes([0x06, 0x00, op, 0x04]))  # operator not supported
            return False
        if op == 0x04:
            cp.send(bytes([0x05, 0x00]) + struct.pack("<H", len(seqs)))
            return False
        if not seqs:
            cp.send(bytes([0x06, 0x00, op, 0x06]))  # no records found
            return False
        if op == 0x01:
            record = self.char("2b36")
            for q in seqs:
                record.send(self.records[q])
        else:
            for q in seqs:
                del self.records[q]
            say("DELETED", self.key, ",".join(str(q) for q in seqs))
        cp.send(bytes([0x06, 0x00, op, 0x01]))  # success
        return False

    def drop_link(self):
        if not self.props["Connected"]:
            return
        for service in self.services:
            for char in service.chars:
                char.notifying = False
                char.props["Notifying"] = dbus.Boolean(False)
        self.set(ServicesResolved=dbus.Boolean(False))
        self.set(Connected=dbus.Boolean(False))
        for service in self.services:
            for char in service.chars:
                char.unexport()
            service.unexport()


class GattService(PropertiesObject):
    def __init__(self, mock, path, uuid, device_path):
        super().__init__(mock, path, SERVICE_IFACE, {
            "UUID": uuid16(uuid),
            "Primary": dbus.Boolean(True),
            "Device": dbus.ObjectPath(device_path),
            "Includes": dbus.Array([], signature="o"),
        })
        self.chars = []


class GattCharacteristic(PropertiesObject):
    def __init__(self, mock, device, path, uuid, service_path, flags, value):
        super().__init__(mock, path, CHAR_IFACE, {
            "UUID": uuid16(uuid),
            "Service": dbus.ObjectPath(service_path),
            "Flags": dbus.Array(flags, signature="s"),
            "Notifying": dbus.Boolean(False),
            "Value": byte_array(value),
            "MTU": dbus.UInt16(247),
        })
        self.device = device
        self.short = "%04x" % uuid
        self.flags = flags
        self.value = value
        self.notifying = False

    def _connected(self):
        if not self.device.props["Connected"]:
            raise Failed("NotConnected", "Not connected")

    @dbus.service.method(CHAR_IFACE, in_signature="a{sv}", out_signature="ay",
                         async_callbacks=("reply", "error"))
    def ReadValue(self, options, reply, error):
        try:
            self._connected()
            if "read" not in self.flags:
                raise Failed("NotPermitted", "Read not permitted")
        except dbus.DBusException as e:
            error(e)
            return
        say("READ", self.device.key, self.short)
        if self.mock.hang_reads:
            return  # never answers: the client's timeout must fire
        if self.short == "2a2b":
            self.value = current_time(self.device.clock.now())
        value = byte_array(self.value)
        reply(value)
        # bluetoothd caches what it read in Value and signals the change.
        self.set(Value=value)

    @dbus.service.method(CHAR_IFACE, in_signature="aya{sv}")
    def WriteValue(self, value, options):
        self._connected()
        if "write" not in self.flags:
            raise Failed("NotPermitted", "Write not permitted")
        kind = str(options.get("type", "request"))
        say("WRITE", self.device.key, self.short, bytes(value).hex(), kind)
        self.value = bytes(value)
        if self.short == "2a2b" and len(value) >= 7:
            self.device.clock.write(bytes(value))
        elif self.short == "2a52":
            # The write is answered first; records and the response follow as indications.
            GLib.timeout_add(20, self.device.racp, bytes(value))

    @dbus.service.method(CHAR_IFACE)
    def StartNotify(self):
        self._connected()
        if "notify" not in self.flags and "indicate" not in self.flags:
            raise Failed("NotSupported", "Operation is not supported")
        say("START_NOTIFY", self.device.key, self.short)
        # bluetoothd: a second StartNotify from the same client is a success.
        if not self.notifying:
            self.notifying = True
            self.set(Notifying=dbus.Boolean(True))

    @dbus.service.method(CHAR_IFACE)
    def StopNotify(self):
        self._connected()
        if not self.notifying:
            raise Failed("Failed", "No notify session started")
        say("STOP_NOTIFY", self.device.key, self.short)
        self.notifying = False
        self.set(Notifying=dbus.Boolean(False))

    def send(self, data):
        if not (self.exported and self.notifying):
            say("DROPPED", self.device.key, self.short)
            return
        self.value = data
        self.set(Value=byte_array(data))
        say("SENT", self.device.key, self.short)


class Mock:
    def __init__(self, bus):
        self.bus = bus
        self.hang_reads = False
        self.ignore_filter = False
        self.root = Root(self)
        self.adapter = Adapter(self)
        self.devices = {k: Device(self, k, spec) for k, spec in DEVICES.items()}

    def all_objects(self):
        yield self.adapter
        for dev in self.devices.values():
            yield dev
            for service in dev.services:
                yield service
                yield from service.chars

    def match_rules(self):
        """Match rules the clients (everyone but us) hold on the bus, from the daemon's
        Debug.Stats interface; "unknown" when the daemon was built without it."""
        daemon = self.bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
        total = 0
        try:
            for name in daemon.ListNames(dbus_interface="org.freedesktop.DBus"):
                if not name.startswith(":") or name == self.bus.get_unique_name():
                    continue
                stats = daemon.GetConnectionStats(
                    name, dbus_interface="org.freedesktop.DBus.Debug.Stats"
                )
                total += int(stats.get("MatchRules", 0))
        except dbus.DBusException:
            return "unknown"
        return total

    def command(self, line):
        words = line.split()
        if not words:
            return
        if words[0] == "notify" and len(words) >= 4:
            dev = self.devices[words[1]]
            short = words[2].lower()
            data = bytes.fromhex("".join(words[3:]))
            for service in dev.services:
                for char in service.chars:
                    if char.short == short:
                        char.send(data)
                        return
            say("NO_SUCH_CHAR", words[1], short)
        elif words[0] == "store" and len(words) >= 4:
            self.devices[words[1]].records[int(words[2])] = bytes.fromhex("".join(words[3:]))
            say("STORED", words[1], words[2])
        elif words[0] in ("pair", "unpair"):
            dev = self.devices[words[1]]
            paired = words[0] == "pair"
            if not paired:
                dev.drop_link()
            dev.set(Paired=dbus.Boolean(paired), Bonded=dbus.Boolean(paired))
            say("PAIRED" if paired else "UNPAIRED", words[1])
        elif words[0] == "disconnect":
            self.devices[words[1]].drop_link()
            say("DROPPED_LINK", words[1])
        elif words[0] == "hang-reads":
            self.hang_reads = words[1] == "on"
            say("HANG_READS", words[1])
        elif words[0] == "ignore-filter":
            self.ignore_filter = words[1] == "on"
            say("IGNORE_FILTER", words[1])
        elif words[0] == "match-rules":
            say("MATCH_RULES", self.match_rules())
        elif words[0] == "quit":
            loop.quit()
        else:
            say("UNKNOWN_COMMAND", line.strip())


def main():
    global loop
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", required=True, help="address of the bus to serve on")
    args = parser.parse_args()
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(args.bus)
    mock = Mock(bus)
    mock.adapter.export()
    name = dbus.service.BusName(BLUEZ, bus, do_not_queue=True)
    loop = GLib.MainLoop()

    pending = bytearray()

    def on_stdin(fd, condition):
        data = os.read(fd, 4096)
        if not data:  # the test went away
            loop.quit()
            return False
        pending.extend(data)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            try:
                mock.command(line.decode("utf-8", "replace"))
            except Exception as e:  # a bad command must not kill the mock
                say("ERROR", repr(e))
        return True

    GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP, on_stdin)
    say("READY")
    loop.run()
    del name


loop = None

if __name__ == "__main__":
    main()
