"""The dependency direction: elmo/ imports only torch, numpy, h5py and the standard library, so
it never imports pretrain/ or tasks/ (which import elmo)."""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Optional extras (pyproject.toml): elmo/ imports them only inside functions, so that
# `import elmo` works without them and the ImportError names the extra. The one module-level
# exception is the spaCy component, a module spaCy itself imports through its entry point.
EXTRAS = {"safetensors", "huggingface_hub", "onnx", "onnxruntime", "onnxscript", "datasets", "spacy"}
MODULE_LEVEL_EXTRAS = {"spacy": {os.path.join("elmo", "spacy_component.py")}}


def _module_level(tree):
    """The nodes of a module outside any function body (module, class and if/try blocks)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _imports(package, module_level_only=False):
    found = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                tree = ast.parse(open(path, encoding="utf-8").read())
                for node in (_module_level(tree) if module_level_only else ast.walk(tree)):
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
    bad = {m: files for m, files in found.items() if m not in allowed | EXTRAS}
    assert bad == {}, f"elmo/ imports outside its allowed set: {bad}"
    eager = {m: files - MODULE_LEVEL_EXTRAS.get(m, set())
             for m, files in _imports("elmo", module_level_only=True).items() if m in EXTRAS}
    eager = {m: files for m, files in eager.items() if files}
    assert eager == {}, f"optional extras imported at module level (import them inside functions): {eager}"


def test_import_elmo_loads_no_optional_extra():
    import subprocess

    code = ("import sys, elmo, elmo.hub, elmo.serialization, elmo.onnx_export, elmo.hf_datasets; "
            f"print(sorted(m for m in {sorted(EXTRAS)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

