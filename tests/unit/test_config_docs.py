"""The committed .env.example and the settings table of docs/configuration.md are what the declarations in
shared/config.py generate (docs/gen_config.py), so that a setting added, changed or removed there cannot be
forgotten in either."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from shared import config
from shared.config import PROJECT_ROOT
from tests.support import docs_generators


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return docs_generators.load("gen_config")


def test_env_example_is_generated_from_the_declarations(generator):
    assert (PROJECT_ROOT / ".env.example").read_text() == generator.env_example(), (
        ".env.example differs from the declarations in shared/config.py; regenerate it with: python docs/gen_config.py"
    )


def test_the_configuration_table_is_generated_from_the_declarations(generator):
    page = generator.PAGE.read_text()
    assert page == generator.page_with_table(page), (
        "the table in docs/configuration.md differs from the declarations in shared/config.py;"
        " regenerate it with: python docs/gen_config.py"
    )


def test_every_setting_is_documented_with_a_type_and_a_description(generator):
    rows = generator.declarations()
    assert len(rows) == len(config.Settings.model_fields)
    for variable, kind, _, _, description in rows:
        assert variable.isupper() and kind and description and description != "None", variable
    assert len({variable for variable, *_ in rows}) == len(rows)


def test_the_generated_files_name_no_path_of_this_machine(generator):
    assert str(PROJECT_ROOT) not in generator.env_example() + generator.markdown_table()


def test_uncommenting_a_line_of_the_example_at_its_default_changes_nothing(generator):
    values = {variable: default for variable, _, default, _, _ in generator.declarations()}
    loaded, defaults = config.load_settings(values).model_dump(), config.Settings().model_dump()
    # Paths are shown relative to the project, so they are read relative to where the process runs.
    assert {name: value for name, value in loaded.items() if not isinstance(value, Path)} == {
        name: value for name, value in defaults.items() if not isinstance(value, Path)
    }
