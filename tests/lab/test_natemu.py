"""Tests for the userspace NAT emulator (nattunnel.lab.natemu): loopback only, no root."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from nattunnel.lab.natemu import DelayLine, Filtering, NatEmulator

PUBLIC_IP = "127.0.0.1"  # the public peer
NAT_IP = "127.0.0.2"  # the NAT's outside address
OTHER_IP = "127.0.0.3"  # a third party on the outside

Addr = tuple[str, int]


class Endpoint(asyncio.DatagramProtocol):
    """A UDP socket with a queue of received (data, addr)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Addr]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))

    @property
    def addr(self) -> Addr:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, addr: Addr) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def recv(self, timeout: float = 1.0) -> tuple[bytes, Addr]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, timeout: float = 0.1) -> bool:
        """True if nothing arrives within ``timeout``."""
        try:
            await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return True
        return False

    async def collect(self, quiet: float = 0.1) -> list[bytes]:
        """Everything that arrives until ``quiet`` seconds pass with nothing new."""
        out = []
        while True:
            try:
                out.append((await asyncio.wait_for(self.queue.get(), quiet))[0])
            except TimeoutError:
                return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def endpoints() -> AsyncIterator[Callable[[str], Awaitable[Endpoint]]]:
    made: list[Endpoint] = []
    loop = asyncio.get_running_loop()

    async def make(host: str = "127.0.0.1") -> Endpoint:
        _, proto = await loop.create_datagram_endpoint(Endpoint, local_addr=(host, 0))
        made.append(proto)
        return proto

    yield make
    for ep in made:
        if ep.transport is not None:
            ep.transport.close()


@pytest.fixture
async def setup(endpoints):
    """(public, inside, make_nat): make_nat(**kw) starts a NAT targeting ``public``."""
    public = await endpoints(PUBLIC_IP)
    inside = await endpoints("127.0.0.1")
    nats: list[NatEmulator] = []

    async def make_nat(**kw: object) -> NatEmulator:
        kw.setdefault("outside_host", NAT_IP)
        nat = NatEmulator(public.addr, **kw)
        await nat.start()
        nats.append(nat)
        return nat

    yield public, inside, make_nat
    for nat in nats:
        await nat.aclose()


async def test_port_translation_and_reply(setup) -> None:
    public, inside, make_nat = setup
    nat = await make_nat()
    inside.send(b"hello", nat.inside_address)
    data, src = await public.recv()
    assert data == b"hello"
    assert src[0] == NAT_IP  # the public peer sees the NAT's outside address ...
    assert src == nat.external_address(inside.addr)  # ... and the mapping's external port
    assert src[1] not in (inside.addr[1], nat.inside_address[1])
    public.send(b"reply", src)
    assert await inside.recv() == (b"reply", nat.inside_address)
    c = nat.counters
    assert (c.forwarded_outbound, c.forwarded_inbound, c.mappings_created) == (1, 1, 1)
    assert c.forwarded == 2 and c.dropped == 0


async def test_each_inside_endpoint_gets_its_own_external_port(setup, endpoints) -> None:
    public, inside, make_nat = setup
    inside2 = await endpoints("127.0.0.1")
    nat = await make_nat()
    inside.send(b"one", nat.inside_address)
    _, ext1 = await public.recv()
    inside2.send(b"two", nat.inside_address)
    _, ext2 = await public.recv()
    inside.send(b"one-again", nat.inside_address)
    assert await public.recv() == (b"one-again", ext1)  # the mapping is stable
    assert ext1 != ext2 and ext1[0] == ext2[0] == NAT_IP
    assert len(nat.mappings) == 2
    public.send(b"to-two", ext2)
    public.send(b"to-one", ext1)
    assert (await inside2.recv())[0] == b"to-two"
    assert (await inside.recv())[0] == b"to-one"


async def test_mapping_expires_with_injected_clock(setup) -> None:
    public, inside, make_nat = setup
    clock = FakeClock()
    nat = await make_nat(mapping_timeout=10.0, clock=clock, sweep_interval=60.0)
    inside.send(b"a", nat.inside_address)
    _, ext = await public.recv()
    clock.now += 9.0
    assert nat.expire_idle() == 0
    public.send(b"refresh", ext)  # inbound traffic refreshes the mapping
    assert (await inside.recv())[0] == b"refresh"
    clock.now += 9.0
    assert nat.expire_idle() == 0
    clock.now += 1.0
    assert nat.expire_idle() == 1 and nat.counters.expired == 1
    assert nat.mapping_for(inside.addr) is None
    public.send(b"late", ext)  # the old external port leads nowhere
    assert await inside.nothing(0.1)
    inside.send(b"b", nat.inside_address)  # new traffic creates a new mapping
    assert (await public.recv())[0] == b"b"
    assert nat.counters.mappings_created == 2


async def test_expiry_detected_on_arrival_and_no_inbound_refresh(
    setup,
) -> None:
    public, inside, make_nat = setup
    clock = FakeClock()
    nat = await make_nat(
        mapping_timeout=5.0, clock=clock, sweep_interval=60.0, inbound_refresh=False
    )
    inside.send(b"a", nat.inside_address)
    _, ext = await public.recv()
    clock.now += 4.0
    public.send(b"in", ext)
    assert (await inside.recv())[0] == b"in"  # delivered, but does not refresh
    clock.now += 1.0
    public.send(b"too-late", ext)  # the sweeper has not run: expiry noticed on arrival
    assert await inside.nothing(0.1)
    assert nat.counters.dropped_expired == 1 and nat.counters.expired == 1


async def test_mapping_expires_in_real_time(setup) -> None:
    public, inside, make_nat = setup
    nat = await make_nat(mapping_timeout=0.2, sweep_interval=0.05)
    inside.send(b"a", nat.inside_address)
    _, ext = await public.recv()
    await asyncio.sleep(0.3)
    assert nat.mappings == [] and nat.counters.expired == 1
    public.send(b"late", ext)
    assert await inside.nothing(0.1)


@pytest.mark.parametrize(
    ("filtering", "same_ip_other_port", "other_ip"),
    [
        ("endpoint-independent", True, True),
        ("address-dependent", True, False),
        ("address-and-port-dependent", False, False),
    ],
)
async def test_filtering(
    setup, endpoints, filtering: str, same_ip_other_port: bool, other_ip: bool
) -> None:
    public, inside, make_nat = setup
    same_ip = await endpoints(PUBLIC_IP)
    stranger = await endpoints(OTHER_IP)
    nat = await make_nat(filtering=filtering)
    assert nat.filtering is Filtering(filtering)
    inside.send(b"open", nat.inside_address)
    _, ext = await public.recv()
    public.send(b"from-target", ext)
    assert (await inside.recv())[0] == b"from-target"  # always allowed
    same_ip.send(b"same-ip", ext)
    stranger.send(b"stranger", ext)
    got = await inside.collect(0.15)
    assert (b"same-ip" in got) == same_ip_other_port
    assert (b"stranger" in got) == other_ip
    assert nat.counters.dropped_filtered == (not same_ip_other_port) + (not other_ip)


async def test_rebind_moves_mapping_to_new_port(setup) -> None:
    public, inside, make_nat = setup
    nat = await make_nat()
    inside.send(b"before", nat.inside_address)
    _, old = await public.recv()
    new = nat.rebind(inside.addr)
    assert new != old and new[0] == NAT_IP and nat.counters.rebinds == 1
    inside.send(b"after", nat.inside_address)
    assert await public.recv() == (b"after", new)  # the peer sees the new source port
    public.send(b"to-old", old)
    public.send(b"to-new", new)
    assert await inside.collect(0.1) == [b"to-new"]
    with pytest.raises(KeyError):
        nat.rebind(("127.0.0.1", 1))


async def _run_impaired(setup, n: int, **kw: object) -> tuple[list[bytes], NatEmulator]:
    public, inside, make_nat = setup
    nat = await make_nat(**kw)
    for i in range(n):
        inside.send(b"%03d" % i, nat.inside_address)
        await asyncio.sleep(0.002)  # keep the loopback socket buffers far from full
    got = await public.collect(0.15)
    await nat.aclose()
    return got, nat


async def test_loss_is_seeded_and_reproducible(setup) -> None:
    got1, nat1 = await _run_impaired(setup, 60, loss=0.3, seed=7)
    got2, _ = await _run_impaired(setup, 60, loss=0.3, seed=7)
    assert got1 == got2  # same seed, same survivors
    assert 0 < nat1.counters.dropped_loss < 60
    assert len(got1) == 60 - nat1.counters.dropped_loss
    got3, _ = await _run_impaired(setup, 60, loss=0.3, seed=8)
    assert got3 != got1


async def test_duplication(setup) -> None:
    got, nat = await _run_impaired(setup, 10, duplicate=1.0, seed=1)
    assert got == [b"%03d" % (i // 2) for i in range(20)]
    assert nat.counters.duplicated == 10 and nat.counters.forwarded_outbound == 20


async def test_reordering(setup) -> None:
    # Every free packet is held and released right after the next one.
    got, nat = await _run_impaired(setup, 5, reorder=1.0, reorder_hold=0.05, seed=1)
    assert got == [b"001", b"000", b"003", b"002", b"004"]  # the last one: after the hold
    assert nat.counters.reordered == 3
    got, _ = await _run_impaired(setup, 40, reorder=0.3, seed=3)
    assert sorted(got) == [b"%03d" % i for i in range(40)] and got != sorted(got)


async def test_inbound_only_impairment(setup) -> None:
    public, inside, make_nat = setup
    nat = await make_nat(loss=1.0, impair="inbound")
    inside.send(b"out", nat.inside_address)
    _, ext = await public.recv()  # outbound unaffected
    public.send(b"in", ext)
    assert await inside.nothing(0.1)
    assert nat.counters.dropped_loss == 1


async def test_validation_and_close_is_idempotent(setup) -> None:
    with pytest.raises(ValueError):
        NatEmulator(("127.0.0.1", 9), loss=1.5)
    with pytest.raises(ValueError):
        NatEmulator(("127.0.0.1", 9), mapping_timeout=0)
    with pytest.raises(ValueError):
        NatEmulator(("127.0.0.1", 9), filtering="full-cone")
    public, inside, make_nat = setup
    nat = await make_nat()
    inside.send(b"x", nat.inside_address)
    _, ext = await public.recv()
    nat.close()
    nat.close()
    await nat.aclose()
    public.send(b"after-close", ext)
    assert await inside.nothing(0.05)
    async with NatEmulator(public.addr) as nat2:
        assert nat2.inside_address[0] == "127.0.0.1"


async def test_delay_with_a_fake_clock(setup) -> None:
    # Held for the delay per the clock, in order, both ways; nothing goes before its time.
    public, inside, make_nat = setup
    clock = FakeClock()
    nat = await make_nat(delay=0.05, clock=clock, sweep_interval=60.0)
    for i in range(3):
        inside.send(b"%d" % i, nat.inside_address)
    while nat.delay_line is not None and len(nat.delay_line) < 3:
        await asyncio.sleep(0.01)
    assert nat.delay_line is not None and nat.delay_line.release_due() == 0
    assert await public.nothing(0.1)  # real time passed, the fake clock did not
    clock.now += 0.05
    assert nat.delay_line.release_due() == 3
    assert [(await public.recv())[0] for _ in range(3)] == [b"0", b"1", b"2"]
    ext = nat.mappings[0].external
    public.send(b"back", ext)
    assert await inside.nothing(0.1)
    clock.now += 0.05
    assert nat.delay_line.release_due() == 1
    assert (await inside.recv())[0] == b"back"
    assert nat.counters.delayed == 4 and nat.counters.forwarded == 4


async def test_delay_in_real_time_keeps_order(setup) -> None:
    public, inside, make_nat = setup
    nat = await make_nat(delay=0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    inside.send(b"ping", nat.inside_address)
    _, ext = await public.recv()
    public.send(b"pong", ext)
    await inside.recv()
    rtt = loop.time() - start
    assert 0.1 <= rtt < 0.5, rtt  # 50 ms each way
    for i in range(50):
        inside.send(b"%03d" % i, nat.inside_address)
    assert await public.collect(0.2) == [b"%03d" % i for i in range(50)]


async def test_delay_line_bound_and_validation() -> None:
    clock = FakeClock()
    sent: list[bytes] = []
    line = DelayLine(1.0, limit=2, clock=clock)
    assert line.push(b"a", sent.append) and line.push(b"b", sent.append)
    assert not line.push(b"c", sent.append)  # full: the caller counts the drop
    clock.now += 1.0
    assert line.release_due() == 2 and sent == [b"a", b"b"]
    line.close()
    assert not line.push(b"d", sent.append)
    with pytest.raises(ValueError):
        DelayLine(-1.0)
    with pytest.raises(ValueError):
        DelayLine(0.1, limit=0)
    nat = NatEmulator(("127.0.0.1", 9), delay=0.1, delay_limit=1)
    assert nat.delay_line is not None and nat.delay_line.limit == 1
