"""IKEv2, RFC 7296, sans-I/O: the message codec, key derivation, proposals, the IKE SA state
machine and the manager that keeps IKE SAs by SPI and installs their child SAs in a tunnel.

May import ``nattunnel.tunnel``, ``nattunnel.esp``, ``nattunnel.constants`` and
``nattunnel.addr``; never ``io``, ``cli``, ``lab`` or ``bench``.
"""
