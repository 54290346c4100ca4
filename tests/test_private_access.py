"""No module reaches into another object's private members (`x._name` with x not self/cls).

Code that needs something of another object asks for it through a public call; a private member
is the owner's to change. The one exception is the urllib3 adapter (`registry/wire.py`), which
exists to keep that knowledge in one place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent

ALLOWED_MODULES = {Path("registry/wire.py")}
"""Modules allowed to look inside objects they do not own, each documented as to why."""

ALLOWED_NAMES = {
    "_replace",  # namedtuple's public API (SplitResult._replace)
    "_exit",  # os._exit
    "_Regexp",  # re2's compiled-pattern type, for a type hint
}


def _private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in ALLOWED_NAMES:
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if (
            isinstance(owner, ast.Call)
            and isinstance(owner.func, ast.Name)
            and owner.func.id == "super"
        ):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_checker_sees_a_private_access() -> None:
    tree = ast.parse("self.client._request('GET')\nclient._pool.clear()\nself._ok()\n")
    assert [text for _, text in _private_uses(tree)] == ["self.client._request", "client._pool"]


def test_no_private_member_use_across_objects() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative in ALLOWED_MODULES:
            continue
        for line, text in _private_uses(ast.parse(path.read_text(), str(path))):
            offenders.append(f"pipeline/{relative}:{line}: {text}")
    assert not offenders, "private members used from outside their object:\n" + "\n".join(offenders)
