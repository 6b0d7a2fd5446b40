"""The eyes: probes, AWS Health, CloudWatch alarms, replication lag, remote agents.

Every source turns what it sees into :class:`~orchestrator.engine.observation.Observation`
records pushed into an :class:`~orchestrator.signals.base.ObservationSink`.
"""
