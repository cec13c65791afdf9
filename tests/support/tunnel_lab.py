"""nattunnel endpoints in the NAT lab, for the root tests; the code is in nattunnel.lab.tunnels.

Host B (public, 198.18.0.2) is the hub; hosts A and C (behind the router's NAT) each have a
tunnel to B, with manual SAs (``start``) or IKEv2 (``start_ike_tunnels``). Inner addresses:
A 198.18.100.1, B 198.18.100.2, C 198.18.100.3. ``TCP_SERVER`` and ``TCP_CLIENT`` are scripts
that carry a seeded stream over the inner addresses and print its SHA-256.
"""

from __future__ import annotations

import hashlib
import random

from nattunnel.lab.tunnels import (
    INNER,
    PKG_ROOT,
    SPI,
    Node,
    Tunnels,
    ike_sas,
    key_file,
    start_ike_node,
    start_ike_tunnels,
    tun_present,
    wait_ike_up,
)
from nattunnel.lab.tunnels import start_tunnels as start

__all__ = [
    "INNER",
    "PKG_ROOT",
    "SPI",
    "TCP_CLIENT",
    "TCP_SERVER",
    "Node",
    "Tunnels",
    "expected_stream_digest",
    "ike_sas",
    "key_file",
    "start",
    "start_ike_node",
    "start_ike_tunnels",
    "tun_present",
    "wait_ike_up",
]

# A TCP sink and source for the inner addresses: the server prints what it received and its
# SHA-256; the client sends SIZE octets from a seeded generator and prints the same.
TCP_SERVER = r"""
import hashlib, json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, port))
ls.listen(1)
ls.settimeout(30)
print("ready", flush=True)
conn, peer = ls.accept()
conn.settimeout(30)
h, n = hashlib.sha256(), 0
while True:
    b = conn.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
conn.sendall(h.hexdigest().encode())
conn.close()
print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "peer": peer[0]}), flush=True)
"""

TCP_CLIENT = r"""
import hashlib, json, random, socket, sys, time
host, port, size, seed, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((host, port), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
s.settimeout(30)
rng, h, n = random.Random(seed), hashlib.sha256(), 0
t0 = time.monotonic()
while n < size:
    b = rng.randbytes(min(chunk, size - n))
    s.sendall(b)
    h.update(b)
    n += len(b)
s.shutdown(socket.SHUT_WR)
echo = b""
while True:
    b = s.recv(256)
    if not b:
        break
    echo += b
print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "echo": echo.decode(),
                  "seconds": time.monotonic() - t0}), flush=True)
"""


def expected_stream_digest(size: int, seed: int, chunk: int) -> str:
    rng, h, n = random.Random(seed), hashlib.sha256(), 0
    while n < size:
        b = rng.randbytes(min(chunk, size - n))
        h.update(b)
        n += len(b)
    return h.hexdigest()
