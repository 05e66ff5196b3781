"""Safe fleet model updates: find, download, verify, switch, hot-swap, health-check, roll back.

Sources (``--source`` or the ``[update]`` config), in :mod:`.sources`:

* ``local:DIR`` / ``update.local_dir`` -- a USB stick or rsync target holding bundles
  (``.tar.gz`` or directories) and optionally the same ``index.json`` a server has;
* ``https://host/path/`` / ``update.url`` -- serves ``index.json``::

      {"channels": {"stable": {"version": "1.2.0", "url": "tiny-1.2.0.tar.gz",
                               "sha256": "...", "size": 123456},
                    "beta":   {...}},
       "versions": {"1.1.0": {...}, ...}}        # optional: lets a command name any version

  (``url`` may be relative to the index) plus the bundles themselves;
* an MQTT command on ``<prefix>/<device>/cmd/update`` (:mod:`.commands`) naming a version
  (looked up in the configured source) or a URL (only under ``update.allowed_base_urls``),
  obeyed only when signed by a trusted fleet key, addressed to the device and fresh
  (:mod:`.command_auth`, checked in :mod:`.attach`; ``sonotrap command sign`` makes one).

An older version than ``current`` is refused unless the operator allows it
(``update.allow_downgrade`` or ``sonotrap update --allow-downgrade``). A daemon start whose
``current`` does not load falls back to ``previous`` (:mod:`.startup`).

The procedure (:mod:`.procedure`) never leaves the device without a working model: the new
bundle is downloaded (:mod:`.download`), verified (sha256, ed25519 signature against the
device's trusted keys, load + self-test in a separate process) *before* the ``current`` link
moves; after the switch the daemon hot-swaps between two hops (:mod:`.daemon_control`: SIGHUP,
or ``Daemon.request_model_swap`` in-process) and must report the new version with hops
advancing within ``update.health_timeout_s``, otherwise the previous model is switched back
and swapped in again. Every step is reported as an event (:mod:`.events` out of process,
:mod:`.attach` in the daemon) and the outcome is kept in ``<state_dir>/update-status.json``
(:mod:`.status`).
"""
