"""The layout's promises: import-linter's contracts (pyproject.toml) hold, and shared modules stay small."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from shared.config import PROJECT_ROOT

MAX_SHARED_MODULE_LINES = 400  # "a few hundred": the formatter at 120 columns spreads the settings and the store
REQUIRED_CONTRACT_TYPES = {"acyclic_siblings", "layers", "forbidden"}


def test_every_import_contract_is_kept():
    contracts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert REQUIRED_CONTRACT_TYPES <= {contract["type"] for contract in contracts}
    # its own process: import-linter reconfigures logging, which other tests read
    linter = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
    ]
    result = subprocess.run([*linter, "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout


def test_no_module_in_shared_is_over_400_lines():
    sizes = {
        str(path.relative_to(PROJECT_ROOT)): len(path.read_text().splitlines())
        for path in (PROJECT_ROOT / "shared").rglob("*.py")
    }
    assert sizes, "found no modules in shared/"
    assert {name: lines for name, lines in sizes.items() if lines > MAX_SHARED_MODULE_LINES} == {}


def test_shared_has_no_module_at_its_top_but_the_settings_and_the_constants():
    top = sorted(path.name for path in (PROJECT_ROOT / "shared").glob("*.py"))
    assert top == ["__init__.py", "config.py", "digits.py"]
