"""The extension's CMake configures, builds and installs a complete module tree.

No Slicer SDK exists on the build machines, so ``Testing/CMake`` holds a
stand-in Slicer CMake package: it defines the macros the extension uses and
installs what they are given where Slicer would (scripts and RESOURCES at their
path as written under ``lib/Slicer-X.Y/qt-scripted-modules``). The tests then
check the installed tree against the source and against the places the
module's own code looks for its files.

Resources: Slicer's ``resourcePath('UI/x.ui')`` is ``Resources/UI/x.ui`` next to
the module file, in a source checkout ("Edit UI", "Reload") as much as installed.
So the module's UI and icons live in ``CAMLSegmentation/Resources/``; the bundled
models stay in the top-level ``Resources/Models/`` and are installed next to the
module by the CMake. Every resource the module file or the Logic modules under
``CAMLSegmentationLib/`` open by name must be where Slicer looks in the source
tree (models excepted) and must be installed next to the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

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


#: ``moduleResourcePath("UI/x.ui")`` (this project) and ``self.resourcePath('UI/x.ui')`` (Slicer's).
RESOURCE_CALL = re.compile(r"""\b(?:moduleResourcePath|resourcePath)\(\s*(["'])([^"']+)\1\s*\)""")


def _python_sources(source: Path) -> List[Path]:
    """The module file and every Python file of its engine package (the Logic modules included)."""
    lib = source / MODULE / f"{MODULE}Lib"
    return [source / MODULE / f"{MODULE}.py"] + sorted(
        p for p in lib.rglob("*.py") if "__pycache__" not in p.parts)


def _resource_literals(source: Path = ROOT) -> Dict[str, List[str]]:
    """Each resource the module or its Logic opens by name, with the files (relative to the module dir) naming it."""
    found: Dict[str, List[str]] = {}
    for path in _python_sources(source):
        for _, name in RESOURCE_CALL.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(str(path.relative_to(source / MODULE)))
    return dict(sorted(found.items()))


def _module_resource_files(source: Path) -> List[str]:
    """The files of the module's own ``Resources/`` folder, relative to it."""
    folder = source / MODULE / "Resources"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []


def source_tree_problems(source: Path) -> List[str]:
    """Resources that a Slicer running the module from this source tree would not find."""
    problems = []
    for name, users in _resource_literals(source).items():
        beside_module = source / MODULE / "Resources" / name
        top_level = source / "Resources" / name
        if name.startswith("Models/"):
            if not (beside_module.is_file() or top_level.is_file()):
                problems.append(f"resource {name} (named in {users[0]}) is in neither "
                                f"{MODULE}/Resources/ nor Resources/")
        elif not beside_module.is_file():
            problems.append(f"resource {name} (named in {users[0]}) is not in {MODULE}/Resources/, "
                            f"where Slicer's resourcePath() looks")
    return problems


def installed_tree_problems(source: Path, installed_module_dir: Path) -> List[str]:
    """What is missing from an installed module tree compared with the source it came from."""
    problems = []
    src_module_dir = source / MODULE
    if not (installed_module_dir / f"{MODULE}.py").is_file():
        problems.append(f"{MODULE}.py is not installed")
    for rel in _shipped_engine_files(src_module_dir):
        if not (installed_module_dir / rel).is_file():
            problems.append(f"engine file {rel} is not installed (add it to {MODULE}/CMakeLists.txt)")
    for rel in sorted(set(_resource_literals(source)) | set(_module_resource_files(source))):
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
    # The resources were found by reading the module file and the Logic modules: not vacuous.
    literals = _resource_literals(ROOT)
    assert f"{MODULE}.py" in literals["UI/CAMLSegmentation.ui"]
    assert f"{MODULE}Lib/slicer/logic.py" in literals["Icons/CAMLSegmentation.png"]  # the Sample Data thumbnail
    for rel in ("UI/CAMLSegmentation.ui", "Icons/CAMLSegmentation.png", "Models/models.json"):
        assert (module_dir / "Resources" / rel).is_file(), rel
    # Installed files are the source files.
    for rel in _shipped_engine_files(ROOT / MODULE):
        assert (module_dir / rel).read_bytes() == (ROOT / MODULE / rel).read_bytes(), rel
    # The build tree is laid out the same way (Slicer can run the extension from it).
    build_module_dir = installed / "build" / SCRIPTED_DIR
    for rel in ("UI/CAMLSegmentation.ui", "Icons/CAMLSegmentation.png", "Models/models.json"):
        assert (build_module_dir / "Resources" / rel).is_file(), rel
    assert (build_module_dir / f"{MODULE}Lib" / "slicer" / "jobs.py").is_file()


def test_engine_modules_in_cmake_match_the_source_folder(installed):
    """A new engine module (training/trainer.py, a new subpackage, ...) must be added to the CMake SCRIPTS list."""
    module_dir = installed / "install" / SCRIPTED_DIR

    def python_files(lib: Path) -> List[str]:
        return sorted(str(p.relative_to(lib)) for p in lib.rglob("*.py") if "__pycache__" not in p.parts)

    installed_py = python_files(module_dir / f"{MODULE}Lib")
    source_py = python_files(ROOT / MODULE / f"{MODULE}Lib")
    assert installed_py == source_py


def _where_resources_resolve(module_dir: Path, names: List[str], cwd: Path) -> Dict[str, Any]:
    """Import the module and its Logic from ``module_dir`` alone and ask where each resource is."""
    probe = (
        "import json, CAMLSegmentation as m, CAMLSegmentationLib as lib\n"
        "from CAMLSegmentationLib.slicer import framework\n"
        f"names = {names!r}\n"
        "print(json.dumps({'module': m.__file__, 'engine': lib.__file__,\n"
        "  'resources': {n: str(framework.moduleResourcePath(n)) for n in names}}))\n"
    )
    return _probe_installed(module_dir, probe, cwd=cwd)


def test_installed_module_finds_its_files_where_it_looks(installed):
    """Import the installed module (not the source) and ask it where its resources are."""
    module_dir = (installed / "install" / SCRIPTED_DIR).resolve()
    names = sorted(set(_resource_literals(ROOT)) | {"Models/models.json"})
    found = _where_resources_resolve(module_dir, names, cwd=installed)
    assert Path(found["module"]).resolve().parent == module_dir
    assert Path(found["engine"]).resolve().parent == module_dir / f"{MODULE}Lib"
    for name, path in found["resources"].items():
        path = Path(path).resolve()
        assert path == module_dir / "Resources" / name and path.is_file(), name


def test_source_checkout_has_each_resource_where_slicer_looks(tmp_path):
    """Run from the source tree (Additional module paths, "Edit UI", "Reload"): Slicer's
    ``resourcePath()`` is ``<module dir>/Resources/...``; the models come from the top-level folder."""
    assert source_tree_problems(ROOT) == []
    module_dir = (ROOT / MODULE).resolve()
    names = sorted(set(_resource_literals(ROOT)) | {"Models/models.json"})
    found = _where_resources_resolve(module_dir, names, cwd=tmp_path)
    assert Path(found["module"]).resolve().parent == module_dir
    for name, path in found["resources"].items():
        path = Path(path).resolve()
        expected = (ROOT / "Resources" if name.startswith("Models/") else module_dir / "Resources") / name
        assert path == expected.resolve() and path.is_file(), name
    # The top-level Resources/ keeps the models and pictures only: no second, stale copy of the panel.
    assert not (ROOT / "Resources" / "UI").exists() and not (ROOT / "Resources" / "Icons").exists()


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
    assert recorded["iconurl"].endswith(f"/main/{MODULE}/Resources/Icons/CAMLSegmentation.png")
    assert (ROOT / MODULE / "Resources" / "Icons" / "CAMLSegmentation.png").is_file()


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


def _model_files(source: Path) -> List[str]:
    return sorted(p.name for p in (source / "Resources" / "Models").iterdir()
                  if p.is_file() and not p.name.startswith("."))


def test_models_listed_as_dotdot_resources_are_lost_and_caught(tmp_path):
    source = _copy_sources(tmp_path / "src")
    cmake = source / MODULE / "CMakeLists.txt"
    text = cmake.read_text()
    # The tempting mistake: drop the explicit install of the top-level models and hand them
    # to the macro as "../Resources/Models/..." instead.
    text, dropped = re.subn(r"foreach\(model_file IN LISTS MODULE_MODEL_FILES\).*?endforeach\(\)\n", "", text,
                            flags=re.S)
    assert dropped == 1
    models = _model_files(source)
    dotdot = " ".join(f"../Resources/Models/{name}" for name in models)
    text = text.replace("RESOURCES ${MODULE_PYTHON_RESOURCES}", f"RESOURCES ${{MODULE_PYTHON_RESOURCES}} {dotdot}")
    cmake.write_text(text)
    done = _build_and_install(source, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    problems = installed_tree_problems(source, tmp_path / "install" / SCRIPTED_DIR)
    assert models and problems == [f"bundled model file Models/{name} is not installed" for name in models]
    # They were installed, "at their path as written": one folder above the module's.
    assert (tmp_path / "install" / SCRIPTED_DIR.parent / "Resources" / "Models" / "models.json").is_file()


def test_a_panel_moved_back_to_the_top_level_resources_is_caught(tmp_path):
    source = _copy_sources(tmp_path / "src")
    # The other tempting mistake: keep the .ui in the top-level Resources/ and list it as "../Resources/UI/...".
    ui = Path("UI") / f"{MODULE}.ui"
    (source / "Resources" / "UI").mkdir()
    (source / MODULE / "Resources" / ui).rename(source / "Resources" / ui)
    cmake = source / MODULE / "CMakeLists.txt"
    text = cmake.read_text()
    assert "  Resources/UI/${MODULE_NAME}.ui\n" in text
    cmake.write_text(text.replace("  Resources/UI/${MODULE_NAME}.ui\n", "  ../Resources/UI/${MODULE_NAME}.ui\n"))
    done = _build_and_install(source, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert source_tree_problems(source) == [
        f"resource UI/{MODULE}.ui (named in {MODULE}.py) is not in {MODULE}/Resources/, "
        f"where Slicer's resourcePath() looks"]
    problems = installed_tree_problems(source, tmp_path / "install" / SCRIPTED_DIR)
    assert problems == [f"resource UI/{MODULE}.ui is not installed in Resources/ next to the module"]


def test_a_module_resource_left_out_of_the_macro_is_caught(tmp_path):
    source = _copy_sources(tmp_path / "src")
    cmake = source / MODULE / "CMakeLists.txt"
    text = cmake.read_text()
    assert "  Resources/Icons/${MODULE_NAME}.png\n" in text
    cmake.write_text(text.replace("  Resources/Icons/${MODULE_NAME}.png\n", ""))
    # An extra file in the module's Resources/ that nothing names yet must still ship.
    (source / MODULE / "Resources" / "Icons" / "Extra.png").write_bytes(b"png")
    done = _build_and_install(source, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    problems = installed_tree_problems(source, tmp_path / "install" / SCRIPTED_DIR)
    assert problems == [f"resource Icons/{MODULE}.png is not installed in Resources/ next to the module",
                        "resource Icons/Extra.png is not installed in Resources/ next to the module"]


def test_an_engine_module_missing_from_cmake_is_caught(tmp_path):
    source = _copy_sources(tmp_path / "src")
    (source / MODULE / f"{MODULE}Lib" / "inference_extra.py").write_text('"""not listed in CMake"""\n')
    done = _build_and_install(source, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    problems = installed_tree_problems(source, tmp_path / "install" / SCRIPTED_DIR)
    assert len(problems) == 1 and "inference_extra.py" in problems[0]


def test_a_missing_resource_file_fails_the_build(tmp_path):
    source = _copy_sources(tmp_path / "src")
    (source / MODULE / "Resources" / "Icons" / "CAMLSegmentation.png").unlink()
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
