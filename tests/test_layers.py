"""The layers of the README's Layout section, checked against every import in the package."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

from conftest import REPO

LAYER_LINE = re.compile(r"^\s*layer (\d) (\w+):\s+(.+)$")
TORCH_FREE_LAYERS = (0, 1)  # and the whole host side, plugin/


def readme_layers() -> dict[str, int]:
    """{"engine/job": 1, "engine/model/*": 2, ...} from the README's rule."""
    layers = {}
    for line in (REPO / "README.md").read_text().splitlines():
        match = LAYER_LINE.match(line)
        if match:
            for entry in match.group(3).split():
                layers[entry] = int(match.group(1))
    assert layers, "the README's Layout section has no 'layer N name: modules' lines"
    return layers


def package_modules() -> dict[str, str]:
    """{"sparsemat.engine.job": "engine/job", ...} for every module of the package."""
    modules = {}
    for top, package in (("engine", "sparsemat.engine"), ("plugin", "sparsemat.plugin")):
        for folder, _, files in os.walk(REPO / top):
            for name in files:
                if not name.endswith(".py"):
                    continue
                relative = os.path.relpath(os.path.join(folder, name), REPO)[:-3]
                parts = relative.split(os.sep)
                dotted = ".".join([package] + parts[1:])
                if parts[-1] == "__init__":
                    dotted = dotted.rsplit(".", 1)[0]
                if dotted != package:  # the two top packages are empty
                    modules[dotted] = "/".join(parts)
    return modules


def layer_of(path: str, layers: dict[str, int]) -> int | None:
    """The layer of ``path``, named itself or by its folder ("engine/model/*")."""
    return layers.get(path, layers.get(path.rsplit("/", 1)[0] + "/*"))


def imports(module: str, path: str, known: set[str]) -> set[str]:
    """Package modules (and "torch") that ``module`` imports anywhere, lazily too."""
    tree = ast.parse((REPO / f"{path}.py").read_text())
    package = module if path.endswith("__init__") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "torch" or name.startswith("spconv"):
                found.add("torch")
            elif name in known:
                found.add(name)
    return found


def test_every_module_is_in_a_layer_and_imports_nothing_above_it():
    layers = readme_layers()
    modules = package_modules()
    unplaced = sorted(path for path in modules.values() if layer_of(path, layers) is None)
    assert not unplaced, f"modules missing from the README's layer rule: {unplaced}"
    upward, torch_users = [], []
    for module, path in modules.items():
        level = layer_of(path, layers)
        for target in imports(module, path, set(modules)):
            if target == "torch":
                if level in TORCH_FREE_LAYERS or path.startswith("plugin/"):
                    torch_users.append(path)
            elif layer_of(modules[target], layers) > level:
                upward.append(f"{path} (layer {level}) imports {modules[target]} "
                              f"(layer {layer_of(modules[target], layers)})")
            elif path.startswith("plugin/") and target.startswith("sparsemat.engine"):
                upward.append(f"{path} (host side) imports {modules[target]}")
    assert not upward, "\n".join(upward)
    assert not torch_users, f"torch imported by torch-free modules: {torch_users}"


def test_host_side_and_io_modules_load_without_torch():
    modules = ["sparsemat.plugin.client", "sparsemat.plugin.frames", "sparsemat.plugin.files",
               "sparsemat.engine.validation", "sparsemat.engine.imageio", "sparsemat.engine.sequence",
               "sparsemat.engine.job", "sparsemat.engine.remote", "sparsemat.engine.daemon", "sparsemat.engine.cli",
               "sparsemat.engine.evaluate", "sparsemat.engine.inputs", "sparsemat.engine.metrics"]
    code = (f"import importlib, sys\nfor name in {modules!r}: importlib.import_module(name)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
