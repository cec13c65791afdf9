"""``nattunnel bench crypto``: the ESP data path against the bare AEAD call, side by side.

For each packet size and suite, four variants run interleaved in rounds (so that a noisy
neighbour slows all of them alike), and the best round of each is kept:

- ``aead-seal``: ``AEAD.encrypt(nonce, payload, aad)``, the C limit as seen from Python;
- ``encap``: ``OutboundSA.encapsulate_into`` (framing, trailer, sequence number, AEAD);
- ``encap-in-place``: ``OutboundSA.encapsulate_in_place``, as the TUN send path does it (the
  inner packet already lies where its plaintext goes);
- ``aead-open``: ``AEAD.decrypt(nonce, ciphertext, aad)``;
- ``decap``: ``InboundSA.decapsulate_into`` on packets lying side by side in one receive
  buffer, as UDP GRO delivers them (replay check, AEAD in place, padding and inner checks,
  window commit). Refilling the buffer between passes is not timed: the kernel does it.
- ``decap-run``: ``InboundSA.decapsulate_run`` over the same buffer in one call, as the
  endpoint handles a GRO read (the same checks, the SA's state in locals for the run).

Ratios are encap, encap-in-place / aead-seal and decap, decap-run / aead-open in packets per
second.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cryptography

from ..esp.sa import InboundSA, OutboundSA
from ..esp.suite import SUITES, Suite
from ..lab.packets import ipv4_packet

#: distinct received packets, kept small so that they stay in cache as a just-received packet
#: would; the replay window is reset between passes over the pool.
_POOL = 64
_SPI = 0x1000


@dataclass
class Result:
    suite: str
    size: int
    variant: str
    pps: float
    gbps: float
    ratio: float


def machine_info() -> dict[str, str | int | None]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
    }


def _rate(loop: Callable[[], int]) -> Callable[[], float]:
    """Packets per second of a loop that returns how many packets it handled."""

    def timed() -> float:
        t0 = time.perf_counter()
        done = loop()
        return done / (time.perf_counter() - t0)

    return timed


def _variants(suite: Suite, size: int, count: int) -> dict[str, Callable[[], float]]:
    """The six variants for one suite and size, in the order they run in each round."""
    keymat = os.urandom(suite.keymat_len)
    inner = ipv4_packet(size)
    return {**_send_variants(suite, keymat, inner, count),
            **_receive_variants(suite, keymat, inner, count)}


def _send_variants(suite: Suite, keymat: bytes, inner: bytes, count: int
                   ) -> dict[str, Callable[[], float]]:
    """aead-seal, encap, encap-in-place."""
    size = len(inner)
    aead = suite.aead(keymat[: suite.key_len])
    nonce = os.urandom(12)
    aad = os.urandom(8)
    out = memoryview(bytearray(size + 64))
    outbound = OutboundSA(_SPI, suite, keymat)

    def aead_seal() -> int:
        enc = aead.encrypt
        for _ in range(count):
            enc(nonce, inner, aad)
        return count

    def encap() -> int:
        f = outbound.encapsulate_into
        for _ in range(count):
            f(inner, out)
        return count

    # the send path reads each inner packet from TUN where its plaintext goes: the copy is
    # the read's, so refilling it is not timed here either (one octet, the version, is: the
    # AEAD overwrote it and the next-header choice reads it)
    staged = memoryview(bytearray(size + 64))
    staged[16 : 16 + size] = inner
    first = inner[0]

    def encap_in_place() -> int:
        f = outbound.encapsulate_in_place
        for _ in range(count):
            staged[16] = first
            f(staged, 0, size)
        return count

    return {"aead-seal": _rate(aead_seal), "encap": _rate(encap),
            "encap-in-place": _rate(encap_in_place)}


def _receive_variants(suite: Suite, keymat: bytes, inner: bytes, count: int
                      ) -> dict[str, Callable[[], float]]:
    """aead-open, decap, decap-run."""
    aead = suite.aead(keymat[: suite.key_len])
    nonce = os.urandom(12)
    aad = os.urandom(8)
    sealed = aead.encrypt(nonce, inner, aad)
    passes = max(1, count // _POOL)

    # Received packets lie side by side in one buffer, as UDP GRO delivers them; each pass
    # decrypts them in place, so the buffer is refilled (untimed) and the window rewound.
    maker = OutboundSA(_SPI, suite, keymat)
    pool = b"".join(maker.encapsulate(inner) for _ in range(_POOL))
    plen = len(pool) // _POOL
    offsets = range(0, len(pool), plen)
    rx = bytearray(len(pool))
    rxv = memoryview(rx)
    inbound = InboundSA(_SPI, suite, keymat)
    assert inbound.decapsulate(pool[:plen]) == inner

    def aead_open() -> int:
        dec = aead.decrypt
        for _ in range(count):
            dec(nonce, sealed, aad)
        return count

    def decap() -> float:
        f = inbound.decapsulate_into
        before = inbound.packets
        elapsed = 0.0
        for _ in range(passes):
            rx[:] = pool
            inbound.replay.reset()
            t0 = time.perf_counter()
            for off in offsets:
                f(rxv, off, plen)
            elapsed += time.perf_counter() - t0
        return (inbound.packets - before) / elapsed

    results: list[int] = []

    def decap_run() -> float:
        run = inbound.decapsulate_run
        before = inbound.packets
        elapsed = 0.0
        end = len(pool)
        for _ in range(passes):
            rx[:] = pool
            inbound.replay.reset()
            t0 = time.perf_counter()
            results.clear()
            run(rxv, 0, end, plen, results)
            elapsed += time.perf_counter() - t0
        return (inbound.packets - before) / elapsed

    return {"aead-open": _rate(aead_open), "decap": decap, "decap-run": decap_run}


def run_crypto(
    sizes: list[int], suites: list[Suite], count: int, rounds: int,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    results: list[Result] = []
    for suite in suites:
        for size in sizes:
            if progress:
                progress(f"{suite.name} {size} B")
            variants = _variants(suite, size, count)
            best = dict.fromkeys(variants, 0.0)
            for _ in range(rounds):
                for name, fn in variants.items():
                    best[name] = max(best[name], fn())
            for name, pps in best.items():
                base = best["aead-open"] if name.startswith(("aead-open", "decap")) else best[
                    "aead-seal"]
                results.append(
                    Result(suite.name, size, name, pps, pps * size * 8 / 1e9, pps / base)
                )
    return results


def format_table(results: list[Result]) -> str:
    lines = [f"{'suite':<18}{'size':>6}  {'variant':<16}{'Mpps':>8}{'Gbit/s':>9}{'ratio':>8}"]
    for r in results:
        lines.append(
            f"{r.suite:<18}{r.size:>6}  {r.variant:<16}{r.pps / 1e6:>8.3f}{r.gbps:>9.2f}"
            f"{r.ratio:>8.2f}"
        )
    return "\n".join(lines)


def crypto_main(sizes: list[int], suite_names: list[str] | None, count: int, rounds: int,
                as_json: bool) -> int:
    suites = [SUITES[n] for n in suite_names] if suite_names else list(SUITES.values())
    progress = None if as_json else (lambda s: print(f"  measuring {s} ...", flush=True))
    results = run_crypto(sizes, suites, count, rounds, progress)
    if as_json:
        print(json.dumps({"machine": machine_info(), "count": count, "rounds": rounds,
                          "results": [asdict(r) for r in results]}, indent=2))
    else:
        info = machine_info()
        print(f"machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
              f"Python {info['python']}, cryptography {info['cryptography']}")
        print(f"{count} packets per variant per round, best of {rounds} interleaved rounds; "
              "ratio = variant / bare AEAD call of the same direction\n")
        print(format_table(results))
    return 0


def loopback_main(sizes: list[int], suite_names: list[str] | None, seconds: float,
                  as_json: bool) -> int:
    """``nattunnel bench loopback``: two endpoints on 127.0.0.1 through the in-process
    interface (no root): inner packets per second A -> B, encapsulation, UDP, decapsulation,
    both in one process and one event loop (so one core does both ends)."""
    import asyncio

    from ..lab.demo import throughput

    suites = [SUITES[n] for n in suite_names] if suite_names else [SUITES["aes256gcm16"]]
    rows: list[dict[str, Any]] = []
    for suite in suites:
        for size in sizes:
            if not as_json:
                print(f"  measuring {suite.name} {size} B ...", flush=True)
            pps, n = asyncio.run(throughput(seconds, size, suite=suite))
            rows.append({"suite": suite.name, "size": size, "pps": pps, "packets": n,
                         "gbps": pps * size * 8 / 1e9})
    if as_json:
        print(json.dumps({"machine": machine_info(), "seconds": seconds, "results": rows},
                         indent=2))
        return 0
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
          f"cryptography {info['cryptography']}")
    print(f"A -> B on loopback, both endpoints in one process, {seconds:g} s per row\n")
    print(f"{'suite':<18}{'size':>6}{'kpps':>10}{'Gbit/s':>9}")
    for r in rows:
        print(f"{r['suite']:<18}{r['size']:>6}{r['pps'] / 1e3:>10.1f}{r['gbps']:>9.3f}")
    return 0
