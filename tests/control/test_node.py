"""A running endpoint steered through its control socket (nattunnel.app.Node and
nattunnel.control): two in-process IKE endpoints on loopback in one asyncio program (no
root), each with its control socket; the requests go over the real Unix socket, as
``nattunnel show`` sends them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from nattunnel.app import Node
from nattunnel.config import load_config
from nattunnel.control.protocol import ControlError, request
from nattunnel.keys import write_psk_file
from tests.support.packets import ip4

A_IN, B_IN, C_IN = "198.18.100.1", "198.18.100.2", "198.18.100.3"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _peer(name: str, me: str, other: str, inner: str, local: str,
          endpoint: int | None = None, **extra: object) -> str:
    lines = ["[[peer]]", f'name = "{name}"', 'auth = "psk"', 'psk_file = "k.psk"',
             f'local_id = "{me}"', f'remote_id = "{other}"',
             f'allowed_ips = ["{inner}/32"]', f'local_ts = ["{local}/32"]']
    if endpoint is not None:
        lines.append(f'endpoint = "127.0.0.1:{endpoint}"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _config(tmp: Path, role: str, port: int, peers: str) -> Path:
    path = tmp / f"{role}.toml"
    path.write_text(f'listen = ["127.0.0.1:{port}"]\nike_port = 0\n'
                    f'control_socket = "{tmp / (role + ".sock")}"\n'
                    f'[interface]\nkind = "inprocess"\n' + peers)
    return path


async def ask(node: Node, command: str, **args: Any) -> Any:
    """One request over the node's control socket (a thread: the client blocks)."""
    assert node.control_server is not None
    return await asyncio.to_thread(request, node.control_server.path, command, args)


async def _pair(tmp: Path) -> tuple[Node, Node, Path]:
    write_psk_file(tmp / "k.psk", b"correct horse battery staple", force=True)
    pa, pb = _free_port(), _free_port()
    a = Node(load_config(_config(tmp, "a", pa, _peer("b", "hosta", "hostb", B_IN, A_IN,
                                                        endpoint=pb))))
    b_path = _config(tmp, "b", pb, _peer("a", "hostb", "hosta", A_IN, B_IN))
    b = Node(load_config(b_path))
    await b.start()
    await a.start()
    await a.wait_up("b", timeout=10)
    await b.wait_up("a", timeout=10)
    return a, b, b_path


async def _ping(a: Node, b: Node, n: int = 1, size: int = 100) -> None:
    for _ in range(n):
        pkt = ip4(A_IN, B_IN, size)
        assert a.send(pkt) > 0
        assert await asyncio.wait_for(b.recv(), 5) == pkt


async def test_show_over_the_socket_counts_across_a_rekey(tmp_path: Path) -> None:
    a, b, _ = await _pair(tmp_path)
    try:
        sock = a.control_server.path if a.control_server else None
        assert sock is not None and stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        await _ping(a, b, 10, 200)
        shown = await ask(a, "show")
        p = shown["peers"]["b"]
        assert p["state"] == "up" and p["kind"] == "ike"
        assert (p["tx_packets"], p["tx_bytes"]) == (10, 10 * len(ip4(A_IN, B_IN, 200)))
        (sa,) = p["ike_sas"]
        assert sa["state"] == "established" and sa["initiator"] and sa["proposal"]
        (child,) = sa["children"]
        assert child["in_use"] and child["tx_packets"] == 10
        old_spi = child["spi_out"]
        # a child SA rekey: the counters go on where they were
        assert "rekeying 1 child SA" in await ask(a, "rekey", peer="b")
        for _ in range(100):
            await asyncio.sleep(0.02)
            now = a.show("b")["peers"]["b"]["ike_sas"][0]["children"]
            if any(c["in_use"] and c["spi_out"] != old_spi for c in now):
                break
        else:
            pytest.fail("the child SA was not rekeyed")
        await _ping(a, b, 5, 200)
        p = (await ask(a, "show", peer="b"))["peers"]["b"]
        assert (p["tx_packets"], p["tx_bytes"]) == (15, 15 * len(ip4(A_IN, B_IN, 200)))
        q = b.show()["peers"]["a"]
        assert (q["rx_packets"], q["rx_bytes"]) == (15, 15 * len(ip4(A_IN, B_IN, 200)))
        # a rekey of the IKE SA, on request
        assert "rekeying 1 IKE SA" in await ask(a, "rekey", peer="b", ike=True)
        with pytest.raises(ControlError, match="no peer 'zz'"):
            await ask(a, "show", peer="zz")
        with pytest.raises(ControlError, match="unknown command"):
            await ask(a, "frobnicate")
    finally:
        await a.stop()
        await b.stop()
    assert not (tmp_path / "a.sock").exists()  # removed at stop


async def test_terminate_holds_until_initiate_and_stop_sends_deletes(tmp_path: Path) -> None:
    a, b, _ = await _pair(tmp_path)
    try:
        assert "1 IKE SA(s) deleted" in await ask(a, "terminate", peer="b")
        for _ in range(100):  # B got the Delete, and A the answer
            if (b.show()["peers"]["a"]["state"] != "up"
                    and a.show()["peers"]["b"]["state"] == "held"):
                break
            await asyncio.sleep(0.02)
        assert b.show()["peers"]["a"]["ike_sas"] == []  # B got the Delete
        assert a.show()["peers"]["b"]["state"] == "held"
        assert await ask(a, "initiate", peer="b") == "initiating"
        await a.wait_up("b", timeout=10)
        await b.wait_up("a", timeout=10)
        await _ping(a, b)
        with pytest.raises(ControlError, match="no endpoint to initiate to"):
            await ask(b, "initiate", peer="a")
    finally:
        await a.stop()  # graceful: a Delete for its IKE SA, answered by B
        for _ in range(100):
            if not b.show()["peers"]["a"]["ike_sas"]:
                break
            await asyncio.sleep(0.02)
        assert b.show()["peers"]["a"]["ike_sas"] == []
        await b.stop()


async def test_reload_adds_removes_and_keeps_the_others(tmp_path: Path) -> None:
    a, b, b_path = await _pair(tmp_path)
    try:
        before = b.show()["peers"]["a"]["ike_sas"][0]
        # C appears in B's configuration, and a bad edit changes nothing
        good = b_path.read_text()
        b_path.write_text(good + _peer("c", "hostb", "hostc", C_IN, B_IN) + "bogus = 1\n")
        with pytest.raises(ControlError, match=r"nothing changed: .*bogus"):
            await ask(b, "reload")
        b_path.write_text(good + _peer("c", "hostb", "hostc", C_IN, B_IN))
        result = await ask(b, "reload")
        assert result == {"added": ["c"], "removed": [], "changed": [], "unchanged": ["a"],
                          "restart_needed": []}
        assert set(b.show()["peers"]) == {"a", "c"}
        after = b.show()["peers"]["a"]["ike_sas"][0]
        assert (after["spi_i"], after["spi_r"]) == (before["spi_i"], before["spi_r"])
        assert [c["spi_in"] for c in after["children"]] == [
            c["spi_in"] for c in before["children"]]
        await _ping(a, b)
        # A goes from B's configuration: its IKE SA is deleted, A hears of it
        b_path.write_text(good.split("[[peer]]")[0] + _peer("c", "hostb", "hostc", C_IN, B_IN))
        result = await ask(b, "reload")
        assert result["removed"] == ["a"] and result["unchanged"] == ["c"]
        for _ in range(100):
            if not a.show()["peers"]["b"]["ike_sas"]:
                break
            await asyncio.sleep(0.02)
        assert a.show()["peers"]["b"]["ike_sas"] == []  # B's Delete came
        assert a.show()["peers"]["b"]["state"] != "up"
    finally:
        await a.stop()
        await b.stop()


async def test_down_stops_the_node_and_a_second_endpoint_cannot_take_its_socket(
        tmp_path: Path) -> None:
    a, b, _ = await _pair(tmp_path)
    try:
        with pytest.raises(OSError, match="another nattunnel answers there"):
            await Node(dataclasses.replace(a.config, listen=(("127.0.0.1", 0),))).start()
        assert await ask(a, "down") == "stopping"
        await asyncio.wait_for(a.stop_requested.wait(), 5)
    finally:
        await a.stop()
        await b.stop()
    # a socket file left behind by an endpoint that is gone is replaced
    stale = tmp_path / "a.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))
    node = Node(a.config, serve_metrics=False)
    await node.start()
    try:
        assert (await ask(node, "show"))["peers"]["b"]["state"] in ("connecting", "waiting")
    finally:
        await node.stop()


async def test_the_nodes_metrics_endpoint_is_scraped_and_parsed(tmp_path: Path) -> None:
    """``metrics = "ADDRESS:PORT"`` in the configuration: the node serves the Prometheus
    text format there, which prometheus_client's own parser reads."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    a, b, b_path = await _pair(tmp_path)
    await b.stop()
    b_path.write_text('metrics = "127.0.0.1:0"\n' + b_path.read_text())
    b = Node(load_config(b_path))
    await b.start()
    try:
        await a.wait_up("b", timeout=15)
        await b.wait_up("a", timeout=15)
        await _ping(a, b, 3)
        assert b.metrics_server is not None
        host, port = b.metrics_server.address

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                body: bytes = r.read()
                return body.decode()

        families = {f.name: f for f in text_string_to_metric_families(
            await asyncio.to_thread(scrape))}
        (up,) = [s for s in families["nattunnel_peer_up"].samples if s.labels == {"peer": "a"}]
        assert up.value == 1.0
    finally:
        await a.stop()
        await b.stop()


async def test_reload_of_an_unchanged_certificate_peer_keeps_it_and_a_first_pool_is_refused(
        tmp_path: Path) -> None:
    """Two loads of one file with an ECDSA certificate peer compare equal (key objects of
    ``cryptography`` compare by identity: ``config.compare`` compares their public octets),
    so a reload leaves it alone; a reload that adds the first road-warrior peer (pools) to
    an endpoint started without one is refused, changing nothing."""
    from nattunnel.config.compare import comparable
    from nattunnel.lab.pki import Leaf, make_chain

    pki = make_chain(tmp_path / "pki", kind="ecdsa", leaves={"gw": Leaf("CN=gw", ("gw.lab",))})
    gw = pki.leaf["gw"]
    files = {"cert": gw.cert_path, "key": gw.key_path, "ca": pki.root.cert_path}
    write_psk_file(tmp_path / "k.psk", b"correct horse battery staple", force=True)
    cert_peer = "\n".join([
        "[[peer]]", 'name = "c"', 'auth = "pubkey"', 'local_id = "gw.lab"',
        'remote_id = "client.lab"', f'allowed_ips = ["{C_IN}/32"]',
        f'local_ts = ["{B_IN}/32"]', f'certs = ["{files["cert"]}"]',
        f'private_key = "{files["key"]}"', f'cacerts = ["{files["ca"]}"]']) + "\n"
    path = _config(tmp_path, "b", _free_port(), _peer("a", "hostb", "hosta", A_IN, B_IN)
                   + cert_peer)
    one, two = load_config(path), load_config(path)
    assert one.peers[1].ike is not None and two.peers[1].ike is not None
    assert one.peers[1].ike.private_key is not two.peers[1].ike.private_key
    assert comparable(one.peers[1]) == comparable(two.peers[1])
    b = Node(one)
    await b.start()
    try:
        result = await ask(b, "reload")
        assert result["changed"] == [] and result["unchanged"] == ["a", "c"]
        good = path.read_text()
        path.write_text(good.replace("[interface]", '[pools.rw]\naddrs = "198.18.200.0/30"\n'
                                                    "[interface]")
                        + _peer("d", "hostb", "hostd", C_IN, B_IN).replace(
                            f'allowed_ips = ["{C_IN}/32"]\n', 'pools = ["rw"]\n'))
        with pytest.raises(ControlError, match=r"first road-warrior peer .* needs a restart"):
            await ask(b, "reload")
        assert set(b.show()["peers"]) == {"a", "c"}
    finally:
        await b.stop()
