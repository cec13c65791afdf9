"""IKEv2, RFC 7296, sans-I/O: the message codec, key derivation, proposals, the IKE SA state
machine and the manager that keeps IKE SAs by SPI and installs their child SAs in a tunnel.

- ``message``: the codec (section 3), one class per payload; ``crypto``: key exchange, PRF+,
  key derivation and AUTH; ``keylog``: the Wireshark key log;
- ``config``: what one IKE peer is configured with (identities, lifetimes); ``proposals``:
  picking and offering proposals, narrowing traffic selectors; ``grammar``: proposals as
  strongSwan writes them (``aes256gcm16-prfsha256-x25519``);
- the IKE SA, one class split by exchange: ``base`` (state, request kinds, sending, keys),
  ``child`` (child SAs and their rekeys), ``initial`` (IKE_SA_INIT, IKE_AUTH), ``rekey`` (IKE
  SA rekeys), ``sa`` (``IkeSa``: dispatch tables, INFORMATIONAL, timers); ``events``: what it
  hands out;
- ``manager``: ``IkeManager``, the IKE SAs of one endpoint and what their events mean for the
  tunnel, with ``exchanges`` (messages counted by exchange type, the responder's CERTREQ),
  ``pending`` (what it holds between calls) and ``droplog`` (rate-limited DEBUG lines for
  messages dropped before an IKE SA); ``ratelimit``: the token buckets in front of
  IKE_SA_INIT; ``cookies``: the stateless cookies of section 2.6;
- ``mobike``, ``mobility``: MOBIKE (RFC 4555) and address moves; ``fragment``: IKE
  fragmentation (RFC 7383: splitting, reassembly and its bounds);
- ``certs``: X.509 for IKE (certificate and CRL files, the trust store, identities against
  certificates, DNs as strongSwan writes them); ``certauth``: CERT and CERTREQ in IKE_AUTH;
- ``pool``: virtual-address pools; ``roadwarrior``: the manager of a gateway or client that
  hands out or takes addresses by configuration payload (section 3.15); ``templates``: one
  peer configuration for many clients (``remote_id`` patterns such as ``%any``);
- IKEv2 mediation (draft-brunner-ikev2-mediation, as strongSwan speaks it): ``mediation``
  (the IKE SA to a mediation server, ME_CONNECT), ``meserver`` (the server and the mediated
  peer's client), ``mecheck`` (the connectivity checks).

Every core follows the contract of ``nattunnel.tunnel``: fed datagrams and the time with an
explicit ``now``, pulled for ``datagrams_to_send()``, ``next_event()`` and ``get_timer()``.

May import ``nattunnel.tunnel``, ``nattunnel.esp``, ``nattunnel.constants`` and
``nattunnel.addr``; never ``io``, ``cli``, ``lab`` or ``bench``.
"""
