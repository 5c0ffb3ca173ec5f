"""The README's ten-minute tour, run as a reader would: every ```bash block of its tour section, in
order, in one shell, against a real embedded stack (``python -m stack up``, as ``./run up`` starts it).

The stack gets a private folder and web port, so the test never meets a stack someone left running.
The blocks share one bash process, as they share the reader's terminal (``eval "$(./run env)"``,
``$JOB``); the first command that exits non-zero fails the test, naming the block and the command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stack.processes import free_port
from tests.integration.test_stack import running_stack, stack_env
from tests.support.services import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
TOUR_HEADING = "## A ten-minute tour"
TOUR_SECONDS = 300
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def tour_section(text: str) -> str:
    """From the tour's heading to the next heading of the same level."""
    start = text.index(TOUR_HEADING)
    following = text.find("\n## ", start + len(TOUR_HEADING))
    return text[start : following if following != -1 else len(text)]


def tour_blocks(text: str) -> list[str]:
    return BASH_BLOCK.findall(tour_section(text))


def tour_script(blocks: list[str]) -> str:
    """One script, the blocks in order; the first failure is named with its block and command."""
    lines = [
        "set -eo pipefail",
        "trap 'echo \"README tour: block $TOUR_BLOCK failed at: $BASH_COMMAND (exit $?)\" >&2' ERR",
    ]
    for number, block in enumerate(blocks, start=1):
        lines += [f"TOUR_BLOCK={number}", f"echo '--- block {number}'", block.rstrip("\n")]
    return "\n".join(lines) + "\n"


def test_the_tour_section_has_shell_blocks():
    blocks = tour_blocks(README.read_text())
    assert len(blocks) >= 4, "the README's tour lost its ```bash blocks"
    assert all(block.strip() for block in blocks)


def test_a_block_that_fails_names_itself():
    script = tour_script(["true", "false\necho never"])
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "block 2 failed at: false" in done.stderr and "never" not in done.stdout


@pytest.mark.skipif(
    not (PROJECT_ROOT / ".venv" / "bin" / "activate").exists(), reason="the tour activates .venv: run ./run setup first"
)
def test_every_command_of_the_readme_tour_runs_against_the_embedded_stack():
    script = tour_script(tour_blocks(README.read_text()))
    # Not under pytest's tmp_path: a pytest session started meanwhile makes its root 0700 again, and
    # the embedded PostgreSQL runs as a user of its own that must reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="mnistq-tour-"))
    folder.chmod(0o755)
    env = {**stack_env(folder / "stack"), "WEB_PORT": str(free_port()), "WORKER_METRICS_PORT": "0"}
    # `python` in the blocks is this interpreter's, as `. .venv/bin/activate` makes it for a reader
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        with running_stack(env, "--workers", "1"):
            done = subprocess.run(
                ["bash", "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=TOUR_SECONDS
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    output = done.stdout + done.stderr
    (PROJECT_ROOT / "test-artifacts").mkdir(exist_ok=True)
    (PROJECT_ROOT / "test-artifacts" / "readme-tour.log").write_text(output)
    assert done.returncode == 0, f"a README tour command failed (exit {done.returncode}):\n{output[-6000:]}"
    assert "accuracy:" in done.stdout  # the report printed
    assert '"label"' in done.stdout  # the upload was answered
