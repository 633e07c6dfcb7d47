"""The README against the code: its diagrams, configuration table and code map stay true."""
import ast
import re
import textwrap

import pytest

import pools
from config import Config
from dev.harness import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
README_LIMIT_BYTES = 10 * 1024


def readme_section(title):
    """The text of the README's `## title` section."""
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def readme_blocks():
    """The README's ```text blocks."""
    return re.findall(r"```text\n(.*?)```", README, re.S)


def indented_block(docstring):
    """The diagram of a docstring: from its first to its last line indented by four spaces."""
    lines = docstring.splitlines()
    indented = [i for i, line in enumerate(lines) if line.startswith("    ")]
    return textwrap.dedent("\n".join(lines[indented[0]:indented[-1] + 1]) + "\n")


def module_docstring(path):
    """The docstring of a Python file that cannot be imported by name (gunicorn.conf.py)."""
    return ast.get_docstring(ast.parse((ROOT / path).read_text()), clean=False)


@pytest.mark.parametrize("docstring", [pools.__doc__, module_docstring("gunicorn.conf.py")],
                         ids=["pools.py", "gunicorn.conf.py"])
def test_readme_diagrams_are_the_code_s(docstring):
    assert indented_block(docstring) in readme_blocks()


def test_the_configuration_table_lists_every_setting_and_no_other():
    settings = {name for name in vars(Config) if name.isupper()}
    table = readme_section("Configuration")
    listed = {name for row in table.splitlines() if row.startswith("| `")
              for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    assert listed == settings


def test_the_code_map_names_every_module_and_only_files_that_exist():
    code_map = readme_section("Code map and process tree")
    modules = {path.relative_to(ROOT) for path in ROOT.glob("*.py")}
    modules |= {path.relative_to(ROOT) for folder in ("serving", "dev", "deploy")
                for path in (ROOT / folder).glob("*.py") if path.name != "__init__.py"}
    for module in modules:
        assert f"`{module.name}`" in code_map, module
    for name in re.findall(r"`([\w/]+(?:\.py|/))`", code_map):
        found = list(ROOT.glob(name)) or list(ROOT.glob(f"*/{name}"))
        assert found, name


def test_the_readme_stays_short():
    assert len(README.encode()) <= README_LIMIT_BYTES
