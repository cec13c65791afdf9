"""The I/O layer: the asyncio endpoint that moves bytes between UDP sockets (GSO and GRO), the
inner interface (a TUN device or the in-process interface) and the sans-I/O cores.

It feeds the cores, sends what they return and owns one timer per endpoint; it decides nothing
about packets. May import ``esp``, ``tunnel``, ``ike``, ``constants`` and ``addr``; never
``cli``, ``lab`` or ``bench``.
"""
