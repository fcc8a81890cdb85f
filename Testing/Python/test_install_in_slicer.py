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
    for line in settings.read_bytes().decode("latin-1").splitlines():  # bytes as Qt 5 reads them
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


# -- what Qt 5 wrote before, and what Qt 5 reads after ---------------------------------------

#: Lines as Qt 5.15's QSettings writes them (observed with PyQt5 5.15): a list of one path stored
#: from Python becomes a whole @Variant (QVariantList of one QString); non-ASCII is \x-escaped.
QT_ONE_PATH_FROM_PYTHON = r"AdditionalPaths=@Variant(\0\0\0\t\0\0\0\x1\0\0\0\n\0\0\0\x12\0/\0o\0n\0l\0y\0/\0o\0n\0\x65)"
QT_NON_ASCII = r'AdditionalPaths=/home/jos\xe9/Slicer ext/\x4e2d\x6587, "a,b", \xe9\x31\x66, @@at'
QT_URL_VARIANT = r"AdditionalPaths=@Variant(\0\0\0\t\0\0\0\x1\0\0\0\x11\0\0\0\rfile:///tmp/x)"


def _module_dir_named(root: Path) -> Path:
    """A module folder whose path has non-ASCII characters (a user name, a localised folder)."""
    module_dir = root / "módulo 中文 😀" / "CAMLSegmentation"
    module_dir.mkdir(parents=True)
    (module_dir / "CAMLSegmentation.py").write_text("")
    return module_dir


@pytest.mark.parametrize("line, before", [
    (QT_ONE_PATH_FROM_PYTHON, ["/only/one"]),
    (QT_NON_ASCII, ["/home/josé/Slicer ext/中文", "a,b", "é1f", "@at"]),
])
def test_keeps_entries_qt_wrote_as_variant_or_with_x_escapes(tmp_path: Path, line: str, before: list) -> None:
    settings = tmp_path / "Slicer-33241.ini"
    latin1_elsewhere = "[General]\nuser=Jos\xe9\n".encode("latin-1")  # not UTF-8: must survive untouched
    settings.write_bytes(latin1_elsewhere + f"\n[Modules]\n{line}\n".encode("ascii"))
    module_dir = _module_dir_named(tmp_path)
    assert tool.add_module_path(settings, module_dir) is True
    data = settings.read_bytes()
    assert data.startswith(latin1_elsewhere)
    assert max(data[len(latin1_elsewhere):]) < 0x80  # Qt 5 (no INI codec) writes ASCII only
    assert _paths(settings) == before + [module_dir.resolve().as_posix()]
    assert r"m\xf3\x64ulo \x4e2d\x6587 \xd83d\xde00" in data.decode("ascii", "replace")
    assert tool.add_module_path(settings, module_dir) is False


def test_qt_escapes_non_ascii_as_qt5_does() -> None:
    assert tool.format_qt_list(["/home/josé/Slicer ext/中文", "é1f", "/p/😀", "@at", "a;b"]) == (
        r'/home/jos\xe9/Slicer ext/\x4e2d\x6587, \xe9\x31\x66, /p/\xd83d\xde00, @@at, "a;b"')
    assert tool.parse_qt_list(r'/a, "/b,c" ; a comment') == ["/a", "/b,c"]


def test_an_entry_it_cannot_decode_stops_it_in_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    settings = tmp_path / "Slicer-33241.ini"
    settings.write_text(f"[Modules]\n{QT_URL_VARIANT}\n")
    before = settings.read_bytes()
    assert tool.main(["--settings", str(settings)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(settings) in err[0] and "Modules/AdditionalPaths" in err[0], err
    assert settings.read_bytes() == before and not list(tmp_path.glob("*.caml-tmp"))


def test_qt_itself_reads_back_what_it_wrote_plus_the_module(tmp_path: Path) -> None:
    """Real Qt 5 (PyQt5) writes the settings, the tool adds the module, real Qt reads the list."""
    QtCore = pytest.importorskip("PyQt5.QtCore")

    def qt_list(path: Path) -> list:
        value = QtCore.QSettings(str(path), QtCore.QSettings.IniFormat).value(f"{tool.SECTION}/{tool.KEY}")
        return [] if value is None else value if isinstance(value, list) else [value]

    module_dir = _module_dir_named(tmp_path)
    entry = module_dir.resolve().as_posix()
    for n, before in enumerate([["/only/one"], ["/home/josé/中文", " lead", "a,b;c", "C:\\x\\y", "@at", "é1f"], []]):
        settings = tmp_path / f"Slicer-{n}.ini"
        written = QtCore.QSettings(str(settings), QtCore.QSettings.IniFormat)
        written.setValue("General/other", "kept")
        if before:
            written.setValue(f"{tool.SECTION}/{tool.KEY}", before)
        written.sync()
        assert tool.add_module_path(settings, module_dir) is True
        assert qt_list(settings) == before + [entry]
        assert QtCore.QSettings(str(settings), QtCore.QSettings.IniFormat).value("General/other") == "kept"
        if not before:
            continue  # a list of one from Python is a QVariantList, which Qt writes as @Variant: no line to compare
        # The line is the one Qt writes for the same list, byte for byte.
        again = tmp_path / f"qt-{n}.ini"
        rewritten = QtCore.QSettings(str(again), QtCore.QSettings.IniFormat)
        rewritten.setValue(f"{tool.SECTION}/{tool.KEY}", before + [entry])
        rewritten.sync()
        ours = [x for x in settings.read_bytes().splitlines() if x.startswith(b"AdditionalPaths=")]
        qts = [x for x in again.read_bytes().splitlines() if x.startswith(b"AdditionalPaths=")]
        assert ours == qts


def _custom_app(root: Path, launcher: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "MyAppLauncherSettings.ini").write_text(launcher)
    (root / "MyApp").write_text("#!/bin/sh\n")
    return root


def test_reads_application_and_organization_from_the_launcher_settings(tmp_path: Path, monkeypatch) -> None:
    """A Slicer-based application names its settings after itself, not "Slicer" / "slicer.org"."""
    monkeypatch.setattr(tool.sys, "platform", "linux")
    launcher = ("[General]\nuserAdditionalSettingsFileBaseName=\n\n"
                "[Application]\npath=<APPLAUNCHER_DIR>/bin/MyApp-real\nname=MyApp\nrevision=123\n"
                "organizationName=Example Org\norganizationDomain=example.org\n")
    home = _custom_app(tmp_path / "MyApp-1.0-linux-amd64", launcher)
    # Qt's rule outside macOS: the organization name, the domain only when the name is empty.
    assert tool.settings_file(tool.slicer_home(home)) == home / "Example Org" / "MyApp-123.ini"
    assert tool.main([str(home / "MyApp")]) == 0
    assert _paths(home / "Example Org" / "MyApp-123.ini") == [MODULE_DIR.resolve().as_posix()]
    assert not (home / "slicer.org").exists()

    # macOS: the domain first (inside the bundle's Contents).
    contents = _custom_app(tmp_path / "MyApp.app" / "Contents", launcher)
    assert tool.settings_file(tool.slicer_home(tmp_path / "MyApp.app")) == contents / "example.org" / "MyApp-123.ini"

    # No organization name: the domain; a settings base name goes between the name and the revision.
    bare = _custom_app(tmp_path / "bare", "userAdditionalSettingsFileBaseName=-user\n[Application]\nname=MyApp\n"
                                          "revision=7\norganizationDomain=example.org\n")
    assert tool.settings_file(tool.slicer_home(bare)) == bare / "example.org" / "MyApp-user-7.ini"


def test_an_existing_settings_folder_wins_when_the_launcher_names_two(tmp_path: Path, monkeypatch) -> None:
    """Organization name and domain both given: the folder Slicer already made is the one it reads."""
    monkeypatch.setattr(tool.sys, "platform", "linux")
    home = _fake_slicer(tmp_path / "Slicer-5.8.1-linux-amd64")
    (home / "bin" / "SlicerLauncherSettings.ini").write_text(
        "[Application]\nname=Slicer\nrevision=33241\norganizationDomain=slicer.org\norganizationName=NA-MIC\n")
    assert tool.settings_file(tool.slicer_home(home)) == home / "NA-MIC" / "Slicer-33241.ini"  # Qt's choice
    (home / "slicer.org").mkdir()
    assert tool.settings_file(tool.slicer_home(home)) == home / "slicer.org" / "Slicer-33241.ini"
