"""The I/O layer: the asyncio endpoint that moves bytes between UDP sockets (GSO and GRO), the
inner interface (a TUN device or the in-process interface) and the sans-I/O cores.

It feeds the cores, sends what they return and owns one timer per endpoint; it decides nothing
about packets. The modules: ``endpoint`` (the endpoint and its timer) with ``ikeside`` (its
IKE side: the port-500 sockets, IKE behind the non-ESP marker, our address towards a peer),
``receive`` and
``send`` (the two per-packet paths), ``udp`` and ``sockfilter`` (the sockets), ``tun``,
``coalesce`` and ``interface`` (the inner interface), ``relay`` (TURN-relayed peers and the
move between relay and direct path), ``mediated`` (IKEv2 mediation beside the IKE manager),
``vip`` (a road-warrior client's addresses, routes and DNS on the host), ``netwatch`` (local
address changes from rtnetlink).

May import ``esp``, ``tunnel``, ``ike``, ``traversal``, ``constants`` and ``addr``; never
``cli``, ``lab`` or ``bench``.
"""
