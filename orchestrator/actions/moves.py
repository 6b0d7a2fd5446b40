"""What a run knows about the move it makes, and the one rule for "may this move lose data".

**Run facts.** Every run carries a small set of facts (JSON, journaled with the run's plan,
so a resumed run sees the same ones) that reach every step as ``ctx.facts``. The daemon's
controller fills them from the decision that started the run; drills and tests build them
with :func:`run_facts` too:

=========================  ===============================================================
``kind``                   ``failover``, ``switchover`` or ``failback``
``drill``                  True for a drill (a rehearsal: always planned)
``source_region``          the region being left
``source_verdict``         its verdict when the run was decided (``healthy``, ``degraded``,
                           ``down``, ``unknown``), or None when nobody judged it
``source_down``            ``source_verdict == "down"``
``target_lag_seconds``     the target's last replication-lag reading (None: unknown)
``target_lag_age_seconds`` how old that reading was when the run was decided
=========================  ===============================================================

**Graceful or not.** :func:`move_style` is the one place that decides whether a move must be
*graceful* (lose nothing: wait for replicas to catch up, swap roles cleanly) or may be
*ungraceful* (promote what is there now; writes not yet replicated are lost). Actions with
both flavours ask it: ``aurora.global_failover``'s ``auto`` mode picks
SwitchoverGlobalCluster or FailoverGlobalCluster by it, and ARC Region switch picks graceful
or ungraceful execution by it. The rule:

* a planned move — a switchover, a failback, any drill — is graceful: it must never lose
  data, and the source is there to hand over;
* a failover is ungraceful when the source region is down, or when the daemon cannot tell
  (its verdict unknown, or no facts at all): the region that must take part in a graceful
  handover is the one that failed;
* a failover while the source is still healthy or only degraded (an operator moving away
  from a region that still answers) is graceful: nothing forces the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.policy.durations import format_duration

if TYPE_CHECKING:
    from orchestrator.actions.base import StepContext

KIND = "kind"
DRILL = "drill"
SOURCE_REGION = "source_region"
SOURCE_VERDICT = "source_verdict"
SOURCE_DOWN = "source_down"
TARGET_LAG = "target_lag_seconds"
TARGET_LAG_AGE = "target_lag_age_seconds"

FAILOVER, SWITCHOVER, FAILBACK = "failover", "switchover", "failback"
PLANNED_KINDS = frozenset({SWITCHOVER, FAILBACK})
_UNGRACEFUL_VERDICTS = frozenset({"down", "unknown"})


def run_facts(
    kind: str,
    *,
    drill: bool = False,
    source_region: str | None = None,
    source_verdict: str | None = None,
    target_lag_seconds: float | None = None,
    target_lag_age_seconds: float | None = None,
) -> dict[str, Any]:
    """The facts of one run, as JSON values (see the module docstring)."""
    return {
        KIND: kind,
        DRILL: drill,
        SOURCE_REGION: source_region,
        SOURCE_VERDICT: source_verdict,
        SOURCE_DOWN: source_verdict == "down",
        TARGET_LAG: target_lag_seconds,
        TARGET_LAG_AGE: target_lag_age_seconds,
    }


@dataclass(frozen=True, slots=True)
class MoveStyle:
    """How a move must be made: ``graceful`` (no data loss) or not, and why, in words for
    the journal."""

    graceful: bool
    reason: str


def move_style(kind: str, facts: Mapping[str, Any]) -> MoveStyle:
    """Graceful or ungraceful for a run of ``kind`` with ``facts`` (see the module
    docstring for the rule). Pure; missing facts count as "the daemon cannot tell"."""
    if facts.get(DRILL) is True:
        return MoveStyle(True, f"a drill ({kind}) is a planned move: no data may be lost")
    if kind in PLANNED_KINDS:
        return MoveStyle(True, f"a {kind} is a planned move: no data may be lost")
    source = facts.get(SOURCE_REGION) or "the source region"
    verdict = facts.get(SOURCE_VERDICT)
    if verdict is None and facts.get("source_healthy") is True:
        verdict = "healthy"  # the one fact runs journaled before run_facts existed had
    lag = _lag_words(facts)
    if verdict is None or verdict in _UNGRACEFUL_VERDICTS:
        state = "down" if verdict == "down" else "of unknown health"
        return MoveStyle(
            False,
            f"failover with {source} {state}: writes not yet replicated may be lost{lag}",
        )
    return MoveStyle(True, f"failover with {source} still {verdict}: nothing forces data loss{lag}")


def _lag_words(facts: Mapping[str, Any]) -> str:
    lag, age = facts.get(TARGET_LAG), facts.get(TARGET_LAG_AGE)
    if not isinstance(lag, int | float) or isinstance(lag, bool):
        return " (the target's replication lag was unknown)"
    words = f" (the target's last lag reading: {format_duration(lag)}"
    if isinstance(age, int | float) and not isinstance(age, bool):
        words += f", {format_duration(age)} old"
    return words + ")"


def move_style_of(ctx: StepContext) -> MoveStyle:
    """:func:`move_style` for a step: its run's kind and facts (the source region taken
    from the step when the facts do not name it)."""
    return move_style(ctx.kind, {SOURCE_REGION: ctx.source_region, **dict(ctx.facts)})
