"""The Linux TUN device: a layer-3 interface whose packets a userspace process reads and writes.

``TunDevice.create`` opens ``/dev/net/tun``, attaches it to a named interface with the
``TUNSETIFF`` ioctl (``IFF_TUN | IFF_NO_PI``: every read and write is exactly one bare IPv4 or
IPv6 packet, no packet-information prefix) and configures the interface with iproute2 (``ip``):
MTU, link up, addresses, routes. The device is not persistent, so closing the file descriptor
makes the kernel delete the interface (and with it its addresses and routes). A persistent
device that was there before (``ip tuntap add``) is taken over and left behind as it was
found: ``close`` removes the addresses and routes ``create`` added and puts back its MTU and
link state.

Everything acts on the network namespace of the *calling process*.

The per-packet helpers ``read_into`` and ``write`` are meant for a drain loop on the
non-blocking ``fd`` (``loop.add_reader(dev.fd, ...)``, then read until ``read_into`` returns -1).
They do no logging and allocate nothing Python does not force.

A kernel detail worth knowing: a TUN read into a buffer shorter than the packet silently
truncates it (the rest is discarded, no error, no flag with ``IFF_NO_PI``) and returns
``len(buf)``, so a cut packet looks like one that fitted exactly. Use a buffer at least one
byte longer than the MTU: then a result equal to ``len(buf)`` can only mean truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import shutil
import struct
import subprocess
import weakref
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from types import TracebackType
from typing import TYPE_CHECKING, Final

from .coalesce import VNET_HDR_LEN, Coalescer

if TYPE_CHECKING:
    from .endpoint import Endpoint

__all__ = [
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_PERSIST",
    "IFF_TAP",
    "IFF_TUN",
    "IFF_TUN_EXCL",
    "IFF_VNET_HDR",
    "IFNAMSIZ",
    "IP_TIMEOUT",
    "TUNGETIFF",
    "TUNSETIFF",
    "TUNSETOFFLOAD",
    "TUN_F_CSUM",
    "TUN_F_USO4",
    "TUN_F_USO6",
    "TUN_PATH",
    "TunDevice",
    "TunError",
    "pack_ifreq",
    "unpack_ifreq",
    "validate_name",
]

# --- linux/if.h --------------------------------------------------------------------------------
#: Interface names are at most IFNAMSIZ - 1 bytes plus a terminating NUL.
IFNAMSIZ: Final = 16

# --- linux/if_tun.h ----------------------------------------------------------------------------
#: _IOW('T', 202, int): (1 << 30) | (sizeof(int) << 16) | (ord('T') << 8) | 202
TUNSETIFF: Final = 0x400454CA
#: _IOR('T', 210, unsigned int): the attached device's flags (IFF_PERSIST among them)
TUNGETIFF: Final = 0x800454D2
IFF_PERSIST: Final = 0x0800
IFF_TUN: Final = 0x0001
IFF_TAP: Final = 0x0002
IFF_MULTI_QUEUE: Final = 0x0100
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000
IFF_TUN_EXCL: Final = 0x8000
#: _IOW('T', 208, unsigned int): the offloads the device takes from the kernel (what a read
#: may hand us); a flag the kernel does not know is refused with EINVAL, which makes it the
#: probe for UDP segmentation offload (TUN_F_USO4/6, Linux 6.2)
TUNSETOFFLOAD: Final = 0x400454D0
TUN_F_CSUM: Final = 0x01
TUN_F_USO4: Final = 0x20
TUN_F_USO6: Final = 0x40
# --- linux/sockios.h, linux/if.h: an interface's flags and MTU -----------------------------------
SIOCGIFFLAGS: Final = 0x8913
SIOCGIFMTU: Final = 0x8921
IFF_UP: Final = 0x1

TUN_PATH: Final = "/dev/net/tun"
#: Seconds allowed for each ``ip`` command.
IP_TIMEOUT: Final = 10.0

#: struct ifreq (linux/if.h) as used by TUNSETIFF: ifr_name[IFNAMSIZ], then the union whose
#: first member here is ``short ifr_flags``; the union is 24 bytes on 64-bit (struct ifmap), so
#: the whole struct is 40 bytes. Native byte order, as the kernel reads it.
_IFREQ: Final = struct.Struct(f"={IFNAMSIZ}sH22x")
IFREQ_SIZE: Final = _IFREQ.size
#: the same with an ``int`` first in the union (``ifr_mtu``)
_IFREQ_INT: Final = struct.Struct(f"={IFNAMSIZ}si20x")

_FORBIDDEN_NAME_CHARS: Final = frozenset("/:%")
_SBIN_PATH: Final = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)

_OPEN_HINTS: Final = {
    errno.ENOENT: "no /dev/net/tun: load the tun module or run in a container with it",
    errno.ENODEV: "no TUN driver behind /dev/net/tun: load the tun module (modprobe tun)",
    errno.ENXIO: "no TUN driver behind /dev/net/tun: load the tun module (modprobe tun)",
    errno.EACCES: (
        "permission denied opening /dev/net/tun: TUN needs root or CAP_NET_ADMIN"
        " (in a container, the device must also be allowed)"
    ),
    errno.EPERM: (
        "permission denied opening /dev/net/tun: TUN needs root or CAP_NET_ADMIN"
        " (in a container, the device must also be allowed)"
    ),
}

_IOCTL_HINTS: Final = {
    errno.EPERM: (
        "permission denied: TUN needs root or CAP_NET_ADMIN in this network namespace"
        " (or the existing persistent device belongs to another user)"
    ),
    errno.EBUSY: "device name in use: another open file already holds this TUN device",
    errno.EINVAL: "device name in use by an interface that is not a TUN device",
}


class TunError(OSError):
    """Creating or configuring a TUN device failed. ``str()`` names the device and the cause;
    ``errno`` is set when a system call failed (``EBUSY`` for a name in use, ...)."""

    def __init__(self, device: str, cause: str, err: int | None = None) -> None:
        super().__init__(f"TUN device {device!r}: {cause}")
        self.device = device
        self.cause = cause
        if err is not None:
            self.errno = err


def validate_name(name: str) -> bytes:
    """Check an interface name and return it as bytes for ``struct ifreq``.

    Accepts what the kernel's ``dev_valid_name`` accepts, narrowed to printable ASCII and
    without ``%`` (the kernel would treat ``tun%d`` as a template and pick a name itself).
    Raises TunError (errno EINVAL) with the reason.
    """
    if not isinstance(name, str):
        raise TunError(repr(name), "device name must be a str", errno.EINVAL)
    raw = name.encode("ascii", "backslashreplace")
    if not 1 <= len(raw) <= IFNAMSIZ - 1:
        raise TunError(
            name, f"device name must be 1 to {IFNAMSIZ - 1} characters long", errno.EINVAL
        )
    if name in (".", ".."):
        raise TunError(name, "device name cannot be '.' or '..'", errno.EINVAL)
    for ch in name:
        if not "!" <= ch <= "~":
            raise TunError(
                name,
                f"device name contains {ch!r}: only printable ASCII without spaces is allowed",
                errno.EINVAL,
            )
        if ch in _FORBIDDEN_NAME_CHARS:
            raise TunError(name, f"device name cannot contain {ch!r}", errno.EINVAL)
    return raw


def pack_ifreq(name: str, flags: int) -> bytes:
    """``struct ifreq`` with ``ifr_name`` (validated, NUL-padded) and ``ifr_flags``."""
    return _IFREQ.pack(validate_name(name), flags)


def unpack_ifreq(buf: bytes | bytearray | memoryview) -> tuple[str, int]:
    """(ifr_name, ifr_flags) of a ``struct ifreq``."""
    raw, flags = _IFREQ.unpack(buf)
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "backslashreplace"), int(flags)


def _ip_binary(device: str) -> str:
    exe = shutil.which("ip", path=_SBIN_PATH)
    if exe is None:
        raise TunError(
            device, "iproute2 is not installed ('ip' not found): apt-get install iproute2"
        )
    return exe


def _run_ip(device: str, args: Sequence[str], *, check: bool = True) -> None:
    """Run ``ip ARGS``; raise TunError with the command and its stderr on failure."""
    cmd = "ip " + " ".join(args)
    try:
        cp = subprocess.run(
            [_ip_binary(device), *args],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        if check:
            raise TunError(device, f"'{cmd}' timed out after {IP_TIMEOUT:g}s") from exc
        return
    except OSError as exc:
        if check:
            raise TunError(device, f"'{cmd}' could not run: {exc}", exc.errno) from exc
        return
    if check and cp.returncode != 0:
        detail = cp.stderr.strip() or cp.stdout.strip() or "no output"
        raise TunError(device, f"'{cmd}' failed (exit status {cp.returncode}): {detail}")


#: the flags TUNSETIFF replaces on an existing device (drivers/net/tun.c TUN_FEATURES:
#: IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_ONE_QUEUE, IFF_NAPI, IFF_NAPI_FRAGS; IFF_NO_PI, which
#: _open_attached always sets, is not restored)
_TUN_FEATURES: Final = IFF_VNET_HDR | IFF_MULTI_QUEUE | 0x2000 | 0x0010 | 0x0020


def _sysfs_tun_flags(name: str) -> int | None:
    """The TUN flags of an existing device ``name`` (``/sys/class/net/NAME/tun_flags``), or
    None (no such device, or no sysfs of this namespace)."""
    try:
        with open(f"/sys/class/net/{name}/tun_flags") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return None


def _persistent(fd: int) -> bool:
    """Whether the TUN device ``fd`` is attached to is persistent: one that was there before
    (``ip tuntap add``), since the devices ``create`` makes are not."""
    buf = bytearray(IFREQ_SIZE)
    try:
        fcntl.ioctl(fd, TUNGETIFF, buf, True)
    except OSError:
        return False
    return bool(unpack_ifreq(buf)[1] & IFF_PERSIST)


def _link_state(name: str) -> tuple[int, bool]:
    """(MTU, administratively up) of interface ``name`` in this namespace."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            flags = _IFREQ.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, pack_ifreq(name, 0)))[1]
            req = fcntl.ioctl(s, SIOCGIFMTU, _IFREQ_INT.pack(validate_name(name), 0))
        except OSError as exc:
            raise TunError(name, f"cannot read the interface's state: {exc.strerror}",
                           exc.errno) from exc
    return int(_IFREQ_INT.unpack(req)[1]), bool(flags & IFF_UP)


def _addresses_of(name: str) -> list[IPv4Interface | IPv6Interface]:
    """The addresses on interface ``name`` (``ip -j addr show``)."""
    import json

    try:
        cp = subprocess.run([_ip_binary(name), "-j", "addr", "show", "dev", name],
                            capture_output=True, text=True, timeout=IP_TIMEOUT, check=True)
        links = json.loads(cp.stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise TunError(name, f"cannot list the interface's addresses: {exc}") from exc
    return [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            for link in links for a in link.get("addr_info", ())
            if "local" in a and "prefixlen" in a]


def _probe_uso(fd: int, name: str) -> bool:
    """Whether the kernel knows UDP segmentation offload on TUN (Linux 6.2 and later), and
    so takes GSO_UDP_L4 super-packets on writes: TUNSETOFFLOAD with the USO flags (EINVAL:
    it does not). The offloads are switched off again at once: reads stay whole packets with
    complete checksums (with TUN_F_CSUM on, the kernel would hand over packets whose checksum
    is still to be filled in)."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError as exc:
        raise TunError(name, f"TUNSETOFFLOAD 0 failed after the probe: {exc.strerror}",
                       exc.errno) from exc
    return True


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class TunDevice:
    """An open TUN interface. Build it with ``TunDevice.create``; close it (or use it as a
    context manager) to delete the interface.

    ``fd`` is the non-blocking, close-on-exec file descriptor (-1 once closed); ``name`` the
    interface name; ``mtu`` its MTU. ``write_drops`` counts packets ``write`` dropped because
    the kernel had no room (EAGAIN/ENOBUFS), ``write_errors`` packets it refused (EINVAL: not an
    IPv4/IPv6 packet). ``uso``: opened with IFF_VNET_HDR on a kernel that takes UDP
    super-packets (GSO_UDP_L4) on writes.
    """

    __slots__ = (
        "__weakref__",
        "_addresses",
        "_finalizer",
        "_found",
        "_routes",
        "_vhdr",
        "existed",
        "fd",
        "mtu",
        "name",
        "uso",
        "vnet_hdr",
        "write_drops",
        "write_errors",
    )

    def __init__(
        self,
        fd: int,
        name: str,
        mtu: int,
        routes: Iterable[IPv4Network | IPv6Network] = (),
    ) -> None:
        """Wrap an already attached TUN file descriptor (``create`` does this); the object
        owns ``fd`` from now on. ``routes`` are the routes ``close`` removes."""
        self.fd = fd
        self.name = name
        self.mtu = mtu
        self.write_drops = 0
        self.write_errors = 0
        #: opened with IFF_VNET_HDR: every read and write carries a virtio-net header
        self.vnet_hdr = False
        #: the kernel takes GSO_UDP_L4 super-packets on writes (probed by ``create``)
        self.uso = False
        self._vhdr = bytearray(VNET_HDR_LEN)
        self._routes: list[IPv4Network | IPv6Network] = list(routes)
        #: the device was there before ``create`` (a persistent one, ``ip tuntap add``): it is
        #: left behind at ``close`` as it was found, without what ``create`` added
        self.existed = False
        #: an existing device's (MTU, up, TUN flags or None) before ``create`` changed them
        self._found: tuple[int, bool, int | None] | None = None
        #: the addresses ``create`` added to an existing device (``close`` removes them)
        self._addresses: list[IPv4Interface | IPv6Interface] = []
        # A forgotten device still goes away when the object is collected.
        self._finalizer = weakref.finalize(self, _close_fd, fd)

    @classmethod
    def create(
        cls,
        name: str,
        mtu: int,
        addresses: Sequence[IPv4Interface | IPv6Interface | str],
        routes: Sequence[IPv4Network | IPv6Network | str] = (),
        *,
        vnet_hdr: bool = False,
        uso: bool = True,
    ) -> TunDevice:
        """Create TUN interface ``name`` in the current network namespace, set its MTU, bring
        it up, add ``addresses`` and point ``routes`` at it (``ip route replace``: an existing
        route to the same prefix is taken over).

        With ``vnet_hdr`` every read and write carries a virtio-net header; then ``uso``
        (False: not even tried) probes whether UDP super-packets may be written (``uso``).

        Raises TunError naming the device and the cause; on failure nothing is left behind.
        Malformed addresses or routes raise ValueError before anything is created.
        """
        validate_name(name)
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise TunError(name, f"MTU must be an integer from 68 to 65535, not {mtu!r}")
        addrs = [ipaddress.ip_interface(a) for a in addresses]
        nets = [ipaddress.ip_network(r) for r in routes]

        flags_before = _sysfs_tun_flags(name)  # a device already there: its flags
        fd = cls._open_attached(name, IFF_VNET_HDR if vnet_hdr else 0)
        dev = cls(fd, name, mtu)
        dev.vnet_hdr = vnet_hdr
        try:
            dev.uso = vnet_hdr and uso and _probe_uso(fd, name)
            present: set[IPv4Interface | IPv6Interface] = set()
            if _persistent(fd):
                dev.existed = True
                dev._found = (*_link_state(name), flags_before)
                present = set(_addresses_of(name))
            _run_ip(name, ["link", "set", "dev", dev.name, "mtu", str(mtu), "up"])
            for addr in addrs:
                if addr in present:  # there before us: it stays after us
                    continue
                _run_ip(name, ["addr", "add", str(addr), "dev", dev.name])
                if dev.existed:
                    dev._addresses.append(addr)
            for net in nets:
                _run_ip(name, ["route", "replace", str(net), "dev", dev.name])
                dev._routes.append(net)
        except BaseException:
            dev.close()
            raise
        return dev

    @staticmethod
    def _open_attached(name: str, extra_flags: int = 0) -> int:
        """Open /dev/net/tun and attach it to ``name`` (TUNSETIFF). Returns the fd."""
        ifreq = bytearray(pack_ifreq(name, IFF_TUN | IFF_NO_PI | extra_flags))
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            hint = _OPEN_HINTS.get(exc.errno or 0, f"cannot open {TUN_PATH}: {exc.strerror}")
            raise TunError(name, hint, exc.errno) from exc
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifreq, True)
        except OSError as exc:
            os.close(fd)
            hint = _IOCTL_HINTS.get(exc.errno or 0, f"TUNSETIFF failed: {exc.strerror}")
            raise TunError(name, hint, exc.errno) from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ------------------------------------------------------------------ per-packet I/O

    def read_into(self, buf: memoryview) -> int:
        """Read one packet into ``buf``; its length, or -1 if none is waiting (EAGAIN).
        A packet longer than ``buf`` is truncated to ``len(buf)`` (see the module doc)."""
        try:
            return os.readv(self.fd, [buf])
        except BlockingIOError:
            return -1

    def read_into_vnet(self, buf: memoryview) -> int:
        """As ``read_into`` on a device opened with IFF_VNET_HDR: the virtio-net header that
        precedes each packet is read aside (no offloads are enabled for reading, so it never
        announces a GSO packet)."""
        try:
            n = os.readv(self.fd, [self._vhdr, buf])
        except BlockingIOError:
            return -1
        return n - VNET_HDR_LEN if n >= VNET_HDR_LEN else -1

    def write(self, packet: bytes | bytearray | memoryview) -> None:
        """Write one IPv4/IPv6 packet. A full queue (EAGAIN/ENOBUFS) counts in
        ``write_drops``, a packet the kernel refuses (EINVAL) in ``write_errors``; other
        errors raise."""
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            self.write_drops += 1
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.write_drops += 1
            elif exc.errno == errno.EINVAL:
                self.write_errors += 1
            else:
                raise

    def fileno(self) -> int:
        return self.fd

    # ------------------------------------------------------------------ life cycle

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Remove the routes ``create`` added (best effort), then close the fd, which deletes
        the (non-persistent) interface. A device that ``existed`` before ``create`` stays: the
        addresses ``create`` added are removed too, and its MTU and link state are put back.
        Idempotent."""
        if self.fd < 0:
            return
        routes, self._routes = self._routes, []
        for net in reversed(routes):
            _run_ip(self.name, ["route", "del", str(net), "dev", self.name], check=False)
        addresses, self._addresses = self._addresses, []
        for addr in reversed(addresses):
            _run_ip(self.name, ["addr", "del", str(addr), "dev", self.name], check=False)
        found = self._found
        if found is not None:
            mtu, up, _ = found
            _run_ip(self.name, ["link", "set", "dev", self.name, "mtu", str(mtu),
                                "up" if up else "down"], check=False)
        self.fd = -1
        self._finalizer()
        if found is not None and found[2] is not None:
            # attaching set our features (IFF_VNET_HDR, ...) on the device: put its own back
            # by attaching once more with them
            with contextlib.suppress(OSError):
                _close_fd(self._open_attached(self.name, found[2] & _TUN_FEATURES))

    def add_route(self, net: IPv4Network | IPv6Network) -> None:
        """Point ``net`` at the device (``ip route replace``), removed again at ``close``
        (``nattunnel reload``: a peer added). TunError if ``ip`` refuses."""
        _run_ip(self.name, ["route", "replace", str(net), "dev", self.name])
        if net not in self._routes:
            self._routes.append(net)

    def remove_route(self, net: IPv4Network | IPv6Network) -> None:
        """The route ``add_route`` or ``create`` made for ``net`` goes (best effort: a
        route already gone is not an error)."""
        if net in self._routes:
            self._routes.remove(net)
            _run_ip(self.name, ["route", "del", str(net), "dev", self.name], check=False)

    def closing_summary(self) -> str:
        """What ``close`` does (or did) with the interface, for the log."""
        if not self.existed:
            return f"TUN device {self.name} removed"
        return (f"TUN device {self.name} existed before: left in place without the addresses "
                f"and routes nattunnel added, its MTU and link state as they were")

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.fd < 0 else f"fd={self.fd}"
        return f"<TunDevice {self.name!r} mtu={self.mtu} {state}>"


def _nothing() -> None:
    return None


class TunInterface:
    """A ``TunDevice`` as the endpoint's inner interface (``io.interface.InnerInterface``).

    Packets read from the device are drained by the endpoint with ``add_reader`` (until EAGAIN
    or the budget). Decapsulated packets are written to the device; on a device opened with
    IFF_VNET_HDR consecutive TCP segments of one flow, and UDP datagrams of one flow where the
    kernel takes UDP super-packets (``TunDevice.uso``), are first joined into GSO
    super-packets (``nattunnel.io.coalesce``), written when the endpoint's drain ends
    (``flush``).
    """

    write: Callable[[memoryview], None]
    flush: Callable[[], None]

    def __init__(self, device: TunDevice) -> None:
        self.device = device
        self.coalescer: Coalescer | None = None
        if device.vnet_hdr:
            self.coalescer = Coalescer(device.fd, udp=device.uso)
            self.write = self.coalescer.write
            self.flush = self.coalescer.flush
            self._read = device.read_into_vnet
        else:
            self.write = device.write
            self.flush = _nothing
            self._read = device.read_into
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, endpoint: Endpoint) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.device.fd, endpoint.drain_inner, self._read)

    def route(self, net: IPv4Network | IPv6Network) -> None:
        self.device.add_route(net)

    def unroute(self, net: IPv4Network | IPv6Network) -> None:
        self.device.remove_route(net)

    def close(self) -> None:
        if self._loop is not None and not self.device.closed:
            self._loop.remove_reader(self.device.fd)
        self._loop = None
        self.device.close()
