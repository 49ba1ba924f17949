"""The package's layout stays what the README's map says: folders by job, imports pointing down.

Read from the source with `ast`, so the rules hold for every import, including those
made inside functions to defer a heavy library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "krefinery"
# The ground every layer may stand on.
GROUND = {
    "krefinery", "krefinery.config", "krefinery.errors", "krefinery.faults", "krefinery.progress", "krefinery.stops",
}
# What each folder may import of the package besides the ground and itself.
ALLOWED = {
    "core": set(),
    "analysis": set(),
    "data": {"core"},
    "runtime": {"core"},
    "chain": {"core", "data", "runtime", "analysis"},
    "outputs": {"core", "data", "runtime", "analysis", "chain"},
    "commands": {"core", "data", "runtime", "analysis", "chain", "outputs"},
}
# Writing files is the work directory's and the store's job: only they use `files`; and
# the precision probe's, whose figures live in the user's cache folder, outside any run.
WRITERS = ("krefinery.outputs.", "krefinery.chain.store", "krefinery.runtime.probe")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at module level?) for every import of `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(n, id(node) in top) for n in names]
    return found


def package_of(module: str) -> str | None:
    """The folder of a krefinery module (`core`, ...), or None for the root's modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def own_module(imported: str, known: dict[str, Path]) -> str | None:
    """The krefinery module an import names (`from krefinery.core import losses` names
    `krefinery.core.losses`; `from krefinery.core.losses import entropy` too)."""
    while imported and imported not in known:
        imported = imported.rpartition(".")[0]
    return imported or None


def test_every_folder_says_its_job_in_one_line():
    for folder in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "\n" not in doc.strip(), folder
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down(module):
    known = modules()
    folder = package_of(module)
    for imported, _ in imports(known[module]):
        target = own_module(imported, known)
        if target is None or not target.startswith("krefinery"):
            continue
        if target == "krefinery.files":
            assert module.startswith(WRITERS), f"{module} writes files: that is outputs/' or the store's job"
            continue
        if target in GROUND:
            continue
        if folder is None:  # The root (config, errors, files, faults) stands on itself.
            assert package_of(target) is None, f"{module} imports {target}"
            continue
        other = package_of(target)
        assert other is not None and other in ALLOWED[folder] | {folder}, f"{module} imports {target}"


@pytest.mark.parametrize("module", sorted(m for m in modules() if package_of(m) in ("core", "analysis")))
def test_the_method_and_the_figures_need_no_tensorflow(module):
    """`core/` and `analysis/` import on every Keras backend, TensorFlow installed or not
    (a function may still reach for it where tf.distribute is the point)."""
    for imported, top_level in imports(modules()[module]):
        assert not top_level or imported.split(".")[0] != "tensorflow", f"{module} imports {imported}"
