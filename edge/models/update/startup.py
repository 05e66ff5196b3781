"""Starting the daemon on the model store: a broken ``current`` falls back to ``previous``.

If the model ``current`` names cannot be loaded (a bundle damaged on disk, or one that passed
verification but fails in the daemon), exiting would make systemd restart the daemon into
the same failure forever. Instead the start switches the store back to ``previous``, records
the failure (so automatic updates do not re-install that version) and says so: a
``model_fallback`` event and ``last_update`` in the status.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge.config import Config
from edge.errors import SonotrapError
from edge.models.bundle import ModelBundle, load_bundle
from edge.models.store import CURRENT, ModelStore, store_root
from edge.models.update.status import UpdateResult, UpdateStatus

log = logging.getLogger(__name__)


def load_startup_bundle(cfg: Config, path: str | Path) -> tuple[ModelBundle, dict | None]:
    """(the bundle to run, a fallback note or None); SonotrapError if nothing loads.

    Falls back only when ``path`` is the store's ``current`` link and ``previous`` exists; an
    explicitly configured bundle elsewhere fails as before (the operator chose it).
    """
    try:
        return load_bundle(path), None
    except (SonotrapError, MemoryError, OSError) as err:
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, SonotrapError) else str(err)
        store = ModelStore(store_root(cfg.state_dir))
        if os.path.abspath(path) != os.path.abspath(store.root / CURRENT) or store.previous() is None:
            raise
        broken, prev = store.current(), store.previous()
        assert prev is not None
        log.error("model %s cannot be loaded (%s); falling back to the previous model %s",
                  broken.version if broken else "?", reason[:300], prev.version)
        bundle = load_bundle(store.root / prev.dirname)
        old, new = store.rollback()
        status = UpdateStatus(cfg.state_dir)
        status.block(old.version, f"failed to load at daemon start: {reason[:300]}")
        res = UpdateResult("rolled-back", version=old.version, previous=new.version, source="startup",
                           reason=f"model {old.version} failed to load at start ({reason[:300]}); now running {new.version}")
        status.finish(res, store.current(), store.previous())
        return bundle, {"from": old.version, "to": new.version, "reason": reason[:300]}
