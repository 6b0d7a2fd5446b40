"""The brain: health book, region verdicts and the pure ``decide()`` function."""
