"""The operator's side of a running endpoint: what it reports and how it is steered.

- ``status``: the status as data (``nattunnel show --json``, ``Node.show()``, the metrics),
  built from the cores and the endpoint at one ``now``;
- ``protocol``: the control socket's protocol (one JSON object per line each way) and its
  client (what ``nattunnel show``, ``initiate``, ``terminate``, ``rekey``, ``reload`` and
  ``down`` speak);
- ``server``: the control socket itself (a Unix socket, mode 0600), which hands each request
  to the application;
- ``metrics``: the Prometheus text endpoint (``prometheus_client``), from the status;
- ``text``: the status as ``nattunnel show`` prints it.

Nothing here decides anything about packets or SAs: the requests go to ``nattunnel.app``,
which owns the cores. May import ``nattunnel.io``, ``nattunnel.ike``, ``nattunnel.tunnel``,
``nattunnel.esp``, ``nattunnel.config``, ``nattunnel.constants`` and ``nattunnel.addr``;
never ``app``, ``cli``, ``lab`` or ``bench``.
"""
