"""The hands: one module per AWS capability, each implementing :class:`~.base.Action`."""
