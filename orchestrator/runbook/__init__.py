"""The hands' schedule: runbook runs as journaled DAGs of idempotent steps, resumable after
a crash or a leader change, and timed against the RTO."""

from __future__ import annotations

from orchestrator.runbook.executor import Executor, NotLeader, RunRejected, new_run_id
from orchestrator.runbook.journal import JournalError, RunHeader, StepStatus
from orchestrator.runbook.retry import Backoff
from orchestrator.runbook.rto import RunProgress, StepProgress, progress_from_records

__all__ = [
    "Backoff",
    "Executor",
    "JournalError",
    "NotLeader",
    "RunHeader",
    "RunProgress",
    "RunRejected",
    "StepProgress",
    "StepStatus",
    "new_run_id",
    "progress_from_records",
]
