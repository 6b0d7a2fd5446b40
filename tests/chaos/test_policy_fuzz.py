"""Policy fuzz: malformed policies (mutated examples, junk, size and alias attacks) are all
rejected with FILE:LINE:COL errors, nothing else escapes the loader, and a live daemon keeps
serving its last good set through every hot reload of them (docs/reliability.md, "Input
fuzz")."""

from __future__ import annotations

import json
import random
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.policy.loader import load_policy_set, load_policy_text
from orchestrator.policy.yamlsource import SourceError, SourceErrors
from tests.chaos.policy_corpus import MUTATIONS, Case, attacks, corpus, examples, junk, mutate
from tests.fixtures.clock import eventually
from tests.fixtures.controller import policy_text
from tests.fixtures.daemon import RUN, DaemonProcess

LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>[1-9]\d*):(?P<col>[1-9]\d*): ")
BATCH = 25  # malformed files per hot reload


def assert_located(errors: list[SourceError], file: str) -> None:
    assert errors
    for e in errors:
        if e.message.startswith("... and "):
            continue  # the count of errors left out of a flood
        assert e.file == file and e.line >= 1 and e.column >= 1, str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.integers(0, len(examples()) - 1),
    choices=st.lists(st.integers(0, MUTATIONS - 1), min_size=1, max_size=3, unique=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_mutated_example_is_rejected_with_located_errors(
    base: int, choices: list[int], seed: int
) -> None:
    text = mutate(examples()[base], choices, random.Random(seed))
    with pytest.raises(SourceErrors) as info:
        load_policy_text(text, "fuzz.yaml")
    assert_located(info.value.errors, "fuzz.yaml")


@settings(max_examples=150, deadline=None)
@given(kind=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_junk_is_rejected_with_located_errors(
    tmp_path_factory: pytest.TempPathFactory, kind: int, seed: int
) -> None:
    path = tmp_path_factory.mktemp("junk") / "junk.yaml"
    path.write_bytes(junk(random.Random(seed), kind))
    with pytest.raises(SourceErrors) as info:
        load_policy_set([path])
    assert_located(info.value.errors, str(path))


@pytest.mark.parametrize("case", attacks(), ids=lambda c: c.name)
def test_size_and_alias_attacks_are_rejected_with_located_errors(
    tmp_path: Path, case: Case
) -> None:
    path = tmp_path / "attack.yaml"
    path.write_bytes(case.content)
    with pytest.raises(SourceErrors) as info:
        load_policy_set([path])
    assert_located(info.value.errors, str(path))


# --- the live daemon ------------------------------------------------------------------------
def write_files(files: dict[str, Case]) -> None:
    for name, case in files.items():
        Path(name).write_bytes(case.content)


def remove_files(files: dict[str, Case]) -> None:
    for name in files:
        Path(name).unlink()


async def _get(api: str, path: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(api + path) as resp:
        return resp.status, await resp.json()


async def test_a_live_daemon_serves_its_last_good_set_through_every_fuzzed_reload(
    tmp_path: Path,
) -> None:
    cases = corpus(seed=1301, structural=170, junk_count=60)  # + the attacks: 250 files
    assert len(cases) >= 250
    policies = tmp_path / "policies"
    policies.mkdir()
    good = policy_text(interval="1s", timeout="500ms", staleness="1m")
    (policies / "shop.yaml").write_text(good)
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        f"node_id: fuzz\npolicies: [{policies}]\nstate: {{path: {tmp_path / 'state.db'}}}\n"
        "http: {port: 0}\nlog: {format: json}\n"
    )
    async with DaemonProcess.start([*RUN, "--config", str(config)]) as daemon:
        api = await daemon.listening()
        await eventually(lambda: bool(daemon.events("daemon_ready")), "daemon_ready", 30)
        _, status = await _get(api, "/v1/status")
        version = status["policy_version"]
        rejected: set[str] = set()
        for start in range(0, len(cases), BATCH):
            batch = cases[start : start + BATCH]
            files = {str(policies / f"fuzz-{start + i:03d}.yaml"): c for i, c in enumerate(batch)}
            write_files(files)
            mark = len(daemon.lines)
            daemon.proc.send_signal(signal.SIGHUP)

            def located(mark: int = mark) -> set[str]:
                found = set()
                for line in daemon.lines[mark:]:
                    if '"policy_error"' in line:
                        match = LOCATED.match(json.loads(line)["error"])
                        if match:
                            found.add(match["file"])
                return found

            await eventually(
                lambda files=files: set(files) <= located(), "every file's located error", 60
            )
            await eventually(
                lambda mark=mark: any('"policy_reload_failed"' in x for x in daemon.lines[mark:]),
                "the reload to fail",
                30,
            )
            rejected |= set(files)
            assert daemon.proc.returncode is None, daemon.tail()
            ready, _ = await _get(api, "/readyz")
            code, status = await _get(api, "/v1/status")
            assert (ready, code, status["policy_version"]) == (200, 200, version)
            assert [s["name"] for s in status["services"]] == ["shop"]  # type: ignore[index]
            remove_files(files)
            mark = len(daemon.lines)
            daemon.proc.send_signal(signal.SIGHUP)
            await eventually(
                lambda mark=mark: any('"policy_reloaded"' in x for x in daemon.lines[mark:]),
                "the good set to load again",
                30,
            )
        assert len(rejected) == len(cases)
        # After all that, a good change still goes in.
        (policies / "shop.yaml").write_text(good.replace("rto: 15m", "rto: 20m"))
        mark = len(daemon.lines)
        daemon.proc.send_signal(signal.SIGHUP)
        await eventually(
            lambda: any('"policy_reloaded"' in x for x in daemon.lines[mark:]), "a good reload", 30
        )
        _, status = await _get(api, "/v1/status")
        assert status["policy_version"] != version
    assert daemon.returncode == 0, daemon.tail()
    assert not [line for line in daemon.lines if "Traceback" in line]
    assert all(line.startswith("{") for line in daemon.lines if line), "one JSON event per line"
