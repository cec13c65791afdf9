"""The tunnel core, sans-I/O: peers, routes by inner prefix, SAs by SPI, NAT rebinding, NAT
keepalives, and the deadline heap every core keeps its timers in.

May import ``nattunnel.esp``, ``nattunnel.constants`` and ``nattunnel.addr``; never ``ike``,
``io``, ``cli``, ``lab`` or ``bench``.
"""
