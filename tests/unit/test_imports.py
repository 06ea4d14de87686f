"""Every module of the installed packages imports in this environment. Run by CI in a
fresh virtual environment, this catches a third-party import that no declared
dependency provides (the static check, ../shared/tools/check_deps.py, catches it too
where it is available)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ("ray_app", "trainers", "calibration", "serve")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        names += [package] + [
            m.name for m in pkgutil.walk_packages(root.__path__, prefix=f"{package}.") if not m.name.endswith("__main__")
        ]
    return names


@pytest.mark.parametrize("module", _modules())
def test_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_lower_packages_never_import_ray_app() -> None:
    import ast
    from pathlib import Path

    for package in ("trainers", "calibration", "serve"):
        for path in Path(importlib.import_module(package).__path__[0]).glob("*.py"):
            tree = ast.parse(path.read_text())
            imported = {
                (node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            } | {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
            assert "ray_app" not in imported, f"{path} imports ray_app: packages import downward only"
