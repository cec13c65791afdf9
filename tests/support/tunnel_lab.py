"""nattunnel endpoints in the NAT lab, for the root tests; the code is in nattunnel.lab.netns.

Host B (public, 198.18.0.2) is the hub; hosts A and C (behind the router's NAT) each have a
tunnel to B. Inner addresses: A 198.18.100.1, B 198.18.100.2, C 198.18.100.3.
"""

from __future__ import annotations

from nattunnel.lab.netns import INNER, SPI, Node, Tunnels, key_file, tun_present
from nattunnel.lab.netns import start_tunnels as start

__all__ = ["INNER", "SPI", "Node", "Tunnels", "key_file", "start", "tun_present"]
