"""IKEv2 between two nattunnel endpoints on loopback (in-process interfaces, no TUN)."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from nattunnel.app import Controller
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.keylog import KeyLog
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.lab.natemu import NatEmulator
from nattunnel.tunnel.core import Tunnel
from tests.support.ike import NET_A, NET_B
from tests.support.packets import A_INNER, B_INNER, ip4


async def make(name, peer_name, local_id, remote_id, local_ts, remote_ts, auth, keys,
               initiate_to=None, keylog=None, host="127.0.0.1", force_encap=True):
    t = Tunnel()
    t.add_peer(peer_name, [remote_ts], keepalive_interval=0.3)
    iface = InProcessInterface()
    mgr = IkeManager(t, keylog=keylog)
    ep = Endpoint(t, iface, [(host, 0)], control=Controller(t, mgr, ike_port=0))
    cfg = IkeConfig(peer_name, Identity.parse(local_id), Identity.parse(remote_id), auth=auth,
                    psk=b"shared secret", private_key=keys[0], peer_public_key=keys[1],
                    local_ts=(local_ts,), remote_ts=(remote_ts,), force_encap=force_encap,
                    dpd_interval=5.0)
    await ep.start()
    return ep, iface, mgr, cfg


async def wait_for(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise TimeoutError
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("auth", ["psk", "pubkey"])
async def test_ike_tunnel_through_the_nat_emulator(auth, tmp_path):
    ka, kb = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    b, ib, mb, cb = await make("b", "a", "hostb", "hosta", NET_B, NET_A, auth,
                               (kb, ka.public_key()), keylog=KeyLog(tmp_path / "keys"))
    mb.add_peer(IkePeer(cb, initiate=False, remote=None), 0)
    b_addr = b.local_addresses()[0]
    nat = NatEmulator((b_addr[0], b_addr[1]), mapping_timeout=30)
    await nat.start()
    a, ia, ma, ca = await make("a", "b", "hosta", "hostb", NET_A, NET_B, auth,
                               (ka, kb.public_key()))
    loop = asyncio.get_running_loop()
    ma.add_peer(IkePeer(ca, initiate=True, remote=nat.inside_address), loop.time())
    a.rearm_timer()
    try:
        await wait_for(lambda: a.tunnel.peers["b"].outbound is not None
                       and b.tunnel.peers["a"].outbound is not None)
        pkt = ip4(A_INNER, B_INNER, 500)
        assert ia.send(pkt) > 0
        assert await asyncio.wait_for(ib.recv(), 2) == pkt
        back = ip4(B_INNER, A_INNER, 300)
        assert ib.send(back) > 0
        assert await asyncio.wait_for(ia.recv(), 2) == back
        # B sees A at the NAT's external port, and the key log has both tables
        mapped = nat.external_address(a.local_addresses()[0][:2])
        assert b.tunnel.peers["a"].addr == mapped
        stats = b.stats()["ike"]
        (sa,) = stats["ike_sas"]
        assert sa["state"] == "established" and sa["remote_behind_nat"]
        assert (tmp_path / "keys" / "esp_sa").read_text().count("\n") == 2
        assert (tmp_path / "keys" / "ikev2_decryption_table").read_text().count("\n") == 1
        # A finds NAT in the path (its peer address differs) and sends keepalives
        assert a.tunnel.peers["b"].keepalive
    finally:
        a.close()
        b.close()
        nat.close()


async def test_wrong_identity_is_refused(tmp_path):
    keys = (ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate())
    b, _, mb, cb = await make("b", "a", "hostb", "hosta", NET_B, NET_A, "psk",
                              (keys[0], keys[1].public_key()))
    mb.add_peer(IkePeer(cb, initiate=False, remote=None), 0)
    a, _, ma, ca = await make("a", "b", "intruder", "hostb", NET_A, NET_B, "psk",
                              (keys[1], keys[0].public_key()))
    loop = asyncio.get_running_loop()
    b_addr = b.local_addresses()[0]
    ma.add_peer(IkePeer(ca, initiate=True, remote=(b_addr[0], b_addr[1])), loop.time())
    a.rearm_timer()
    try:
        await asyncio.sleep(0.5)
        assert b.tunnel.peers["a"].outbound is None
        assert a.tunnel.peers["b"].outbound is None
    finally:
        a.close()
        b.close()


async def test_sequence_number_soft_limit_triggers_a_child_rekey():
    ka, kb = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    b, ib, mb, cb = await make("b", "a", "hostb", "hosta", NET_B, NET_A, "psk",
                               (kb, ka.public_key()))
    mb.add_peer(IkePeer(cb, initiate=False, remote=None), 0)
    a, ia, ma, ca = await make("a", "b", "hosta", "hostb", NET_A, NET_B, "psk",
                               (ka, kb.public_key()))
    loop = asyncio.get_running_loop()
    b_addr = b.local_addresses()[0]
    ma.add_peer(IkePeer(ca, initiate=True, remote=(b_addr[0], b_addr[1])), loop.time())
    a.rearm_timer()
    try:
        await wait_for(lambda: a.tunnel.peers["b"].outbound is not None
                       and b.tunnel.peers["a"].outbound is not None)
        first = a.tunnel.peers["b"].outbound
        first.soft_limit = first.seq + 1  # as if 15/16 of the sequence space were used
        first._limit = first.soft_limit
        for _ in range(3):
            ia.send(ip4(A_INNER, B_INNER, 100))
            await asyncio.wait_for(ib.recv(), 2)
        assert first.rekey_needed
        await wait_for(lambda: a.tunnel.peers["b"].outbound is not first)
        second = a.tunnel.peers["b"].outbound
        assert second.spi != first.spi and not second.rekey_needed
        pkt = ip4(A_INNER, B_INNER, 200)
        ia.send(pkt)
        assert await asyncio.wait_for(ib.recv(), 2) == pkt
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("natt", [False, True], ids=["port-500", "natt"])
async def test_no_nat_found_between_two_addresses_of_one_host(natt, caplog):
    """Issue 9 item 7: an endpoint bound to 127.0.0.2 talking to 127.0.0.1 sends from
    127.0.0.2, so its NAT detection hashes must be made with 127.0.0.2 (the address its
    socket is bound to), not with the route's preferred source (127.0.0.1).

    port-500: the initiator on 127.0.0.2 (its port-500 IKE socket); neither side finds NAT
    and no keepalives are sent. natt: the responder on 127.0.0.2 answers on its NAT-T socket
    (the initiator forces encapsulation, which fakes its own NAT detection source hash, so
    the responder rightly sees "peer side"); the responder's own hashes are right."""
    caplog.set_level("INFO", logger="nattunnel")
    ka, kb = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    b_host, a_host = ("127.0.0.2", "127.0.0.1") if natt else ("127.0.0.1", "127.0.0.2")
    b, _, mb, cb = await make("b", "a", "hostb", "hosta", NET_B, NET_A, "psk",
                              (kb, ka.public_key()), host=b_host, force_encap=natt)
    mb.add_peer(IkePeer(cb, initiate=False, remote=None), 0)
    a, _, ma, ca = await make("a", "b", "hosta", "hostb", NET_A, NET_B, "psk",
                              (ka, kb.public_key()), host=a_host, force_encap=natt)
    loop = asyncio.get_running_loop()
    # to B's NAT-T socket (force_encap) or to its port-500 IKE socket (port 0 here)
    b_to = b.local_addresses()[0] if natt else b.ike_addresses()[0]
    ma.ike_port = b.ike_addresses()[0][1]  # plain IKE is on a port the kernel chose here
    ma.add_peer(IkePeer(ca, initiate=True, remote=(b_to[0], b_to[1])), loop.time())
    a.rearm_timer()
    try:
        def established(m):
            return [x for x in m.stats()["ike_sas"] if x["state"] == "established"]

        await wait_for(lambda: established(ma) and established(mb))
        (sa_a,), (sa_b,) = established(ma), established(mb)
        assert sa_b["remote"].startswith(a_host + ":")
        assert sa_a["remote"].startswith(b_host + ":")
        assert (sa_a["local_behind_nat"], sa_a["remote_behind_nat"]) == (False, False)
        assert sa_b["local_behind_nat"] is False
        assert sa_b["remote_behind_nat"] is natt  # forced by the initiator's force_encap
        if not natt:
            assert not a.tunnel.peers["b"].keepalive and not b.tunnel.peers["a"].keepalive
        assert "NAT: this side" not in caplog.text
        assert caplog.text.count("NAT: none") == (1 if natt else 2)
    finally:
        a.close()
        b.close()


async def test_wildcard_sockets_find_the_source_address_for_nat_detection(caplog):
    """Both endpoints listen on 0.0.0.0: the source the kernel picks towards the peer
    (127.0.0.1) goes into the NAT detection hashes, so neither side finds NAT. The endpoint
    looks it up when the IKE manager asks (LocalAddressNeeded), once per peer."""
    caplog.set_level("INFO", logger="nattunnel")
    ka, kb = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    b, _, mb, cb = await make("b", "a", "hostb", "hosta", NET_B, NET_A, "psk",
                              (kb, ka.public_key()), host="0.0.0.0", force_encap=False)
    mb.add_peer(IkePeer(cb, initiate=False, remote=None), 0)
    a, _, ma, ca = await make("a", "b", "hosta", "hostb", NET_A, NET_B, "psk",
                              (ka, kb.public_key()), host="0.0.0.0", force_encap=False)
    loop = asyncio.get_running_loop()
    ma.ike_port = b.ike_addresses()[0][1]  # plain IKE is on a port the kernel chose here
    ma.add_peer(IkePeer(ca, initiate=True, remote=("127.0.0.1", b.ike_addresses()[0][1])),
                loop.time())
    a.rearm_timer()
    try:
        await wait_for(lambda: a.tunnel.peers["b"].outbound is not None
                       and b.tunnel.peers["a"].outbound is not None)
        for m in (ma, mb):
            (sa,) = m.stats()["ike_sas"]
            assert (sa["local_behind_nat"], sa["remote_behind_nat"]) == (False, False)
            assert sa["remote"].startswith("127.0.0.1:")
        assert caplog.text.count("NAT: none") == 2
        assert not a.errors and not b.errors
        assert a.local_address_towards(("127.0.0.1", 9), natt=True) == (
            "127.0.0.1", a.local_addresses()[0][1])
        # the kernel's choice is cached; an address or route change (MOBIKE's watcher)
        # makes the endpoint look again
        assert ("127.0.0.1", True) in a._sources
        a.forget_sources()
        assert not a._sources
        assert a.local_address_towards(("127.0.0.1", 9), natt=True)[0] == "127.0.0.1"
    finally:
        a.close()
        b.close()
