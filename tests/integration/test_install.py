"""scripts/install.sh into a temporary root: the wheel built with `python -m build`, its own
virtualenv under /opt (no extras), the command linked, the unit (checked with
`systemd-analyze verify`), sysusers and tmpfiles files (applied with systemd's own tools),
the example settings; the installed command works, and without the sandbox extra
`failoverd sandbox` says in one line how to get it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import __version__
from tests.fixtures.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/opt/failoverd"
INSTALL_TIMEOUT = 600  # a wheel build and the dependencies into a fresh virtualenv


@dataclass(frozen=True)
class Installed:
    root: Path
    output: str

    def path(self, final: str) -> Path:
        return self.root / final.lstrip("/")

    def failoverd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The installed command, through the installed interpreter (its #! line names the
        final /opt path, which this machine does not have)."""
        venv = self.path(PREFIX)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAILOVERD_", "AWS_"))}
        env["TMPDIR"] = str(self.root.parent)
        return subprocess.run(
            [str(venv / "bin" / "python"), str(venv / "bin" / "failoverd"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=ROOT,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("install") / "root"
    # The project's own interpreter has `build` (the dev extra); the virtualenv is based on
    # the same Python 3.11, as `python3` would be on the VM.
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
    yield Installed(root, result.stdout)


def test_the_layout_is_what_the_unit_and_the_docs_expect(installed: Installed) -> None:
    venv = installed.path(PREFIX)
    assert (venv / "pyvenv.cfg").is_file()
    assert str(installed.root) not in (venv / "pyvenv.cfg").read_text()
    # The command: linked for shells, its #! line the final path (the staged tree moves).
    link = installed.path("/usr/local/bin/failoverd")
    assert link.is_symlink() and os.readlink(link) == f"{PREFIX}/bin/failoverd"
    script = venv / "bin" / "failoverd"
    assert os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == f"#!{PREFIX}/bin/python"
    unit = installed.path("/etc/systemd/system/failoverd.service").read_text()
    assert f"ExecStart={PREFIX}/bin/failoverd run --config /etc/failoverd/failoverd.yaml" in unit
    shipped = (ROOT / "systemd" / "failoverd.service").read_text()
    assert unit == shipped.replace(
        "ExecStart=/usr/bin/failoverd ", f"ExecStart={PREFIX}/bin/failoverd "
    )
    for final, source, mode in (
        ("/usr/lib/sysusers.d/failoverd.conf", "failoverd.sysusers", 0o644),
        ("/usr/lib/tmpfiles.d/failoverd.conf", "failoverd.tmpfiles", 0o644),
        ("/etc/failoverd/failoverd.yaml", "failoverd.example.yaml", 0o640),
    ):
        installed_file = installed.path(final)
        assert installed_file.read_bytes() == (ROOT / "systemd" / source).read_bytes(), final
        assert installed_file.stat().st_mode & 0o777 == mode, final
    assert installed.path("/etc/failoverd/policies").is_dir()
    # A staged tree carries no secret: a package would give every host the same token.
    assert not installed.path("/etc/failoverd/api-token").exists()
    assert "systemctl daemon-reload && systemctl enable --now failoverd" in installed.output


def test_the_wheel_declares_its_license_as_an_spdx_expression(installed: Installed) -> None:
    (dist,) = installed.path(PREFIX).glob(
        f"lib/python3*/site-packages/failoverd-{__version__}.dist-info"
    )
    metadata = (dist / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata, metadata[:2000]
    # The status page travels as package data.
    (page,) = installed.path(PREFIX).glob(
        "lib/python3*/site-packages/orchestrator/api/static/status.html"
    )
    assert page.stat().st_size > 1000


def test_the_installed_unit_verifies_clean(installed: Installed, tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    # verify checks that ExecStart's binary exists: look for it in the installed tree.
    unit = installed.path("/etc/systemd/system/failoverd.service").read_text()
    copy = tmp_path / "failoverd.service"
    copy.write_text(unit.replace(f"ExecStart={PREFIX}/", f"ExecStart={installed.path(PREFIX)}/"))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "failoverd.service" not in result.stderr, result.stderr


def test_the_installed_sysusers_and_tmpfiles_make_the_user_and_folders(
    installed: Installed,
) -> None:
    sysusers = require_binary("systemd-sysusers")
    tmpfiles = require_binary("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("creating files owned by another user needs root")
    root = installed.root
    (root / "etc").mkdir(exist_ok=True)
    for argv in (
        [sysusers, f"--root={root}", str(installed.path("/usr/lib/sysusers.d/failoverd.conf"))],
        [
            tmpfiles,
            f"--root={root}",
            "--create",
            str(installed.path("/usr/lib/tmpfiles.d/failoverd.conf")),
        ],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
    entry = next(
        line
        for line in (root / "etc" / "passwd").read_text().splitlines()
        if line.startswith("failoverd:")
    )
    uid = int(entry.split(":")[2])
    state = installed.path("/var/lib/failoverd").stat()
    assert state.st_uid == uid and state.st_mode & 0o777 == 0o700


def test_the_installed_command_runs(installed: Installed) -> None:
    version = installed.failoverd("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"failoverd {__version__}"
    valid = installed.failoverd("validate", str(ROOT / "policies"))
    assert valid.returncode == 0, valid.stdout + valid.stderr


def test_without_the_sandbox_extra_the_sandbox_says_how_to_get_it_in_one_line(
    installed: Installed,
) -> None:
    python = installed.path(PREFIX) / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import moto"], capture_output=True, text=True, timeout=60, check=False
    )
    assert probe.returncode != 0, "moto is installed: this is not an install without extras"
    result = installed.failoverd("sandbox", "--port", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'failoverd[sandbox]'" in lines[0] and "Traceback" not in result.stderr
    assert result.stdout == ""
