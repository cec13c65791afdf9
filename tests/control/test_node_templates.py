"""A gateway Node with one template ``[[peer]]`` (``remote_id = "%any"``) and two client
Nodes with certificates and ``vips``, in-process on loopback (no root): each client becomes
an instance with its own address, packets to each address reach that client alone, the
control socket's ``show`` has the instances, and a reload keeps them while the template is
unchanged and deletes them with it (docs/road-warrior.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nattunnel.app import Node
from nattunnel.config import load_config
from nattunnel.lab.pki import Leaf, Pki, make_chain
from tests.control.test_node import _free_port, ask
from tests.support.packets import ip4

BEHIND = "198.18.50.1"


def _auth(p: Pki, me: str) -> str:
    leaf = p.leaf[me]
    return (f'auth = "pubkey"\nprivate_key = "{leaf.key_path}"\n'
            f'certs = "{leaf.cert_path}"\ncacerts = "{p.root.cert_path}"\n')


def _gateway(tmp: Path, p: Pki, port: int) -> Path:
    path = tmp / "gw.toml"
    path.write_text(f'listen = ["127.0.0.1:{port}"]\nike_port = 0\n'
                    f'control_socket = "{tmp / "gw.sock"}"\n'
                    '[interface]\nkind = "inprocess"\naddresses = ["198.18.50.254/24"]\n'
                    '[pools.rw]\naddrs = "198.18.200.10-198.18.200.19"\n'
                    f'[[peer]]\nname = "rw"\n{_auth(p, "gw")}local_id = "gw"\n'
                    'remote_id = "%any"\npools = "rw"\nlocal_ts = ["198.18.50.0/24"]\n')
    return path


def _client(tmp: Path, p: Pki, me: str, gw_port: int) -> Path:
    path = tmp / f"{me}.toml"
    path.write_text(f'listen = ["127.0.0.1:{_free_port()}"]\nike_port = 0\n'
                    '[interface]\nkind = "inprocess"\n'
                    f'[[peer]]\nname = "gw"\n{_auth(p, me)}local_id = "{me}"\n'
                    f'remote_id = "gw"\nendpoint = "127.0.0.1:{gw_port}"\n'
                    'allowed_ips = ["198.18.50.0/24"]\nvips = ["0.0.0.0"]\n')
    return path


def _vip(node: Node) -> str:
    (sa,) = node.show()["peers"]["gw"]["ike_sas"]
    (vip,) = sa["virtual_ips"]
    return str(vip)


async def _until(pred: object, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


async def test_one_template_for_two_client_nodes_and_reload(tmp_path: Path) -> None:
    # Ed25519 keys: app._comparable compares those by value (an ECDSA key object compares
    # by identity, so a reload would take an ECDSA peer as changed)
    p = make_chain(tmp_path / "pki", kind="ed25519", leaves={
        n: Leaf(f"C=CH, O=Lab, CN={n}", dns=(n,)) for n in ("gw", "client-a", "client-b")})
    port = _free_port()
    gw_path = _gateway(tmp_path, p, port)
    gw = Node(load_config(gw_path))
    await gw.start()
    clients = {n: Node(load_config(_client(tmp_path, p, n, port)))
               for n in ("client-a", "client-b")}
    try:
        for c in clients.values():
            await c.start()
        for c in clients.values():
            await c.wait_up("gw", timeout=10)
        vips = {n: _vip(c) for n, c in clients.items()}
        assert len(set(vips.values())) == 2
        for n in clients:
            await gw.wait_up(f"rw[{n}]", timeout=5)
        status = await ask(gw, "show")
        for n, vip in vips.items():
            peer = status["peers"][f"rw[{n}]"]
            assert peer["instance"] == {"template": "rw", "identity": n}
            assert peer["allowed_ips"] == [f"{vip}/32"] and peer["state"] == "up"
        # each client's packets come in, and each address's go to its client alone
        for n, c in clients.items():
            pkt = ip4(vips[n], BEHIND, 80)
            assert c.send(pkt) > 0
            assert await asyncio.wait_for(gw.recv(), 5) == pkt
            back = ip4(BEHIND, vips[n], 90)
            assert gw.send(back) > 0
            assert await asyncio.wait_for(c.recv(), 5) == back
        # an unchanged template keeps its instances and their SAs
        result = await ask(gw, "reload")
        assert result["unchanged"] == ["rw"]
        assert {"rw[client-a]", "rw[client-b]"} <= set(gw.show()["peers"])
        # the template goes: its instances' IKE SAs are deleted, and the instances go
        gw_path.write_text(gw_path.read_text().split("[[peer]]")[0])
        result = await ask(gw, "reload")
        assert result["removed"] == ["rw"]
        assert await _until(lambda: set(gw.show()["peers"]) == set())
        for c in clients.values():
            assert await _until(lambda c=c: not c.show()["peers"]["gw"]["ike_sas"])
        assert gw.controller is not None and gw.controller.up == set()
        (pool,) = gw.show()["ike"]["pools"] or [{"in_use": 0}]
        assert pool["in_use"] == 0
    finally:
        for c in clients.values():
            await c.stop()
        await gw.stop()


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
