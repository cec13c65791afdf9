"""NAT traversal, sans-I/O: what it takes to reach a peer behind NAT.

- ``stun``: STUN (RFC 8489) Binding transactions on the tunnel's own UDP socket (the message
  format from aioice's ``stun`` module; retransmissions here, on an explicit ``now``), and the
  reflexive address they learn;
- ``netcheck``: the NAT's behaviour (RFC 4787 mapping and filtering, RFC 5780 tests),
  classified from STUN answers.

Like the other cores these are plain classes fed datagrams and the time and pulled for
datagrams to send, events and the next deadline; the asyncio layer (``nattunnel.io``, the
``netcheck`` command) moves the bytes. May import ``nattunnel.constants`` and
``nattunnel.addr``; never ``io``, ``cli``, ``lab`` or ``bench``.
"""
