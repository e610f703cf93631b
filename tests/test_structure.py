"""The shape of the code: Tornado's private names in one module, no import cycles."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, subprocess_env

PACKAGE = ROOT / "foreman"
PRIVATE_MODULE = PACKAGE / "target" / "_tornado.py"
TORNADO_MODULES = (
    "tornado.gen", "tornado.http1connection", "tornado.httpclient", "tornado.httpserver",
    "tornado.httputil", "tornado.ioloop", "tornado.iostream", "tornado.netutil",
    "tornado.simple_httpclient", "tornado.tcpclient", "tornado.tcpserver", "tornado.web",
)


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text(), str(path))
    return trees


def _tornado_private_names() -> set[str]:
    """Underscore names Tornado's modules and classes define or use on their objects."""
    names: set[str] = set()
    for module_name in TORNADO_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
            if inspect.isclass(value) and value.__module__ == module_name:
                names.update(n for n in dir(value) if n.startswith("_") and not n.startswith("__"))
                for node in ast.walk(ast.parse(inspect.getsource(value))):
                    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                        names.add(node.attr)
    return {n for n in names if not n.startswith("__")}


def test_only_the_private_module_touches_private_tornado_names() -> None:
    trees = _modules()
    ours: set[str] = set()  # underscore names foreman defines itself (e.g. self._timeout)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                ours.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ours.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                ours.add(node.target.id)
            elif isinstance(node, ast.Assign):
                ours.update(t.id for t in node.targets if isinstance(t, ast.Name))
    tornado_private = _tornado_private_names() - ours
    found = []
    for name, tree in trees.items():
        if name == "foreman.target._tornado":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tornado"):
                found += [f"{name}: imports {a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr in tornado_private:
                found.append(f"{name}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module == "foreman.target._tornado":
                if not name.startswith("foreman.target."):
                    found.append(f"{name}: imports foreman.target._tornado from outside its package")
    assert found == []
    # And the private module does use them: the check above looks at the right names.
    private_tree = ast.parse(PRIVATE_MODULE.read_text())
    assert any(
        isinstance(n, ast.Attribute) and n.attr == "_HTTPConnection" for n in ast.walk(private_tree)
    )


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:
                base = name.split(".")[: -node.level] if not name.endswith("__init__") else name.split(".")
                module = ".".join([*base, module])
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def test_foreman_modules_import_no_cycle() -> None:
    trees = _modules()
    known = set(trees)
    graph = {name: _imports(name, tree, known) for name, tree in trees.items()}
    # A package's __init__ only hands names on; its submodules importing it is not a loop.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        path.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_a_tornado_without_the_needed_private_names_stops_foreman_with_one_line() -> None:
    script = (
        "import tornado.simple_httpclient as s\n"
        "del s._HTTPConnection\n"
        "from foreman.cli import main\n"
        "main(['--listen', '127.0.0.1:0'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env=subprocess_env(), cwd=ROOT,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "built for Tornado 6.6" in lines[0] and "_HTTPConnection" in lines[0]
    assert "Traceback" not in done.stderr


def test_the_import_check_covers_the_stream_buffer_the_pool_reads() -> None:
    # A Tornado whose stream no longer keeps `_read_buffer_size`: the pool could
    # not tell a clean connection from one with an answer left over.
    script = (
        "import tornado.iostream as i\n"
        "original = i.BaseIOStream.__init__\n"
        "def init(self, *args, **kwargs):\n"
        "    original(self, *args, **kwargs)\n"
        "i.BaseIOStream.__init__ = init\n"
        "from foreman.cli import main\n"
        "main(['--listen', '127.0.0.1:0'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env=subprocess_env(), cwd=ROOT,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "BaseIOStream._read_buffer_size" in lines[0]
