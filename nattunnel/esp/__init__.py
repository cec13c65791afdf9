"""ESP, RFC 4303, in RFC 3948 UDP: suites, security associations, the replay window, UDP
framing and drop reasons.

The bottom layer of the data plane. It may import ``nattunnel.constants`` and
``nattunnel.addr`` only: nothing here knows about peers, IKE, sockets or asyncio.
"""
