"""The README against the code: its diagrams, configuration table and code map stay true; and
requirements.txt is what the service imports, the Dask client apart, and every lock pins it all."""
import ast
import importlib.metadata
import re
import sys
import textwrap

import pytest

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


@pytest.mark.parametrize("path", ["runtime/fanout.py", "runtime/cpu_queue.py", "gunicorn.conf.py"])
def test_readme_diagrams_are_the_code_s(path):
    assert indented_block(module_docstring(path)) in readme_blocks()


def test_the_configuration_table_lists_every_setting_and_no_other():
    settings = {name for name in vars(Config) if name.isupper()}
    table = readme_section("Configuration")
    listed = {name for row in table.splitlines() if row.startswith("| `")
              for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    assert listed == settings


def test_the_code_map_names_every_module_and_only_files_that_exist():
    code_map = readme_section("Code map and process tree")
    modules = {path.relative_to(ROOT) for path in ROOT.glob("*.py")}
    modules |= {path.relative_to(ROOT) for folder in ("runtime", "dev", "deploy")
                for path in (ROOT / folder).glob("*.py") if path.name != "__init__.py"}
    for module in modules:
        assert f"`{module.name}`" in code_map, module
    for name in re.findall(r"`([\w/]+(?:\.py|/))`", code_map):
        found = list(ROOT.glob(name)) or list(ROOT.glob(f"*/{name}"))
        assert found, name


def test_the_readme_stays_short():
    assert len(README.encode()) <= README_LIMIT_BYTES


SERVICE_FILES = ["app.py", "config.py", "pools.py", "pages.py", "openapi.py", "telemetry.py",
                 "gunicorn.conf.py", "services/*.py", "runtime/*.py"]
LOCAL = {"app", "config", "pools", "pages", "openapi", "telemetry", "services", "runtime", "dev"}
LOADED_BY_URL = {"psycopg2-binary"}  # SQLAlchemy imports it for a postgresql:// URL
DASK_ONLY = {"distributed", "cloudpickle"}  # runtime/dask_executor.py, for CPU_EXECUTOR=dask://
CHECKER_ONLY = {"_typeshed"}  # the stdlib's stubs, imported under TYPE_CHECKING for mypy alone


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def service_imports():
    """The distributions whose modules the service's own files import."""
    modules = set()
    for pattern in SERVICE_FILES:
        for path in ROOT.glob(pattern):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    modules -= set(sys.stdlib_module_names) | LOCAL | CHECKER_ONLY
    return {_normal(dist) for module in modules for dist in distributions[module]}


def pinned(name):
    """The distributions a requirements file pins itself (not those of its -r files)."""
    return {_normal(line.split("==")[0]) for line in (ROOT / name).read_text().splitlines()
            if "==" in line and not line.startswith("#")}


def locked(name):
    """The distributions a lock pins, each with at least one hash."""
    text = (ROOT / name).read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==\S+((?: \\\n    --hash=sha256:[0-9a-f]{64})+)",
                         text, re.M)
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9_.-]+==", text, re.M)), name
    return {_normal(dist) for dist, _ in entries}


def test_requirements_txt_is_what_the_service_imports_and_dask_apart():
    # The Dask client is imported only for CPU_EXECUTOR=dask://: requirements-dask.txt.
    assert pinned("requirements.txt") - LOADED_BY_URL == service_imports() - DASK_ONLY
    assert pinned("requirements-dask.txt") == DASK_ONLY


def test_every_lock_pins_what_its_file_names_with_hashes():
    for name, parts in [("requirements", ["requirements"]),
                        ("requirements-dask", ["requirements", "requirements-dask"]),
                        ("requirements-dev", ["requirements", "requirements-dask",
                                              "requirements-dev"])]:
        named = set().union(*(pinned(f"{part}.txt") for part in parts))
        assert named <= locked(f"{name}.lock"), name
