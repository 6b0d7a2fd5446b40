"""Small parts of the daemon: source supervision, policy reload, the systemd notifier.

Kept apart from :mod:`orchestrator.daemon` (the wiring) so each can be tested alone.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from orchestrator.clock import Clock
from orchestrator.controller import Controller
from orchestrator.policy.loader import PolicySet, load_policy_set, policy_files
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.telemetry import POLICY_RELOADS, SOURCE_RESTARTS, get_logger

log = get_logger("failoverd.daemon")


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    clock: Clock,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    rng: random.Random | None = None,
) -> None:
    """Run ``run()`` until cancelled, restarting it after a crash (or an unexpected return)
    with exponential backoff and full jitter; a source that ran longer than ``cap`` starts
    its backoff afresh. Nothing but cancellation escapes."""
    rng = rng or random.Random()
    failures = 0
    while True:
        started = clock.monotonic()
        try:
            await run()
            log.warning("signal_source_returned", source=name)
        except Exception as exc:
            log.error("signal_source_crashed", source=name, error=repr(exc), exc_info=True)
        SOURCE_RESTARTS.labels(source=name).inc()
        if clock.monotonic() - started > cap:
            failures = 0
        failures += 1
        delay = rng.uniform(0, min(cap, base * 2**failures))
        log.info("signal_source_restarting", source=name, delay=round(delay, 3))
        await clock.sleep(delay)


def try_load(paths: Sequence[str]) -> PolicySet | None:
    """Load the whole set; on error log every one (file:line, as ``validate`` prints
    them) and return None."""
    try:
        return load_policy_set(paths)
    except SourceErrors as exc:
        for error in exc.errors:
            log.error("policy_error", error=str(error))
        return None
    except OSError as exc:
        log.error("policy_error", error=f"{exc.filename}: {exc.strerror}")
        return None


async def reload_policies(controller: Controller, paths: Sequence[str], why: str) -> bool:
    """Validate the set fully and swap it in, or keep the old one. True when swapped."""
    new = try_load(paths)
    if new is None:
        POLICY_RELOADS.labels(outcome="failure").inc()
        log.error("policy_reload_failed", why=why, kept_version=controller.policy_version)
        return False
    old = controller.policy_version
    await controller.swap(new)
    POLICY_RELOADS.labels(outcome="success").inc()
    log.info("policy_reloaded", why=why, old_version=old, version=new.version)
    return True


def policy_mtimes(paths: Iterable[str]) -> dict[str, float]:
    """Modification times of the policy files (and folders: a new file changes them)."""
    out: dict[str, float] = {}
    for raw in [*paths, *(str(f) for f in policy_files(paths))]:
        try:
            out[raw] = Path(raw).stat().st_mtime
        except OSError:
            out[raw] = -1.0
    return out
