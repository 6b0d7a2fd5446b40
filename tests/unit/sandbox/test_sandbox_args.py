"""`failoverd sandbox` refuses the data-plane demo's options where they make no sense, before
starting anything (exit 2, a message naming the option)."""

from __future__ import annotations

import pytest

from orchestrator.sandbox.runner import EXIT_UNUSABLE, main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--control-plane-down"], "--control-plane-down goes with --demo"),
        (["--demo", "--arc-endpoints-down", "4"], "--arc-endpoints-down N (1-4)"),
        (["--demo", "--control-plane-down", "--arc-endpoints-down", "5"], "(1-4)"),
    ],
)
def test_data_plane_demo_options_are_checked_first(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_UNUSABLE
    assert says in capsys.readouterr().err


def test_the_new_faults_are_offered_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fault", "--help"])
    out = capsys.readouterr().out
    assert "control-plane-down" in out and "arc-endpoint-down" in out
