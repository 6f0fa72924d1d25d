"""The README's first section is what CI runs: one setup command (system packages and venv), the training command and
the test command; ``.ci/run`` calls the same setup script and then exactly the README's test command."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO_ROOT

SETUP = REPO_ROOT / "tools" / "setup.sh"


def _first_section_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## ", 2)[1]
    assert section.startswith("Fresh machine"), section[:60]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def test_the_first_section_is_setup_training_and_tests() -> None:
    assert _first_section_commands() == [
        "bash tools/setup.sh && . .venv/bin/activate",
        "python -m monai.bundle run training --config_file bundle/configs/train.json",
        "python -m pytest tests -q",
    ]


def test_ci_runs_the_setup_script_then_exactly_the_test_command() -> None:
    lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["bash tools/setup.sh --fresh", ". .venv/bin/activate", _first_section_commands()[-1]]


def test_the_setup_script_installs_what_the_tests_use() -> None:
    text = SETUP.read_text()
    assert "SYSTEM_PACKAGES=(orthanc orthanc-dicomweb chromium)" in text
    assert "pip install -q -r requirements.txt" in text
    assert subprocess.run(["bash", "-n", str(SETUP)], capture_output=True).returncode == 0
    checked = subprocess.run(["bash", str(SETUP), "--check"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr  # this machine ran the setup: the PACS and OHIF tests can run
    wrong = subprocess.run(["bash", str(SETUP), "--nope"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "usage" in wrong.stderr
