"""The extension's CMake configures, builds and installs a complete module tree.

No Slicer SDK exists on the build machines, so ``Testing/CMake`` holds a
stand-in Slicer CMake package: it defines the macros the extension uses and
installs what they are given where Slicer would (scripts and RESOURCES at their
path as written under ``lib/Slicer-X.Y/qt-scripted-modules``). The tests then
check the installed tree against the source and against the places the
module's own code looks for its files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "Testing" / "CMake"
MODULE = "CAMLSegmentation"
SCRIPTED_DIR = Path("lib/Slicer-5.8/qt-scripted-modules")

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")


def _build_and_install(source: Path, work: Path) -> subprocess.CompletedProcess:
    """Configure, build and install ``source`` against the stand-in Slicer; returns the last step."""
    build, prefix = work / "build", work / "install"
    steps = [
        ["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={STANDIN}",
         f"-DCMAKE_INSTALL_PREFIX={prefix}"],
        ["cmake", "--build", str(build)],
        ["cmake", "--install", str(build)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return done
    return done


def _shipped_engine_files(source_module_dir: Path) -> List[str]:
    lib = source_module_dir / f"{MODULE}Lib"
    return sorted(str(p.relative_to(source_module_dir)) for p in lib.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _resource_literals(module_file: Path) -> List[str]:
    """Every resource the module opens by name: ``moduleResourcePath("...")`` literals."""
    return sorted(set(re.findall(r'moduleResourcePath\(\s*"([^"]+)"\s*\)', module_file.read_text())))


def installed_tree_problems(source: Path, installed_module_dir: Path) -> List[str]:
    """What is missing from an installed module tree compared with the source it came from."""
    problems = []
    src_module_dir = source / MODULE
    if not (installed_module_dir / f"{MODULE}.py").is_file():
        problems.append(f"{MODULE}.py is not installed")
    for rel in _shipped_engine_files(src_module_dir):
        if not (installed_module_dir / rel).is_file():
            problems.append(f"engine file {rel} is not installed (add it to {MODULE}/CMakeLists.txt)")
    for rel in _resource_literals(src_module_dir / f"{MODULE}.py"):
        if not (source / "Resources" / rel).is_file():
            continue  # optional (e.g. the model catalog before models are bundled): the module copes
        if not (installed_module_dir / "Resources" / rel).is_file():
            problems.append(f"resource {rel} is not installed in Resources/ next to the module")
    models = source / "Resources" / "Models"
    for path in sorted(models.glob("*")) if models.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):
            if not (installed_module_dir / "Resources" / "Models" / path.name).is_file():
                problems.append(f"bundled model file Models/{path.name} is not installed")
    return problems


def _probe_installed(module_dir: Path, probe: str, cwd: Path, caml_home: Optional[Path] = None) -> Any:
    """Run ``probe`` with only the installed module tree on the path; the JSON its last line prints."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(module_dir)
    if caml_home is not None:
        env["CAML_HOME"] = str(caml_home)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("extension")
    done = _build_and_install(ROOT, work)
    assert done.returncode == 0, done.stdout + done.stderr
    return work


def test_installed_tree_holds_module_engine_ui_icons_and_models(installed):
    module_dir = installed / "install" / SCRIPTED_DIR
    assert installed_tree_problems(ROOT, module_dir) == []
    # The resources the module names were found by reading it, and the panel's exist: not vacuous.
    for required in ("UI/CAMLSegmentation.ui", "Icons/CAMLSegmentation.png"):
        assert required in _resource_literals(ROOT / MODULE / f"{MODULE}.py")
        assert (ROOT / "Resources" / required).is_file()
    # Installed files are the source files.
    for rel in _shipped_engine_files(ROOT / MODULE):
        assert (module_dir / rel).read_bytes() == (ROOT / MODULE / rel).read_bytes(), rel
    # The build tree is laid out the same way (Slicer can run the extension from it).
    build_module_dir = installed / "build" / SCRIPTED_DIR
    assert (build_module_dir / "Resources" / "UI" / "CAMLSegmentation.ui").is_file()
    assert (build_module_dir / f"{MODULE}Lib" / "slicer" / "jobs.py").is_file()


def test_engine_modules_in_cmake_match_the_source_folder(installed):
    """A new engine module (training/trainer.py, a new subpackage, ...) must be added to the CMake SCRIPTS list."""
    module_dir = installed / "install" / SCRIPTED_DIR

    def python_files(lib: Path) -> List[str]:
        return sorted(str(p.relative_to(lib)) for p in lib.rglob("*.py") if "__pycache__" not in p.parts)

    installed_py = python_files(module_dir / f"{MODULE}Lib")
    source_py = python_files(ROOT / MODULE / f"{MODULE}Lib")
    assert installed_py == source_py


def test_installed_module_finds_its_files_where_it_looks(installed):
    """Import the installed module (not the source) and ask it where its resources are."""
    module_dir = (installed / "install" / SCRIPTED_DIR).resolve()
    names = [n for n in _resource_literals(ROOT / MODULE / f"{MODULE}.py")
             if (ROOT / "Resources" / n).is_file()]
    probe = (
        "import json, sys, CAMLSegmentation as m, CAMLSegmentationLib as lib\n"
        f"names = {names!r}\n"
        "print(json.dumps({'module': m.__file__, 'engine': lib.__file__,\n"
        "  'resources': {n: str(m.moduleResourcePath(n)) for n in names}}))\n"
    )
    found = _probe_installed(module_dir, probe, cwd=installed)
    assert Path(found["module"]).resolve().parent == module_dir
    assert Path(found["engine"]).resolve().parent == module_dir / f"{MODULE}Lib"
    for name, path in found["resources"].items():
        path = Path(path).resolve()
        assert path == module_dir / "Resources" / name and path.is_file(), name


def test_installed_engine_verifies_the_bundled_default_model(installed, tmp_path):
    """Offline, right after installing: the installed engine finds the shipped model and its checksum holds."""
    module_dir = (installed / "install" / SCRIPTED_DIR).resolve()
    probe = ("import json\n"
             "from CAMLSegmentationLib.model.catalog import default_model, verify\n"
             "e = default_model()\n"
             "print(json.dumps({'id': e.id, 'source': e.source, 'path': str(verify(e))}))\n")
    found = _probe_installed(module_dir, probe, cwd=tmp_path, caml_home=tmp_path / "no-user-models")
    shipped = json.loads((ROOT / "Resources" / "Models" / "models.json").read_text())["models"]
    assert found["id"] in [m["id"] for m in shipped if m.get("default")] and found["source"] == "bundled"
    assert Path(found["path"]).parent == module_dir / "Resources" / "Models"


def test_extension_metadata_agrees_with_the_index_files(installed):
    recorded = dict(line.split("=", 1) for line in
                    (installed / "build" / "standin-extension-metadata.txt").read_text().splitlines())
    index = json.loads((ROOT / f"{MODULE}.json").read_text())
    s4ext = {}
    for line in (ROOT / f"{MODULE}.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()

    assert recorded["name"] == MODULE
    assert recorded["category"] == index["category"] == s4ext["category"] == "Segmentation"
    assert recorded["depends"].split(";") == index["build_dependencies"] == s4ext["depends"].split()
    assert "PyTorch" in index["build_dependencies"]
    assert index["scm_url"].removesuffix(".git") == recorded["homepage"] == s4ext["homepage"]
    assert index["scm_url"] == s4ext["scmurl"]
    assert index["build_subdirectory"] == s4ext["build_subdirectory"] == "."
    for key in ("description", "iconurl", "screenshoturls", "contributors"):
        assert recorded[key] == s4ext[key], key
    assert recorded["iconurl"].endswith("/Resources/Icons/CAMLSegmentation.png")
    assert (ROOT / "Resources" / "Icons" / "CAMLSegmentation.png").is_file()


def test_module_is_built_with_generic_tests(installed):
    manifest = (installed / "build" / "standin-slicer-manifest.txt").read_text().splitlines()
    assert f"{MODULE} WITH_GENERIC_TESTS" in manifest
    assert f"{MODULE} SCRIPTS {MODULE}.py" in manifest


def test_self_test_is_registered_with_ctest(installed):
    """The module's unittest class runs under CTest in Slicer (slicer_add_python_unittest), and it exists."""
    manifest = (installed / "build" / "standin-slicer-manifest.txt").read_text().splitlines()
    assert f"PYTHON_UNITTEST py_{MODULE} {MODULE}.py" in manifest
    source = (ROOT / MODULE / f"{MODULE}.py").read_text()
    assert re.search(rf"class {MODULE}Test\(ScriptedLoadableModuleTest\)", source)
    assert "def test_SegmentGeneratedVolume" in source and "processEvents" in source


# -- the check fails when the packaging is wrong -------------------------------------------


def _copy_sources(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "build", ".git")
    dest.mkdir()
    shutil.copy2(ROOT / "CMakeLists.txt", dest / "CMakeLists.txt")
    for folder in (MODULE, "Resources"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


def test_a_resource_listed_as_dotdot_resources_is_lost_and_caught(tmp_path):
    source = _copy_sources(tmp_path / "src")
    cmake = source / MODULE / "CMakeLists.txt"
    text = cmake.read_text()
    # The tempting mistake: hand the top-level UI file to the macro as "../Resources/UI/...".
    text = text.replace("  UI/${MODULE_NAME}.ui\n", "")
    text = text.replace("RESOURCES ${MODULE_ENGINE_DATA}",
                        "RESOURCES ${MODULE_ENGINE_DATA} ../Resources/UI/${MODULE_NAME}.ui")
    cmake.write_text(text)
    done = _build_and_install(source, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    problems = installed_tree_problems(source, tmp_path / "install" / SCRIPTED_DIR)
    assert problems == ["resource UI/CAMLSegmentation.ui is not installed in Resources/ next to the module"]


def test_an_engine_module_missing_from_cmake_is_caught(tmp_path):
    source = _copy_sources(tmp_path / "src")
    (source / MODULE / f"{MODULE}Lib" / "inference_extra.py").write_text('"""not listed in CMake"""\n')
    done = _build_and_install(source, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    problems = installed_tree_problems(source, tmp_path / "install" / SCRIPTED_DIR)
    assert len(problems) == 1 and "inference_extra.py" in problems[0]


def test_a_missing_resource_file_fails_the_build(tmp_path):
    source = _copy_sources(tmp_path / "src")
    (source / "Resources" / "Icons" / "CAMLSegmentation.png").unlink()
    done = _build_and_install(source, tmp_path)
    assert done.returncode != 0
    assert "CAMLSegmentation.png" in done.stdout + done.stderr


def test_bundled_models_are_installed_where_the_module_lists_them(tmp_path):
    source = _copy_sources(tmp_path / "src")
    models = source / "Resources" / "Models"
    models.mkdir(exist_ok=True)
    (models / "models.json").write_text(json.dumps(
        {"models": [{"id": "caml-la-test", "version": 1, "file": "caml-la-test.pt", "sha256": "0" * 64}]}))
    (models / "caml-la-test.pt").write_bytes(b"weights")
    done = _build_and_install(source, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    module_dir = (tmp_path / "install" / SCRIPTED_DIR).resolve()
    assert installed_tree_problems(source, module_dir) == []
    assert (module_dir / "Resources" / "Models" / "caml-la-test.pt").read_bytes() == b"weights"

    probe = ("import json, CAMLSegmentation as m\n"
             "print(json.dumps([(x['id'], x['source']) for x in m.CAMLSegmentationLogic(object())"
             ".availableModels()]))\n")
    found = _probe_installed(module_dir, probe, cwd=tmp_path, caml_home=tmp_path / "no-user-models")
    assert found == [["caml-la-test", "bundled"]]
