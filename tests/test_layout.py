"""The dependency direction: elmo/ imports only torch, numpy, h5py and the standard library, so
it never imports pretrain/ or tasks/ (which import elmo)."""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(package):
    found = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                tree = ast.parse(open(path, encoding="utf-8").read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        mods = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        mods = [node.module]
                    else:
                        continue
                    for m in mods:
                        found.setdefault(m.split(".")[0], set()).add(os.path.relpath(path, ROOT))
    return found


def test_elmo_imports_only_torch_numpy_h5py_and_stdlib():
    allowed = {"torch", "numpy", "h5py", "elmo"} | set(sys.stdlib_module_names)
    # The one exception: the elmo-embed command's progress bar (tqdm, a core dependency) lives in
    # the command-line entry point, never in the library modules.
    found = _imports("elmo")
    if found.get("tqdm") == {os.path.join("elmo", "cli.py")}:
        del found["tqdm"]
    bad = {m: files for m, files in found.items() if m not in allowed}
    assert bad == {}, f"elmo/ imports outside its allowed set: {bad}"

