"""Every third-party module the code imports is declared (deep_speaker/requirements.py,
which setup.py installs), and CI runs in an environment of its own.

TensorFlow 2.21 stopped installing tensorboard; training imported it through
tf.summary, and only the machines that had it from before could train. This test
reads the code's imports instead of trusting what happens to be installed."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import site
import sys
from pathlib import Path

import pytest

from deep_speaker import requirements as declared

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("deep_speaker", "scripts", "bench", "tests")


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _is_optional(try_node: ast.Try) -> bool:
    """A `try:` whose handlers catch ImportError: what it imports may be absent."""
    for handler in try_node.handlers:
        names = [handler.type] if not isinstance(handler.type, ast.Tuple) else list(handler.type.elts)
        if any(isinstance(name, ast.Name) and name.id in ("ImportError", "ModuleNotFoundError") for name in names):
            return True
    return False


def imported_modules(path: Path) -> dict[str, int]:
    """{top-level module: first line} of every import in a file that is not
    optional (inside a try that catches ImportError): `import x`, `from x import y`,
    and `import_module("x")` / `importlib.import_module("x")` with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, int] = {}

    def visit(node: ast.AST, optional: bool) -> None:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            names = [node.args[0].value]
        if not optional:
            for name in names:
                found.setdefault(name.split(".")[0], node.lineno)
        if isinstance(node, ast.Try) and _is_optional(node):
            for child in node.body:
                visit(child, True)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return found


def _local_modules() -> set[str]:
    """Modules the scanned folders hold themselves (tests' conftest, bench helpers, scripts)."""
    return {path.stem for folder in SCANNED for path in (REPO / folder).rglob("*.py")} | {"deep_speaker"}


def _third_party_imports() -> dict[str, list[str]]:
    local, stdlib = _local_modules(), set(sys.stdlib_module_names) | {"__future__"}
    where: dict[str, list[str]] = {}
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            for module, line in imported_modules(path).items():
                if module not in local and module not in stdlib:
                    where.setdefault(module, []).append(f"{path.relative_to(REPO)}:{line}")
    return where


def test_the_scan_sees_the_imports_that_matter():
    """The scan itself: lazy imports inside functions count, optional ones do not."""
    modules = _third_party_imports()
    for module in ("tensorflow", "keras", "numpy", "soundfile", "soxr", "python_speech_features", "sklearn"):
        assert module in modules, module
    assert any(where.startswith("deep_speaker/export.py") for where in modules["tensorflow"])  # inside a function


def test_an_optional_import_is_not_a_requirement(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import numpy\ntry:\n    import absl\nexcept ImportError:\n    absl = None\n"
                      "def f():\n    import importlib\n    return importlib.import_module('keras.ops')\n")
    assert imported_modules(source) == {"numpy": 1, "importlib": 7, "keras": 8}


def test_every_imported_module_is_declared():
    provided_by = importlib.metadata.packages_distributions()
    wanted = {_normalized(declared.distribution_name(r)) for r in declared.requirements_of(list(declared.EXTRAS))}
    undeclared = []
    for module, places in sorted(_third_party_imports().items()):
        distributions = {_normalized(d) for d in provided_by.get(module, [])}
        if not distributions & wanted:
            source = ", ".join(sorted(distributions)) or "no installed distribution"
            undeclared.append(f"{module} ({source}), imported at {', '.join(places[:3])}")
    assert not undeclared, ("imported but not declared in deep_speaker/requirements.py (setup.py): "
                            + "; ".join(undeclared))


def test_every_requirement_names_its_import():
    """The venv check imports each requirement by name: that name must be the module
    its distribution installs (scikit-learn is sklearn)."""
    provided_by = importlib.metadata.packages_distributions()
    for requirement in declared.requirements_of(list(declared.EXTRAS)):
        module = declared.import_name(requirement)
        distributions = {_normalized(d) for d in provided_by.get(module, [])}
        assert _normalized(declared.distribution_name(requirement)) in distributions, (requirement, module)


def test_setup_py_installs_what_is_declared():
    import runpy
    import unittest.mock

    with unittest.mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    kwargs = setup.call_args.kwargs
    assert kwargs["install_requires"] == list(declared.REQUIREMENTS)
    assert kwargs["extras_require"] == {extra: list(r) for extra, r in declared.EXTRAS.items()}


def test_missing_requirements_names_each_one(monkeypatch):
    monkeypatch.setattr(declared, "REQUIREMENTS", ("numpy>=1", "no-such-distribution-xyz>=1"))
    missing = declared.missing_requirements()
    assert len(missing) == 1 and missing[0].startswith("no-such-distribution-xyz>=1 (import no_such_distribution_xyz:")


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI's own environment: checked when CI=true")
def test_ci_runs_in_an_environment_of_its_own():
    """.ci/run makes a new venv without system site-packages: nothing the machine had
    installed before can stand in for a missing requirement."""
    assert sys.prefix != sys.base_prefix, "CI must run in a virtual environment"
    config = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages\s*=\s*false", config, re.MULTILINE | re.IGNORECASE), config
    prefix = Path(sys.prefix).resolve()
    for folder in site.getsitepackages():
        assert Path(folder).resolve().is_relative_to(prefix), folder
    import numpy

    assert Path(numpy.__file__).resolve().is_relative_to(prefix)
