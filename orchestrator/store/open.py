"""Opening the state store the settings name: the one place that maps ``state.*`` to a
:class:`~orchestrator.store.base.Store`.

Neither backend needs its server up to open: SQLite creates its file, etcd connects lazily.
An unreachable store shows up in the first call, which the daemon retries (its readiness
says "the state store is not reachable" meanwhile), so a daemon started during an etcd
outage comes up and waits instead of exiting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.settings import EtcdSettings, StateSettings
from orchestrator.store.base import Store

if TYPE_CHECKING:
    from orchestrator.store.etcd import EtcdConfig


def etcd_config(etcd: EtcdSettings, timeout: float) -> EtcdConfig:
    """The etcd store's configuration; reads the password file now (SettingsError naming
    ``state.etcd.password_file`` when it is missing or empty)."""
    from orchestrator.store.etcd import EtcdConfig

    return EtcdConfig(
        endpoints=tuple(etcd.endpoints),
        prefix=etcd.prefix,
        timeout=timeout,
        ca_file=etcd.ca_file,
        cert_file=etcd.cert_file,
        key_file=etcd.key_file,
        username=etcd.username,
        password=etcd.password(),
    )


async def open_store(state: StateSettings, *, clock: Clock = SYSTEM_CLOCK) -> Store:
    """The store ``state`` describes, opened (raises StoreError when a SQLite file cannot be
    opened, SettingsError when a secret file cannot be read)."""
    if state.backend == "etcd":
        from orchestrator.store.etcd import EtcdStore

        return await EtcdStore.open(etcd_config(state.etcd, state.timeout))
    from orchestrator.store.sqlite import SqliteStore

    return await SqliteStore.open(state.path, timeout=state.timeout, clock=clock)


def describe(state: StateSettings) -> dict[str, object]:
    """Where the store is, for the log (no secret: endpoints carry no credentials)."""
    if state.backend == "etcd":
        return {
            "backend": "etcd",
            "endpoints": list(state.etcd.endpoints),
            "prefix": state.etcd.prefix,
        }
    return {"backend": "sqlite", "path": str(state.path)}
