"""Tests for nattunnel.io.tun.

The unit tests need no privileges: they check name validation, the ``struct ifreq`` layout,
the error messages (with ``os.open``/``ioctl``/``ip`` faked) and the I/O helpers on a socket
pair. The ``root`` tests create real TUN devices, but only inside a fresh network namespace
of their own (``ip netns add nttun<random>``, deleted by the fixture): ``TunDevice.create``
works in the calling process's namespace, so the code under test runs in a child Python
started with ``ip netns exec NS``, driven over its stdin/stdout (one JSON event per line).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import queue
import secrets
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from nattunnel.io import tun
from nattunnel.io.tun import (
    IFF_NO_PI,
    IFF_TUN,
    IFNAMSIZ,
    TUNSETIFF,
    TunDevice,
    TunError,
    pack_ifreq,
    unpack_ifreq,
    validate_name,
)
from tests.support.lab import require_lab_tools, run

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- unit tests


def _iow(kind: str, nr: int, size: int) -> int:
    # asm-generic/ioctl.h: dir << 30 | size << 16 | type << 8 | nr, _IOC_WRITE == 1
    return (1 << 30) | (size << 16) | (ord(kind) << 8) | nr


def test_constants_match_linux_headers() -> None:
    assert TUNSETIFF == _iow("T", 202, struct.calcsize("i")) == 0x400454CA
    # _IOR: _IOC_READ == 2
    ior = (2 << 30) | (struct.calcsize("I") << 16) | (ord("T") << 8) | 210
    assert tun.TUNGETIFF == ior == 0x800454D2
    assert (tun.IFF_PERSIST, tun.SIOCGIFFLAGS, tun.SIOCGIFMTU) == (0x0800, 0x8913, 0x8921)
    assert (IFF_TUN, IFF_NO_PI, IFNAMSIZ) == (0x0001, 0x1000, 16)
    assert (tun.IFF_TAP, tun.IFF_MULTI_QUEUE, tun.IFF_VNET_HDR) == (0x0002, 0x0100, 0x4000)


def test_uso_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """TUNSETOFFLOAD with the USO flags, then the offloads off again for reads; EINVAL (a
    kernel before 6.2) means no UDP super-packets."""
    assert tun.TUNSETOFFLOAD == _iow("T", 208, struct.calcsize("I")) == 0x400454D0
    assert (tun.TUN_F_CSUM, tun.TUN_F_USO4, tun.TUN_F_USO6) == (0x01, 0x20, 0x40)
    calls: list[tuple[int, int, int]] = []

    def ioctl(fd: int, req: int, arg: int) -> int:
        calls.append((fd, req, arg))
        return 0

    monkeypatch.setattr(tun.fcntl, "ioctl", ioctl)
    assert tun._probe_uso(7, "nt0") is True
    assert calls == [(7, tun.TUNSETOFFLOAD, 0x61), (7, tun.TUNSETOFFLOAD, 0)]

    def old_kernel(fd: int, req: int, arg: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(tun.fcntl, "ioctl", old_kernel)
    assert tun._probe_uso(7, "nt0") is False


def test_ifreq_layout() -> None:
    req = pack_ifreq("nt0", IFF_TUN | IFF_NO_PI)
    assert len(req) == tun.IFREQ_SIZE == 40  # sizeof(struct ifreq) on 64-bit Linux
    assert req[:IFNAMSIZ] == b"nt0" + b"\0" * 13
    assert struct.unpack_from("=H", req, IFNAMSIZ)[0] == 0x1001
    assert req[IFNAMSIZ + 2 :] == b"\0" * 22
    assert unpack_ifreq(req) == ("nt0", 0x1001)
    longest = "x" * 15
    assert pack_ifreq(longest, 0)[:IFNAMSIZ] == longest.encode() + b"\0"  # room for the NUL
    assert unpack_ifreq(bytearray(pack_ifreq(longest, IFF_TUN))) == (longest, IFF_TUN)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "1 to 15 characters"),
        ("x" * 16, "1 to 15 characters"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a/b", "cannot contain '/'"),
        ("a:1", "cannot contain ':'"),
        ("tun%d", "cannot contain '%'"),
        ("a b", "printable ASCII"),
        ("a\tb", "printable ASCII"),
        ("a\0b", "printable ASCII"),
        ("tün0", "printable ASCII"),
    ],
)
def test_invalid_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(TunError) as info:
        validate_name(name)
    assert why in str(info.value)
    assert str(info.value).startswith(f"TUN device {name!r}: device name")
    assert info.value.errno == errno.EINVAL
    assert info.value.device == name
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize("name", ["a", "x" * 15, "nt-tun_0.x", "TUN9"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name.encode()


def test_non_str_name_is_refused() -> None:
    with pytest.raises(TunError, match="must be a str"):
        validate_name(b"tun0")  # type: ignore[arg-type]


def _forbid_open(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_open(*args: Any, **kw: Any) -> int:
        raise AssertionError("os.open called before the arguments were checked")

    monkeypatch.setattr(os, "open", no_open)


@pytest.mark.parametrize(
    ("name", "mtu", "match"),
    [
        ("x" * 16, 1400, "1 to 15"),
        ("nt0", 67, "MTU must be"),
        ("nt0", 65536, "MTU must be"),
        ("nt0", True, "MTU must be"),
        ("nt0", 1400.0, "MTU must be"),
    ],
)
def test_create_checks_arguments_first(
    monkeypatch: pytest.MonkeyPatch, name: str, mtu: Any, match: str
) -> None:
    _forbid_open(monkeypatch)
    with pytest.raises(TunError, match=match):
        TunDevice.create(name, mtu, [])


def test_create_refuses_malformed_addresses_first(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_open(monkeypatch)
    with pytest.raises(ValueError):
        TunDevice.create("nt0", 1400, ["198.18.200.1/33"])
    with pytest.raises(ValueError):
        TunDevice.create("nt0", 1400, [], ["198.18.201.5/24"])  # host bits set


@pytest.mark.parametrize(
    ("err", "expect"),
    [
        (errno.ENOENT, "no /dev/net/tun: load the tun module or run in a container with it"),
        (errno.ENODEV, "load the tun module"),
        (errno.EACCES, "permission denied opening /dev/net/tun: TUN needs root or CAP_NET_ADMIN"),
        (errno.EPERM, "TUN needs root or CAP_NET_ADMIN"),
        (errno.EMFILE, "cannot open /dev/net/tun: Too many open files"),
    ],
)
def test_open_errors_are_explained(monkeypatch: pytest.MonkeyPatch, err: int, expect: str) -> None:
    seen: list[tuple[str, int]] = []

    def failing_open(path: str, flags: int, *args: Any) -> int:
        seen.append((path, flags))
        raise OSError(err, os.strerror(err), path)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(TunError) as info:
        TunDevice.create("nt0", 1400, [])
    assert str(info.value).startswith("TUN device 'nt0': ")
    assert expect in str(info.value)
    assert info.value.errno == err
    assert seen == [("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)]


class _FakeKernel:
    """Stands in for /dev/net/tun (a /dev/null fd), TUNSETIFF and ``ip``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ioctl_errno: int = 0) -> None:
        self.fds: list[int] = []
        self.ioctls: list[tuple[int, bytes]] = []
        self.commands: list[list[str]] = []
        self.fail_on: str | None = None
        self.timeout_on: str | None = None
        real_open = os.open

        def fake_open(path: str, flags: int, *args: Any) -> int:
            fd = real_open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            self.fds.append(fd)
            return fd

        def fake_ioctl(fd: int, request: int, arg: bytearray, mutate: bool = True) -> int:
            self.ioctls.append((request, bytes(arg)))
            if ioctl_errno:
                raise OSError(ioctl_errno, os.strerror(ioctl_errno))
            return 0

        def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
            assert kw.get("timeout") == tun.IP_TIMEOUT
            assert kw.get("capture_output") is True
            args = argv[1:]
            self.commands.append(args)
            line = " ".join(args)
            if self.timeout_on and line.startswith(self.timeout_on):
                raise subprocess.TimeoutExpired(argv, kw["timeout"])
            if self.fail_on and line.startswith(self.fail_on):
                return subprocess.CompletedProcess(argv, 2, "", "RTNETLINK answers: File exists\n")
            return subprocess.CompletedProcess(argv, 0, "", "")

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(fcntl, "ioctl", fake_ioctl)
        monkeypatch.setattr(subprocess, "run", fake_run)
        monkeypatch.setattr(tun, "_ip_binary", lambda device: "/sbin/ip")

    def all_closed(self) -> bool:
        for fd in self.fds:
            try:
                os.fstat(fd)
            except OSError as exc:
                assert exc.errno == errno.EBADF
            else:
                return False
        return True


@pytest.mark.parametrize(
    ("err", "expect"),
    [
        (errno.EBUSY, "device name in use"),
        (errno.EINVAL, "in use by an interface that is not a TUN device"),
        (errno.EPERM, "permission denied: TUN needs root or CAP_NET_ADMIN"),
        (errno.ENOMEM, "TUNSETIFF failed: Cannot allocate memory"),
    ],
)
def test_tunsetiff_errors_are_explained_and_close_the_fd(
    monkeypatch: pytest.MonkeyPatch, err: int, expect: str
) -> None:
    fake = _FakeKernel(monkeypatch, ioctl_errno=err)
    with pytest.raises(TunError) as info:
        TunDevice.create("nt0", 1400, ["198.18.200.1/24"])
    assert str(info.value).startswith("TUN device 'nt0': ")
    assert expect in str(info.value)
    assert info.value.errno == err
    assert fake.ioctls == [(TUNSETIFF, pack_ifreq("nt0", IFF_TUN | IFF_NO_PI))]
    assert fake.commands == []
    assert fake.all_closed()


def test_create_configures_with_iproute2(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeKernel(monkeypatch)
    dev = TunDevice.create(
        "nt0",
        1400,
        [IPv4Interface("198.18.200.1/24"), "2001:db8::1/64"],
        [IPv4Network("198.18.201.0/24"), "2001:db8:1::/48"],
    )
    assert (dev.name, dev.mtu, dev.fd) == ("nt0", 1400, fake.fds[0])
    assert fake.commands == [
        ["link", "set", "dev", "nt0", "mtu", "1400", "up"],
        ["addr", "add", "198.18.200.1/24", "dev", "nt0"],
        ["addr", "add", "2001:db8::1/64", "dev", "nt0"],
        ["route", "replace", "198.18.201.0/24", "dev", "nt0"],
        ["route", "replace", "2001:db8:1::/48", "dev", "nt0"],
    ]
    del fake.commands[:]
    fake.fail_on = "route del"  # best effort: a failed removal does not stop close()
    dev.close()
    assert fake.commands == [
        ["route", "del", "2001:db8:1::/48", "dev", "nt0"],
        ["route", "del", "198.18.201.0/24", "dev", "nt0"],
    ]
    assert dev.closed and dev.fd == -1 and fake.all_closed()
    dev.close()  # idempotent: no second round of commands
    assert len(fake.commands) == 2


def test_ip_failure_is_reported_and_nothing_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeKernel(monkeypatch)
    fake.fail_on = "route replace 198.18.202.0/24"
    with pytest.raises(TunError) as info:
        TunDevice.create("nt0", 1400, ["198.18.200.1/24"], ["198.18.201.0/24", "198.18.202.0/24"])
    msg = str(info.value)
    assert msg.startswith("TUN device 'nt0': 'ip route replace 198.18.202.0/24 dev nt0' failed")
    assert "(exit status 2): RTNETLINK answers: File exists" in msg
    # the route that was added is removed again, and the fd is closed
    assert fake.commands[-1] == ["route", "del", "198.18.201.0/24", "dev", "nt0"]
    assert fake.all_closed()


def test_ip_timeout_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeKernel(monkeypatch)
    fake.timeout_on = "addr add"
    with pytest.raises(TunError, match=r"'ip addr add 198\.18\.200\.1/24 dev nt0' timed out"):
        TunDevice.create("nt0", 1400, ["198.18.200.1/24"])
    assert fake.all_closed()


@pytest.fixture
def sockdev() -> Iterator[tuple[TunDevice, socket.socket]]:
    """A TunDevice around one end of a non-blocking datagram socket pair (packet semantics
    like a TUN fd), and the other end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    theirs.settimeout(2.0)
    dev = TunDevice(ours.detach(), "fake0", 1500)
    yield dev, theirs
    dev.close()
    theirs.close()


def test_read_into(sockdev: tuple[TunDevice, socket.socket]) -> None:
    dev, peer = sockdev
    buf = bytearray(2048)
    view = memoryview(buf)
    assert dev.read_into(view) == -1  # EAGAIN
    peer.send(b"\x45packet-one")
    peer.send(b"\x60two")
    assert dev.read_into(view) == 11 and buf[:11] == b"\x45packet-one"
    assert dev.read_into(view[100:]) == 4 and buf[100:104] == b"\x60two"
    assert dev.read_into(view) == -1


def test_write_and_drop_counting(sockdev: tuple[TunDevice, socket.socket]) -> None:
    dev, peer = sockdev
    dev.write(b"\x45abc")
    dev.write(memoryview(b"xx\x60def")[2:])
    assert peer.recv(100) == b"\x45abc"
    assert peer.recv(100) == b"\x60def"
    # nobody reads: the queue fills and further writes are counted, not raised
    for _ in range(100_000):
        dev.write(b"\x45" * 1000)
        if dev.write_drops:
            break
    assert dev.write_drops == 1
    assert dev.write_errors == 0


@pytest.mark.parametrize(("err", "drops", "errors"), [(errno.ENOBUFS, 1, 0), (errno.EINVAL, 0, 1)])
def test_write_counts_enobufs_and_einval(
    sockdev: tuple[TunDevice, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    drops: int,
    errors: int,
) -> None:
    dev, _ = sockdev

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "write", failing_write)
    dev.write(b"\x45")
    assert (dev.write_drops, dev.write_errors) == (drops, errors)


def test_write_raises_other_errors(
    sockdev: tuple[TunDevice, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    dev, _ = sockdev

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="Input/output error"):
        dev.write(b"\x45")


def test_close_is_idempotent_and_a_context_manager() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = ours.detach()
    with TunDevice(fd, "fake0", 1500) as dev:
        assert dev.fileno() == fd and not dev.closed
        assert "fake0" in repr(dev)
    assert dev.closed and dev.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    dev.close()
    assert "closed" in repr(dev)
    theirs.close()


# --------------------------------------------------------------------------- root tests
# Everything below runs inside a namespace of its own; nothing touches the root namespace.

DEV = "nttun0"

_PRELUDE = r"""
import json, os, select, socket, struct, subprocess, sys, time
from ipaddress import ip_interface, ip_network
from nattunnel.io.tun import TunDevice, TunError

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()

def wait_for(cmd):
    line = sys.stdin.readline().strip()
    if line != cmd:
        raise SystemExit(f"expected {cmd!r}, got {line!r}")

def error_of(fn):
    try:
        fn()
    except TunError as exc:
        return {"msg": str(exc), "errno": exc.errno}
    return None
"""

_PING_SCRIPT = (
    _PRELUDE
    + r"""
def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

name = sys.argv[1]
dev = TunDevice.create(
    name, 1400, [ip_interface("198.18.200.1/24")], [ip_network("198.18.201.0/24")]
)
emit(ev="created", fd=dev.fd, blocking=os.get_blocking(dev.fd),
     inheritable=os.get_inheritable(dev.fd), name=dev.name, mtu=dev.mtu)
wait_for("ping")
ping = subprocess.Popen(["ping", "-n", "-c1", "-W2", "198.18.201.5"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
buf = bytearray(dev.mtu + 1)
view = memoryview(buf)
request, skipped = None, []
deadline = time.monotonic() + 5
while request is None and time.monotonic() < deadline:
    select.select([dev.fd], [], [], 0.2)
    while (n := dev.read_into(view)) >= 0:
        pkt = bytes(view[:n])
        if pkt[0] >> 4 == 4 and pkt[9] == 1 and pkt[(pkt[0] & 15) * 4] == 8:
            request = pkt
            break
        skipped.append(pkt[:1].hex())  # e.g. IPv6 router solicitations
if request is None:
    ping.kill()
    emit(ev="result", error="no ICMP echo request read", skipped=skipped)
    raise SystemExit(1)
ihl = (request[0] & 15) * 4
icmp = request[ihl:]
reply_icmp = bytearray(b"\x00\x00\x00\x00" + icmp[4:])  # type 0 (echo reply), id/seq/data kept
struct.pack_into("!H", reply_icmp, 2, checksum(bytes(reply_icmp)))
header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(reply_icmp), 0x1234, 0,
                               64, 1, 0, request[16:20], request[12:16]))
struct.pack_into("!H", header, 10, checksum(bytes(header)))
dev.write(bytes(header + reply_icmp))
out, _ = ping.communicate(timeout=10)
emit(ev="result", version=request[0] >> 4, ihl=ihl, length=len(request),
     total_length=struct.unpack_from("!H", request, 2)[0],
     header_checksum_ok=checksum(request[:ihl]) == 0,
     icmp_checksum_ok=checksum(icmp) == 0, icmp_type=icmp[0],
     src=socket.inet_ntoa(request[12:16]), dst=socket.inet_ntoa(request[16:20]),
     ping_rc=ping.returncode, ping_out=out, skipped=skipped,
     write_drops=dev.write_drops, write_errors=dev.write_errors,
     again=dev.read_into(view))
wait_for("close")
dev.close()
dev.close()
emit(ev="closed", fd=dev.fd)
wait_for("exit")
"""
)

_DUP_SCRIPT = (
    _PRELUDE
    + r"""
name = sys.argv[1]
first = TunDevice.create(name, 1400, ["198.18.200.1/24"])
emit(ev="created",
     same_process=error_of(lambda: TunDevice.create(name, 1400, [])),
     not_tun=error_of(lambda: TunDevice.create("lo", 1400, [])))
wait_for("close")
first.close()
with TunDevice.create(name, 1280, ["198.18.200.1/24"]) as again:  # the name is free again
    emit(ev="reopened", mtu=again.mtu)
"""
)

_TRY_SCRIPT = (
    _PRELUDE
    + r"""
emit(ev="tried", error=error_of(lambda: TunDevice.create(sys.argv[1], 1400, [])))
"""
)

_FAIL_SCRIPT = (
    _PRELUDE
    + r"""
name = sys.argv[1]
err = error_of(lambda: TunDevice.create(name, 1400, ["198.18.200.1/24", "198.18.200.1/24"]))
left = subprocess.run(["ip", "link", "show", name], capture_output=True, text=True)
emit(ev="failed", error=err, link_rc=left.returncode, link_err=left.stderr)
"""
)


_EXISTING_SCRIPT = (
    _PRELUDE
    + r"""
name = sys.argv[1]
dev = TunDevice.create(name, 1400, ["198.18.200.1/24", "198.18.202.1/24"],
                       ["198.18.201.0/24"], vnet_hdr=True)
emit(ev="created", existed=dev.existed, summary=dev.closing_summary())
wait_for("close")
dev.close()
emit(ev="closed", fd=dev.fd)
wait_for("fresh")
with TunDevice.create("nttun1", 1400, ["198.18.203.1/24"]) as fresh:
    emit(ev="fresh", existed=fresh.existed, summary=fresh.closing_summary())
"""
)


class _Agent:
    """A Python child running a script in a namespace; JSON events on stdout, commands on
    stdin. Stopped by its PID (``ip netns exec`` execs Python, so the PID is Python's)."""

    def __init__(self, ns: str, script: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def expect(self, ev: str, timeout: float = 15.0) -> dict[str, Any]:
        try:
            got = self.events.get(timeout=timeout)
        except queue.Empty:
            got = None
        if got is None or got.get("ev") != ev:
            self.stop()
            raise AssertionError(f"expected event {ev!r}, got {got!r}; stderr:\n" + self.err())
        return got

    def err(self) -> str:
        return "".join(self.stderr)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def netns(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh network namespace of our own (loopback up), deleted afterwards."""
    require_lab_tools(("ip", "ping"))
    ns = "nttun" + secrets.token_hex(4)
    run(["ip", "netns", "add", ns])
    request.addfinalizer(lambda: run(["ip", "netns", "del", ns], check=False))
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    yield ns


@pytest.fixture
def agents() -> Iterator[list[_Agent]]:
    started: list[_Agent] = []
    yield started
    for agent in started:
        agent.stop()


def _ip_json(ns: str, *args: str) -> Any:
    return json.loads(run(["ip", "-n", ns, "-j", *args]).stdout or "[]")


@pytest.mark.root
def test_tun_device_carries_a_ping(netns: str, agents: list[_Agent]) -> None:
    agent = _Agent(netns, _PING_SCRIPT, DEV)
    agents.append(agent)
    created = agent.expect("created")
    assert created["name"] == DEV and created["mtu"] == 1400
    assert created["blocking"] is False and created["inheritable"] is False

    (link,) = _ip_json(netns, "link", "show", DEV)
    assert link["mtu"] == 1400
    assert "UP" in link["flags"] and "POINTOPOINT" in link["flags"]
    assert link["link_type"] == "none"  # a layer-3 device: no MAC address
    (addr,) = _ip_json(netns, "addr", "show", "dev", DEV)
    v4 = [a for a in addr["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [("198.18.200.1", 24)]
    routes = {r["dst"]: r for r in _ip_json(netns, "route", "show", "dev", DEV)}
    assert set(routes) == {"198.18.200.0/24", "198.18.201.0/24"}
    (via,) = _ip_json(netns, "route", "get", "198.18.201.5")
    assert via["dev"] == DEV and via["prefsrc"] == "198.18.200.1"

    agent.send("ping")
    result = agent.expect("result")
    assert "error" not in result, result
    assert result["version"] == 4 and result["ihl"] == 20
    assert result["dst"] == "198.18.201.5" and result["src"] == "198.18.200.1"
    assert result["length"] == result["total_length"] == 84  # ping's default 56 data bytes
    assert result["header_checksum_ok"] and result["icmp_checksum_ok"]
    assert result["icmp_type"] == 8
    assert result["ping_rc"] == 0, result["ping_out"]
    assert "1 received" in result["ping_out"]
    assert result["write_drops"] == result["write_errors"] == 0
    assert result["again"] == -1

    agent.send("close")
    assert agent.expect("closed")["fd"] == -1
    # the process is still alive: close() alone removed the device and its routes
    assert agent.proc.poll() is None
    gone = run(["ip", "-n", netns, "link", "show", DEV], check=False)
    assert gone.returncode != 0 and "does not exist" in gone.stderr
    assert _ip_json(netns, "route", "show", "198.18.201.0/24") == []
    agent.send("exit")
    assert agent.wait() == 0, agent.err()


@pytest.mark.root
def test_same_name_twice_is_in_use(netns: str, agents: list[_Agent]) -> None:
    holder = _Agent(netns, _DUP_SCRIPT, DEV)
    agents.append(holder)
    created = holder.expect("created")
    same = created["same_process"]
    assert same is not None, "a second TUNSETIFF on a held name succeeded"
    assert same["errno"] == errno.EBUSY
    assert same["msg"] == (
        f"TUN device {DEV!r}: device name in use: another open file already holds this TUN device"
    )
    not_tun = created["not_tun"]
    assert not_tun["errno"] == errno.EINVAL
    assert "not a TUN device" in not_tun["msg"] and "'lo'" in not_tun["msg"]

    # another process in the same namespace gets the same answer
    other = _Agent(netns, _TRY_SCRIPT, DEV)
    agents.append(other)
    tried = other.expect("tried")["error"]
    assert tried is not None and tried["errno"] == errno.EBUSY
    assert "device name in use" in tried["msg"]
    assert other.wait() == 0, other.err()
    assert len(_ip_json(netns, "link", "show", DEV)) == 1  # the holder's device is untouched

    holder.send("close")
    assert holder.expect("reopened")["mtu"] == 1280
    assert holder.wait() == 0, holder.err()
    assert run(["ip", "-n", netns, "link", "show", DEV], check=False).returncode != 0


@pytest.mark.root
def test_configuration_failure_names_the_command_and_leaves_nothing(
    netns: str, agents: list[_Agent]
) -> None:
    agent = _Agent(netns, _FAIL_SCRIPT, DEV)
    agents.append(agent)
    failed = agent.expect("failed")
    assert agent.wait() == 0, agent.err()
    msg = failed["error"]["msg"]
    assert msg.startswith(f"TUN device {DEV!r}: 'ip addr add 198.18.200.1/24 dev {DEV}' failed")
    assert "Address already assigned" in msg  # iproute2's stderr
    assert failed["link_rc"] != 0 and "does not exist" in failed["link_err"]


def _v4(ns: str, dev: str) -> list[str]:
    (addr,) = _ip_json(ns, "addr", "show", "dev", dev)
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in addr["addr_info"]
                  if a["family"] == "inet")


@pytest.mark.root
def test_a_device_that_existed_is_left_as_it_was_found(netns: str, agents: list[_Agent]) -> None:
    """A TUN device made before (`ip tuntap add`) was taken over and left behind with our
    address on it after stop (issue 11): now only what create added is removed at close
    (our address, our routes), its MTU and link state are put back, and the device stays;
    an address it already had stays too. A device create makes is still removed."""
    run(["ip", "-n", netns, "tuntap", "add", "dev", DEV, "mode", "tun"])
    run(["ip", "-n", netns, "link", "set", "dev", DEV, "mtu", "1500"])
    run(["ip", "-n", netns, "addr", "add", "198.18.202.1/24", "dev", DEV])
    agent = _Agent(netns, _EXISTING_SCRIPT, DEV)
    agents.append(agent)
    created = agent.expect("created")
    assert created["existed"] is True and "existed before" in created["summary"]
    (link,) = _ip_json(netns, "link", "show", DEV)
    assert link["mtu"] == 1400 and "UP" in link["flags"]
    assert _v4(netns, DEV) == ["198.18.200.1/24", "198.18.202.1/24"]
    assert _ip_json(netns, "route", "show", "198.18.201.0/24")

    agent.send("close")
    assert agent.expect("closed")["fd"] == -1
    (link,) = _ip_json(netns, "link", "show", DEV)  # still there, as it was
    assert link["mtu"] == 1500 and "UP" not in link["flags"]
    assert _v4(netns, DEV) == ["198.18.202.1/24"]
    assert _ip_json(netns, "route", "show", "198.18.201.0/24") == []
    # nor its TUN features: attaching with IFF_VNET_HDR set it on the device
    shown = run(["ip", "-n", netns, "tuntap", "show"]).stdout
    assert f"{DEV}: tun persist" in shown and "vnet_hdr" not in shown, shown

    agent.send("fresh")
    fresh = agent.expect("fresh")
    assert fresh["existed"] is False and fresh["summary"] == "TUN device nttun1 removed"
    assert agent.wait() == 0, agent.err()
    assert run(["ip", "-n", netns, "link", "show", "nttun1"], check=False).returncode != 0
    assert len(_ip_json(netns, "link", "show", DEV)) == 1
