"""The test suite's own rules, checked on its source (AST) and on the CLI runner itself.

- The real CLI is run from one place, tests/bed/cli.py (and the pty runs in tests/bed/terminal.py
  built on it): no test module starts `python -m pipeline` itself, so none can forget to isolate
  the environment.
- No test module imports from another test module: what two modules share lives in tests/bed/
  (or is a conftest fixture), so running one test file never imports and depends on another.
- `isolated_env` keeps nothing of the developer's set-up: credentials, `BALE_*` defaults, auth
  files, CA bundles; a poisoned environment does not reach a `bale` run.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path

import pytest

from tests.bed.cli import isolated_env, run_bale
from tests.bed.terminal import run_on_terminal

TESTS = Path(__file__).resolve().parent
BED = TESTS / "bed"

_DASH_M_PIPELINE = re.compile(r"(^|\s)-m\s+pipeline\b")


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _runs_the_cli(tree: ast.AST) -> list[int]:
    """Lines that spell `-m pipeline`: as consecutive items of a list or tuple (an argv), or
    inside a string given to a call (a shell command line); docstrings may mention it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple):
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if any(a == "-m" and b == "pipeline" for a, b in itertools.pairwise(items)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                text = "".join(
                    c.value
                    for c in ast.walk(arg)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
                if isinstance(arg, ast.Constant | ast.JoinedStr) and _DASH_M_PIPELINE.search(text):
                    lines.append(node.lineno)
    return lines


def _test_module_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Imports of a test module: `tests.test_x`, `from tests import test_x`, `from .test_x`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("tests.test_")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.startswith("tests.test_") or (
                node.level and module.split(".")[-1].startswith("test_")
            ):
                found.append((node.lineno, module))
            elif module == "tests" or (node.level and not module):
                found += [(node.lineno, a.name) for a in node.names if a.name.startswith("test_")]
    return found


def test_only_the_bed_starts_the_cli() -> None:
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line}"
        for path in _modules()
        if BED not in path.parents
        for line in _runs_the_cli(ast.parse(path.read_text(), str(path)))
    ]
    assert offenders == [], "run the CLI with tests.bed.cli.run_bale / start_bale: " + ", ".join(
        offenders
    )


def test_no_test_module_imports_another() -> None:
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line} imports {name}"
        for path in _modules()
        for line, name in _test_module_imports(ast.parse(path.read_text(), str(path)))
    ]
    assert offenders == [], "move shared helpers into tests/bed/: " + ", ".join(offenders)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('subprocess.run([sys.executable, "-m", "pipeline", *args])', True),
        ('argv = (sys.executable, "-m", "pipeline")', True),
        ('os.system(f"{sys.executable} -m pipeline ls x")', True),
        ('subprocess.run([sys.executable, "-m", "bench"])', False),
        ('shutil.copytree(ROOT / "pipeline", dest / "pipeline")', False),
    ],
)
def test_the_cli_scan_sees_an_argv(source: str, flagged: bool) -> None:
    assert bool(_runs_the_cli(ast.parse(source))) is flagged


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from tests.test_faults import bale", True),
        ("import tests.test_faults", True),
        ("from tests import test_faults", True),
        ("from .test_faults import bale", True),
        ("from . import test_faults", True),
        ("from tests.bed.cli import run_bale", False),
        ("from pipeline.ops import test_helpers", False),
    ],
)
def test_the_import_scan_sees_a_test_module(source: str, flagged: bool) -> None:
    assert bool(_test_module_imports(ast.parse(source))) is flagged


MACHINE = {
    "AWS_ACCESS_KEY_ID": "AKIADEVELOPER",
    "AWS_SECRET_ACCESS_KEY": "developer-secret",
    "AWS_PROFILE": "prod",
    "AWS_CA_BUNDLE": "/etc/developer/ca.pem",
    "BALE_LOG_FORMAT": "nonsense",
    "OSS_ENDPOINT": "https://oss.example",
    "REGISTRY_AUTH_FILE": "/home/developer/auth.json",
    "DOCKER_CONFIG": "/home/developer/.docker",
    "XDG_RUNTIME_DIR": "/run/user/1000",
    "XDG_CONFIG_HOME": "/home/developer/.config",
    "SSL_CERT_FILE": "/etc/developer/bundle.pem",
    "SSL_CERT_DIR": "/etc/developer/certs",
    "REQUESTS_CA_BUNDLE": "/etc/developer/bundle.pem",
    "JOB_COMPLETION_INDEX": "3",
}
"""A developer's machine: keys, defaults, logins and CA bundles a test must not pick up."""


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MACHINE.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("machine")
def test_isolated_env_keeps_nothing_of_the_machine(tmp_path: Path) -> None:
    env = isolated_env(tmp_path, AWS_ACCESS_KEY_ID="test", SSL_CERT_FILE="/tmp/ca.pem")
    home = tmp_path / "cli-home"
    assert env["HOME"] == env["XDG_RUNTIME_DIR"] == str(home)
    assert json.loads(Path(env["REGISTRY_AUTH_FILE"]).read_text()) == {"auths": {}}
    assert Path(env["DOCKER_CONFIG"]).is_dir() and not any(Path(env["DOCKER_CONFIG"]).iterdir())
    assert Path(env["REGISTRY_AUTH_FILE"]).parent == Path(env["DOCKER_CONFIG"]).parent == home
    for name, value in MACHINE.items():
        assert env.get(name) != value, name
    # What the test names, it gets; PATH stays so that programs are found.
    assert env["AWS_ACCESS_KEY_ID"] == "test" and env["SSL_CERT_FILE"] == "/tmp/ca.pem"
    assert "PATH" in env


@pytest.mark.usefixtures("machine")
def test_a_poisoned_environment_does_not_reach_a_run(tmp_path: Path) -> None:
    """BALE_LOG_FORMAT=nonsense in the test process would make every command exit 2."""
    store = tmp_path / "store"
    store.mkdir()
    piped = run_bale("ls", str(store), "--json")
    assert (piped.returncode, piped.stdout.strip()) == (0, "[]"), piped.stderr
    told = run_bale("ls", str(store), env=isolated_env(tmp_path, BALE_LOG_FORMAT="nonsense"))
    assert told.returncode == 2 and "nonsense" in told.stderr  # what a test names does reach it
    terminal = run_on_terminal("ls", str(store), "--json", timeout=60)
    assert (terminal.returncode, terminal.text.strip()) == (0, "[]"), terminal.text
