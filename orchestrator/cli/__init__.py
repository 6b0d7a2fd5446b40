"""The ``failoverd`` command: policy tools and the entry point (``main``), and the operator
commands that talk to a running daemon's API (``operator``)."""
