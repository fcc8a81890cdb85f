"""The engine's layers, read from the source: imports point down only, and no package cycle.

io -> model -> inference -> training -> activelearning -> cli, with slicer beside cli
(DESIGN.md, "Layers"). The top-level modules (errors, progress, devices and the package's
``__init__``) sit below everything. Every import counts, the lazy ones inside functions
too: a lazy import up the layers is still a dependency, only a hidden one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

ENGINE = Path(__file__).resolve().parents[2] / "CAMLSegmentation" / "CAMLSegmentationLib"
PACKAGE = ENGINE.name
BASE = "(base)"
#: Height of each layer; an import may only go to a strictly lower one (or within its own package).
RANK = {BASE: 0, "io": 1, "model": 2, "inference": 3, "training": 4, "activelearning": 5, "cli": 6, "slicer": 6}
#: Edges still to be removed; the test fails once one of them is gone, so the list can only shrink.
KNOWN_UPWARD: Set[Tuple[str, str, str]] = set()


def _layer(parts: Tuple[str, ...]) -> str:
    """The layer of a module path inside the package (``("io", "volume")`` -> ``io``)."""
    return parts[0] if len(parts) > 1 and (ENGINE / parts[0]).is_dir() else BASE


def package_imports() -> List[Tuple[str, str, str]]:
    """(importing layer, imported layer, file) for every import of one engine module by another."""
    edges = []
    for path in sorted(ENGINE.rglob("*.py")):
        rel = path.relative_to(ENGINE)
        parts = rel.with_suffix("").parts
        here = parts[:-1] if parts[-1] == "__init__" else parts
        package_of_here = here if parts[-1] == "__init__" else here[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: List[Tuple[str, ...]] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package_of_here[:len(package_of_here) - (node.level - 1)]
                if node.module:
                    targets.append(tuple(base) + tuple(node.module.split(".")))
                else:  # from . import x: x may be a module or a name of the package
                    targets += [tuple(base) + (alias.name,) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                targets.append(tuple(node.module.split(".")[1:]))
            elif isinstance(node, ast.Import):
                targets += [tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == PACKAGE]
            for target in targets:
                src, dst = _layer(parts), _layer(target) if target else BASE
                if src != dst:
                    edges.append((src, dst, rel.as_posix()))
    return edges


def test_the_reader_sees_the_imports_it_must() -> None:
    """The scan itself: relative, absolute and lazy imports are all found."""
    edges = set(package_imports())
    assert ("inference", "model", "inference/predictor.py") in edges  # from ..model.checkpoint import ...
    assert ("cli", "training", "cli/train.py") in edges  # lazy, inside run()
    assert ("slicer", "activelearning", "slicer/al_logic.py") in edges  # absolute CAMLSegmentationLib....
    assert all(src in RANK and dst in RANK for src, dst, _ in edges), "a package missing from RANK"


def test_imports_point_down_only() -> None:
    upward = {(src, dst, where) for src, dst, where in package_imports() if RANK[dst] >= RANK[src]}
    unexpected = sorted(upward - KNOWN_UPWARD)
    assert not unexpected, "imports up (or sideways between cli and slicer): " + ", ".join(
        f"{where}: {src} -> {dst}" for src, dst, where in unexpected)
    gone = sorted(KNOWN_UPWARD - upward)
    assert not gone, f"fixed, remove from KNOWN_UPWARD: {gone}"


def test_no_cycle_between_packages() -> None:
    graph: Dict[str, Set[str]] = {}
    for src, dst, _ in package_imports():
        graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str, seen: Set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cycles, f"packages on an import cycle: {cycles}"


#: The most lines one engine module may hold: past it, a module holds several ideas (issue #25 item 11
#: split ``activelearning/cohort.py`` at 1134 lines into database, case_ids, versions, jobs and cohort).
MAX_MODULE_LINES = 800


def module_sizes() -> List[Tuple[int, str]]:
    """(lines, path inside the package) of every engine module, largest first."""
    sizes = [(len(path.read_text(encoding="utf-8").splitlines()), path.relative_to(ENGINE).as_posix())
             for path in ENGINE.rglob("*.py")]
    return sorted(sizes, reverse=True)


def test_no_engine_module_grows_past_the_line_limit() -> None:
    sizes = module_sizes()
    assert any(path == "activelearning/cohort.py" for _, path in sizes), "the scan found no engine module"
    too_big = [f"{path} ({lines})" for lines, path in sizes if lines > MAX_MODULE_LINES]
    largest = ", ".join(f"{path} ({lines})" for lines, path in sizes[:5])
    assert not too_big, (f"engine modules past {MAX_MODULE_LINES} lines: {', '.join(too_big)}; split them by idea "
                         f"(largest now: {largest})")
