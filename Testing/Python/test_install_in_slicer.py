"""`python -m CAMLSegmentationLib.slicer.install`: adds the module folder to a Slicer's settings, once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from CAMLSegmentationLib.slicer import install as tool

MODULE_DIR = Path(__file__).resolve().parents[2] / "CAMLSegmentation"

SLICER_INI = """[General]
sslCertificatesLoaded=true

[Modules]
AdditionalPaths=C:/Users/me/Slicer 5.8/slicer.org/Extensions-33241/SlicerIGT/qt-scripted-modules, "/opt/odd,name"
IgnoreModules=@Invalid()

[Extensions]
ManagerEnabled=true
"""


def _paths(settings: Path) -> list:
    for line in settings.read_text().splitlines():
        if line.startswith("AdditionalPaths="):
            return tool.parse_qt_list(line.split("=", 1)[1])
    return []


def _fake_slicer(root: Path, revision: str = "33241") -> Path:
    """The files of an unpacked Slicer that the tool looks at."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "SlicerLauncherSettings.ini").write_text(
        f"[Application]\nname=Slicer\nrevision={revision}\norganizationDomain=slicer.org\n")
    (root / "Slicer").write_text("#!/bin/sh\n")
    return root


def test_adds_the_module_folder_once_and_keeps_the_rest(tmp_path: Path) -> None:
    settings = tmp_path / "Slicer-33241.ini"
    settings.write_text(SLICER_INI)
    assert tool.add_module_path(settings, MODULE_DIR) is True
    paths = _paths(settings)
    assert paths == ["C:/Users/me/Slicer 5.8/slicer.org/Extensions-33241/SlicerIGT/qt-scripted-modules",
                     "/opt/odd,name", MODULE_DIR.resolve().as_posix()]
    text = settings.read_text()
    for line in ("sslCertificatesLoaded=true", "IgnoreModules=@Invalid()", "[Extensions]", "ManagerEnabled=true"):
        assert line in text
    # The line sits in [Modules], before the next section.
    assert text.index("AdditionalPaths") < text.index("[Extensions]")

    once = settings.read_bytes()
    assert tool.add_module_path(settings, MODULE_DIR) is False  # idempotent
    assert settings.read_bytes() == once


@pytest.mark.parametrize("content", ["", "[General]\nfoo=1\n", "[Modules]\nIgnoreModules=@Invalid()\n\n[X]\ny=2\n",
                                     "[Modules]\nAdditionalPaths=@Invalid()\n"])
def test_creates_the_section_or_key_when_missing(tmp_path: Path, content: str) -> None:
    settings = tmp_path / "s.ini"
    if content:
        settings.write_text(content)
    assert tool.add_module_path(settings, MODULE_DIR)
    assert _paths(settings) == [MODULE_DIR.resolve().as_posix()]
    assert not tool.add_module_path(settings, MODULE_DIR)
    if "[X]" in content:
        text = settings.read_text()
        assert text.index("AdditionalPaths") < text.index("[X]") and "y=2" in text


def test_qt_list_round_trip() -> None:
    items = ["/a/b", "C:\\Program Files\\x", "with,comma", 'quote"d', "semi;colon"]
    assert tool.parse_qt_list(tool.format_qt_list(items)) == items
    assert tool.parse_qt_list("@Invalid()") == [] and tool.format_qt_list([]) == "@Invalid()"
    assert tool.parse_qt_list("/one") == ["/one"]
    assert tool.parse_qt_list('/a, "/b,c"') == ["/a", "/b,c"]


def test_finds_the_settings_file_of_an_unpacked_slicer(tmp_path: Path) -> None:
    home = _fake_slicer(tmp_path / "Slicer-5.8.1-linux-amd64")
    assert tool.settings_file(tool.slicer_home(home)) == home / "slicer.org" / "Slicer-33241.ini"
    assert tool.slicer_home(home / "Slicer") == home  # the executable works too
    assert tool.main([str(home)]) == 0
    assert _paths(home / "slicer.org" / "Slicer-33241.ini") == [MODULE_DIR.resolve().as_posix()]
    assert tool.main([str(home)]) == 0
    assert _paths(home / "slicer.org" / "Slicer-33241.ini") == [MODULE_DIR.resolve().as_posix()]


def test_macos_bundle_layout(tmp_path: Path) -> None:
    contents = _fake_slicer(tmp_path / "Slicer.app" / "Contents")
    assert tool.slicer_home(tmp_path / "Slicer.app") == contents


@pytest.mark.parametrize("make", ["missing", "empty_folder", "a_text_file"])
def test_a_wrong_slicer_path_is_a_one_line_error(tmp_path: Path, make: str) -> None:
    target = tmp_path / "not-slicer"
    if make == "empty_folder":
        target.mkdir()
    elif make == "a_text_file":
        target.write_text("hello")
    done = subprocess.run([sys.executable, "-m", "CAMLSegmentationLib.slicer.install", str(target)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install_in_slicer: error: ") and str(target.name) in lines[0]
    assert done.stdout == ""
    assert not list(tmp_path.rglob("*.ini"))
