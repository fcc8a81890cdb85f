"""What the Slicer Extensions Index checks before it lists the extension.

``CAMLSegmentation.json`` is validated against the catalog-entry schema
(``slicer-extension-catalog-entry-schema-v1.0.1.json`` in Slicer's ``Schemas/``;
its rules are written out below, and ``jsonschema`` validates against the same
schema when it is installed), and the icon and screenshot URLs of the CMake
metadata must point at files committed here, since the index downloads them.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from CAMLSegmentationLib.io.snapshot import decode_png

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
RAW_PREFIX = "https://raw.githubusercontent.com/camlsegmentation/SlicerCAMLSegmentation/main/"

#: Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json, as data.
CATALOG_ENTRY_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "$id": SCHEMA_URL,
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "enum": [1, 3, 5]},
    },
}

_TYPES = {"string": str, "array": list, "boolean": bool, "object": dict}


def schema_problems(entry: object, schema: dict = CATALOG_ENTRY_SCHEMA) -> list:
    """The schema's rules, checked by hand (required keys, no others, types, enums)."""
    if not isinstance(entry, dict):
        return ["the entry is not a JSON object"]
    problems = [f"missing required key {key!r}" for key in schema["required"] if key not in entry]
    for key, value in entry.items():
        rule = schema["properties"].get(key)
        if rule is None:
            problems.append(f"key {key!r} is not allowed (additionalProperties: false)")
            continue
        kind = rule["type"]
        ok = (isinstance(value, int) and not isinstance(value, bool)) if kind == "integer" else \
            isinstance(value, _TYPES[kind])
        if not ok:
            problems.append(f"{key!r} must be of type {kind}")
        elif "enum" in rule and value not in rule["enum"]:
            problems.append(f"{key!r} must be one of {rule['enum']}")
        elif kind == "array" and not all(isinstance(v, str) for v in value):
            problems.append(f"{key!r} must hold strings")
    return problems


def _cmake_metadata() -> dict:
    text = (ROOT / "CMakeLists.txt").read_text()
    return dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))


def test_catalog_entry_is_valid_against_the_index_schema() -> None:
    entry = json.loads((ROOT / "CAMLSegmentation.json").read_text())
    assert schema_problems(entry) == []
    assert entry["$schema"] == SCHEMA_URL
    assert entry["scm_url"].startswith("https://") and entry["scm_url"].endswith(".git")
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["category"] == _cmake_metadata()["EXTENSION_CATEGORY"]


def test_the_hand_written_rules_catch_the_old_mistakes() -> None:
    old = {"$schema": "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                      "slicer-extension-catalog-item-schema-v1.0.0.json#",
           "build_dependencies": ["PyTorch"], "category": "Segmentation",
           "scmrevision": "main", "scmurl": "https://example.org/x.git"}
    problems = schema_problems(old)
    assert "missing required key 'scm_url'" in problems
    assert "key 'scmurl' is not allowed (additionalProperties: false)" in problems
    assert schema_problems({"$schema": SCHEMA_URL, "category": "x", "scm_url": "u", "tier": 2}) == [
        "'tier' must be one of [1, 3, 5]"]


def test_jsonschema_agrees_when_installed() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    entry = json.loads((ROOT / "CAMLSegmentation.json").read_text())
    jsonschema.validate(entry, CATALOG_ENTRY_SCHEMA)


@pytest.mark.parametrize("key", ["EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"])
def test_icon_and_screenshot_urls_point_at_committed_pngs(key: str) -> None:
    urls = _cmake_metadata()[key].split()
    assert urls
    for url in urls:
        assert url.startswith(RAW_PREFIX), url
        path = ROOT / url[len(RAW_PREFIX):]
        assert path.is_file(), f"{url} -> {path} does not exist"
        picture = decode_png(path.read_bytes())
        assert min(picture.shape[:2]) >= 64, url


def test_screenshot_shows_a_segmentation() -> None:
    """The screenshot is a snapshot picture: three panels with the segment's colour in each."""
    from CAMLSegmentationLib.io.snapshot import GAP, PANEL_SIZE, snapshot_shape

    url = _cmake_metadata()["EXTENSION_SCREENSHOTURLS"].split()[0]
    picture = decode_png((ROOT / url[len(RAW_PREFIX):]).read_bytes())
    assert picture.shape == snapshot_shape()
    for n in range(3):
        panel = picture[:, n * (PANEL_SIZE + GAP):n * (PANEL_SIZE + GAP) + PANEL_SIZE].astype(int)
        coloured = (panel[..., 0] != panel[..., 1]) | (panel[..., 1] != panel[..., 2])
        assert 0.02 < coloured.mean() < 0.5, n


def _module_contributors() -> list:
    """``self.parent.contributors`` of the Module class, read from the module file's syntax tree."""
    tree = ast.parse((ROOT / "CAMLSegmentation" / "CAMLSegmentation.py").read_text(encoding="utf-8"))
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CAMLSegmentation")
    for node in ast.walk(module_class):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "self.parent.contributors":
            return ast.literal_eval(node.value)
    raise AssertionError("the Module class sets no self.parent.contributors")


def _s4ext() -> dict:
    entries = {}
    for line in (ROOT / "CAMLSegmentation.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            entries[key] = value.strip()
    return entries


#: What the contributor lines read before they named anyone: a placeholder, not a name.
PLACEHOLDERS = {"CAMLSegmentation contributors", "John Doe (AnyWare Corp.)", ""}


def test_contributors_name_the_maintainers_or_point_at_contributing() -> None:
    module = _module_contributors()
    cmake = _cmake_metadata()["EXTENSION_CONTRIBUTORS"]
    assert module and all(isinstance(name, str) for name in module)
    # The module's About box, the Extensions Manager (CMake) and the index (.s4ext) say the same.
    assert ", ".join(module) == cmake == _s4ext()["contributors"]
    for name in module:
        assert name.strip() not in PLACEHOLDERS, name
        # A person with an affiliation ("Jane Doe (Institution)"), or the pointer to CONTRIBUTING.md.
        assert re.fullmatch(r"[^()]+ \([^()]+\)", name), name
        if "CONTRIBUTING" in name:
            assert (ROOT / "CONTRIBUTING.md").is_file()
            assert "## Maintainers" in (ROOT / "CONTRIBUTING.md").read_text()
