"""The embedded AWS world for the sandbox and tests."""
