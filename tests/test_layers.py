"""The layout cannot silently decay: import contracts, no cycles, a lean worker, torch-free clients.

The contracts themselves live in pyproject.toml (``[tool.importlinter]``) and
the README's "Layout" section says what they mean.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encoders", "state", "streams")


def test_the_import_contracts_hold():
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                             "lint_imports_command()"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_there_are_no_import_cycles_among_our_modules():
    import grimp

    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    cycles = _cycles({m: {i for i in graph.find_modules_directly_imported_by(m) if i.split(".")[0] in PACKAGES}
                      for m in graph.modules})
    assert cycles == [], cycles


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_worker_loads_a_checkpoint_without_training_evaluation_or_dataset_code(synthetic_checkpoint):
    """What a worker process imports by the time its models are loaded, the worker's way."""
    code = f"""
import sys
from streams.app import load_sequence_encoder
from streams.cli.worker import load_encoders
from streams.settings import Settings
load_encoders(Settings(checkpoint={str(synthetic_checkpoint)!r}, text_encoder=False))
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('encoders', 'matplotlib'))
print('\\n'.join(loaded))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = result.stdout.split()
    assert "encoders.inference" in loaded and "encoders.checkpoint" in loaded
    # (tqdm is no test: transformers itself imports it.)
    offline = [m for m in loaded if m.startswith(("encoders.training", "encoders.evaluation", "encoders.data",
                                                  "matplotlib"))]
    assert offline == []


def test_the_clients_import_with_only_kafka_python_orjson_and_jsonschema(tmp_path):
    """In a virtual environment holding just those three distributions (and what they need): no torch."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = _only(["kafka-python", "orjson", "jsonschema"], tmp_path / "site")
    python = env_dir / "bin" / "python"
    code = ("import sys, streams.clients.producer, streams.clients.consumer, streams.clients.kafka\n"
            "from streams.clients.producer import validate_click\n"
            "validate_click({'event_id': 'e1', 'user_id': 'u1', 'item_id': 'i1', 'action': 'view', "
            "'ts': 1700000000000})\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
            "import torch\n")  # must fail: proves the environment really lacks it
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": f"{ROOT}:{site}", "PATH": "/usr/bin:/bin"})
    assert "No module named 'torch'" in result.stderr, result.stderr[-3000:]
    assert "Traceback" in result.stderr and result.stderr.count("Error") == 1, result.stderr[-3000:]


def _only(names: list[str], target: Path) -> Path:
    """A folder of links to these installed distributions' top-level modules and their requirements'."""
    target.mkdir()
    todo, seen = list(names), set()
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for requirement in dist.requires or ():
            if "extra ==" not in requirement:
                todo.append(requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0]
                            .split("=")[0].split("!")[0].split("~")[0].strip())
        for top in {Path(str(f)).parts[0] for f in dist.files or ()}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not top.endswith((".dist-info", ".pth")) and top != "..":
                link = target / top
                if not link.exists():
                    link.symlink_to(source)
    return target
