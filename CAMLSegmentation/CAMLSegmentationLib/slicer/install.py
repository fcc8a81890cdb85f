r"""``python -m CAMLSegmentationLib.slicer.install /path/to/Slicer``: load this module in that Slicer.

Adds the folder holding ``CAMLSegmentation.py`` to the *Additional module
paths* of the given 3D Slicer installation, what *Edit > Application
Settings > Modules* does by hand. Slicer reads that list from its
revision-specific settings file (``slicer.app.revisionUserSettings()``, key
``Modules/AdditionalPaths``). An installed Slicer names that file
``<home>/<organization dir>/<application name><base name>-<revision>.ini``
(``qSlicerCoreApplication::slicerRevisionUserSettingsFilePath``), and every
part comes from the launcher settings ``bin/<application name>LauncherSettings.ini``
(``[Application] name``, ``revision``, ``organizationName``,
``organizationDomain``; ``userAdditionalSettingsFileBaseName``): the
organization folder is the organization name, or the domain when the name is
empty, and on macOS the other way round (``ctkAppLauncherSettings::organizationDir``,
after ``QSettings``). So a custom Slicer-based application is found as well
as Slicer itself (``Slicer``, ``slicer.org/Slicer-<revision>.ini``).

* The path is added once: running the script again changes nothing.
* Every other line of the file is kept byte for byte; the list keeps the
  entries already there, as Qt 5 reads them: plain, quoted, with ``\xHHHH``
  escapes, or a whole ``@Variant(...)`` (what a Python script storing a list
  of one path writes). An entry this tool cannot decode stops it with a
  one-line message naming the file, before anything is written.
* The list is written as Qt 5's ``QSettings`` writes it (no INI codec): quotes
  around entries with ``,`` ``;`` ``=`` or edge spaces, ``\`` and ``"``
  escaped, non-ASCII characters as ``\xHHHH`` (UTF-16 code units).
* Close Slicer first: a running Slicer may write its own list back on exit.
* ``--settings FILE`` names the INI file directly (any Slicer layout, or a test).

A path that is not a Slicer installation is a one-line error (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import MODULE_DIR

SECTION = "Modules"
KEY = "AdditionalPaths"
LAUNCHER_SUFFIX = "LauncherSettings.ini"


class InstallError(Exception):
    """The Slicer installation or its settings cannot be used; the message is one line."""


# --------------------------------------------------------------------------- finding the settings file


def _launcher_settings_files(home: Path) -> List[Path]:
    """``<name>LauncherSettings.ini`` in ``bin/`` (installed) or in the home folder (build tree)."""
    found: List[Path] = []
    for folder in (home / "bin", home):
        if folder.is_dir():
            found += sorted(p for p in folder.glob(f"*{LAUNCHER_SUFFIX}")
                            if p.is_file() and len(p.name) > len(LAUNCHER_SUFFIX))
    return found


def slicer_home(path: Path) -> Path:
    """The Slicer home folder for an application folder, a ``Slicer.app`` bundle or the executable."""
    given = path = path.expanduser()
    if not path.exists():
        raise InstallError(f"{given}: no such file or folder")
    if path.is_file():  # the executable: Slicer(.exe) in the home folder, or Contents/MacOS/Slicer on macOS
        path = path.parent.parent if path.parent.name == "MacOS" else path.parent
    if path.suffix == ".app" and (path / "Contents").is_dir():
        path = path / "Contents"
    if not _launcher_settings_files(path) and not (path / "slicer.org").is_dir():
        raise InstallError(f"{given}: not a 3D Slicer installation (no bin/SlicerLauncherSettings.ini "
                           f"or slicer.org/ folder); give the folder Slicer was unpacked or installed in")
    return path


def read_ini(path: Path) -> Dict[str, Dict[str, str]]:
    """An INI file as Qt reads it: ``{section: {key: value}}``, values unescaped (lists joined by ", ")."""
    sections: Dict[str, Dict[str, str]] = {}
    current = sections.setdefault("General", {})
    for line in path.read_bytes().decode("latin-1").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1].strip(), {})
        elif "=" in line:
            key, raw = line.split("=", 1)
            items, _ = qt_unescape(raw)
            current[key.strip()] = ", ".join(items)
    return sections


class LauncherSettings:
    """The names Slicer derives its settings file from, as its launcher settings record them."""

    def __init__(self, name: str = "Slicer", revision: Optional[str] = None, organization_name: str = "",
                 organization_domain: str = "slicer.org", settings_base_name: str = "") -> None:
        self.name = name
        self.revision = revision
        self.organization_name = organization_name
        self.organization_domain = organization_domain
        self.settings_base_name = settings_base_name

    @classmethod
    def read(cls, path: Path) -> LauncherSettings:
        ini = read_ini(path)
        app = ini.get("Application", {})
        fallback_name = path.name[:-len(LAUNCHER_SUFFIX)]
        return cls(name=app.get("name") or fallback_name, revision=app.get("revision") or None,
                   organization_name=app.get("organizationName", ""),
                   organization_domain=app.get("organizationDomain", ""),
                   settings_base_name=ini["General"].get("userAdditionalSettingsFileBaseName", ""))

    def organization_dirs(self, macos: bool) -> List[str]:
        """Folder names for the settings, Qt's choice first: the name (the domain on macOS) unless empty."""
        order = ([self.organization_domain, self.organization_name] if macos
                 else [self.organization_name, self.organization_domain])
        return [d for d in dict.fromkeys(order) if d]

    def settings_file_name(self) -> str:
        return f"{self.name}{self.settings_base_name}-{self.revision}.ini"


def launcher_settings(home: Path, application: Optional[str] = None) -> LauncherSettings:
    """The launcher settings of the application installed at ``home`` (``Slicer`` unless named)."""
    files = _launcher_settings_files(home)
    if not files:
        return LauncherSettings()
    by_name = {p.name[:-len(LAUNCHER_SUFFIX)]: p for p in files}
    for wanted in (application, "Slicer"):
        if wanted and wanted in by_name:
            return LauncherSettings.read(by_name[wanted])
    if len(by_name) == 1:
        return LauncherSettings.read(files[0])
    raise InstallError(f"{home}: several applications here ({', '.join(sorted(by_name))}); "
                       f"give the executable of the one to change, or pass --settings FILE")


def settings_file(home: Path, application: Optional[str] = None) -> Path:
    """The revision-specific settings INI of the Slicer installed at ``home`` (it may not exist yet)."""
    launcher = launcher_settings(home, application)
    macos = sys.platform == "darwin" or home.name == "Contents"
    folders = [home / d for d in launcher.organization_dirs(macos)] or [home / "slicer.org"]
    folder = next((f for f in folders if f.is_dir()), folders[0])
    if launcher.revision is None:
        pattern = re.compile(re.escape(f"{launcher.name}{launcher.settings_base_name}") + r"-\d+\.ini")
        found = sorted((p for f in folders if f.is_dir() for p in f.iterdir() if pattern.fullmatch(p.name)),
                       key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
        raise InstallError(f"{home}: cannot tell this {launcher.name}'s revision (no 'revision=' in its "
                           f"launcher settings, no {folder.name}/{launcher.name}-<revision>.ini); start "
                           f"{launcher.name} once, or pass --settings FILE")
    return folder / launcher.settings_file_name()


# --------------------------------------------------------------------------- Qt's INI value format

_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            '"': '"', "?": "?", "'": "'", "\\": "\\"}
_HEX = "0123456789abcdefABCDEF"


def qt_unescape(raw: str) -> Tuple[List[str], bool]:
    """The strings Qt 5 reads from a raw INI value, and whether it is a list (an unquoted comma).

    ``raw`` holds the file's bytes as Latin-1 characters, which is how Qt 5
    without an INI codec reads them. Escapes: ``\\x`` followed by any number of
    hex digits (one UTF-16 code unit), ``\\`` + octal digits, the C escapes;
    quotes group text and keep spaces; unquoted edge spaces are dropped; an
    unquoted ``;`` starts a comment.
    """
    items: List[str] = []
    current: List[str] = []
    is_list = in_quotes = quoted = False
    keep = 0  # characters of ``current`` that trailing-space trimming must not remove
    i, n = 0, len(raw)

    def skip_spaces(k: int) -> int:
        while k < n and raw[k] in " \t":
            k += 1
        return k

    def chop(chars: List[str]) -> None:
        while len(chars) > keep and chars[-1] in " \t":
            chars.pop()

    i = skip_spaces(i)
    while i < n:
        ch = raw[i]
        if ch == "\\":
            i += 1
            if i >= n:
                break
            ch = raw[i]
            i += 1
            if ch in _ESCAPES:
                current.append(_ESCAPES[ch])
            elif ch == "x" or ch in "01234567":
                digits, base = (_HEX, 16) if ch == "x" else ("01234567", 8)
                start = i if ch == "x" else i - 1
                j = start
                while j < n and raw[j] in digits:
                    j += 1
                if j > start:
                    current.append(chr(int(raw[start:j], base) & 0xFFFF))
                i = j
            keep = len(current)
            continue
        if ch == '"':
            i += 1
            quoted = True
            in_quotes = not in_quotes
            if not in_quotes:
                i = skip_spaces(i)
            keep = len(current)
            continue
        if ch == ";" and not in_quotes:  # the rest of the line is a comment
            break
        if ch == "," and not in_quotes:
            if not quoted:
                chop(current)
            is_list = True
            items.append("".join(current))
            current, quoted, keep = [], False, 0
            i = skip_spaces(i + 1)
            continue
        current.append(ch)
        i += 1
    if not quoted:
        chop(current)
    items.append("".join(current))
    # Qt keeps UTF-16 code units; pair surrogates back into characters.
    items = [s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace") for s in items]
    return items, is_list


def qt_escape(text: str) -> str:
    """One string as Qt 5's ``QSettings`` writes it in an INI file (no codec: ASCII only)."""
    if "\0" in text:  # Qt's variantToString: such a string is marked, a leading @ is doubled
        text = f"@String({text})"
    elif text.startswith("@"):
        text = "@" + text
    units = text.encode("utf-16-le", "surrogatepass")
    out: List[str] = []
    needs_quotes = escape_hex_digit = False
    for k in range(0, len(units), 2):
        code = int.from_bytes(units[k:k + 2], "little")
        ch = chr(code)
        if ch in ";,=":
            needs_quotes = True
        if escape_hex_digit and ch in _HEX:
            out.append(f"\\x{code:x}")
            continue
        escape_hex_digit = False
        if ch == "\0":
            out.append("\\0")
            escape_hex_digit = True
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif ch in '"\\':
            out.append("\\" + ch)
        elif code <= 0x1F or code >= 0x7F:
            out.append(f"\\x{code:x}")
            escape_hex_digit = True
        else:
            out.append(ch)
    result = "".join(out)
    if needs_quotes or (result and (result[0] == " " or result[-1] == " ")):
        result = f'"{result}"'
    return result


def _qstring(data: bytes, pos: int) -> Tuple[str, int]:
    (size,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if size == 0xFFFFFFFF:
        return "", pos
    if pos + size > len(data) or size % 2:
        raise ValueError("a string runs past the end of the value")
    return data[pos:pos + size].decode("utf-16-be", "surrogatepass"), pos + size


def _qvariant_strings(data: bytes, pos: int) -> Tuple[List[str], int]:
    """A QVariant in QDataStream's Qt 4.0 format (what ``@Variant(`` holds) as strings, if it is text."""
    (type_id,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if type_id == 127:  # a user type, named
        (size,) = struct.unpack_from(">I", data, pos)
        name = data[pos + 4:pos + 4 + size].rstrip(b"\0")
        pos += 4 + size
        type_id = {b"QString": 10, b"QStringList": 11, b"QVariantList": 9, b"QList<QVariant>": 9}.get(name, -1)
        if type_id == -1:
            raise ValueError(f"a value of type {name.decode('latin-1')!r}")
    if type_id == 0:  # an invalid QVariant: no entry
        return [], pos
    if type_id == 10:
        text, pos = _qstring(data, pos)
        return [text], pos
    if type_id in (9, 11):
        (count,) = struct.unpack_from(">I", data, pos)
        pos += 4
        strings: List[str] = []
        for _ in range(count):
            if type_id == 11:
                text, pos = _qstring(data, pos)
                strings.append(text)
            else:
                more, pos = _qvariant_strings(data, pos)
                strings += more
        return strings, pos
    raise ValueError(f"a value of Qt type {type_id}, not text")


def qt_value_to_strings(item: str) -> List[str]:
    """An unescaped INI item as Qt's ``stringToVariant`` sees it, turned into the paths it holds."""
    if not item.startswith("@"):
        return [item]
    if item.startswith("@@"):
        return [item[1:]]
    if item == "@Invalid()":
        return []
    if item.startswith("@String(") and item.endswith(")"):
        return [item[len("@String("):-1]]
    if item.startswith("@Variant(") and item.endswith(")"):
        try:
            data = item[len("@Variant("):-1].encode("latin-1")
            strings, _ = _qvariant_strings(data, 0)
        except UnicodeEncodeError as exc:
            raise ValueError("a @Variant(...) with characters beyond Latin-1") from exc
        except (struct.error, UnicodeDecodeError) as exc:
            raise ValueError("a damaged @Variant(...)") from exc
        return strings
    raise ValueError(f"a value Qt stores as {item.split('(', 1)[0]}(...)")


def parse_qt_list(value: str) -> List[str]:
    """A QSettings INI value (raw, as in the file) as the string list Qt's ``toStringList()`` gives."""
    items, is_list = qt_unescape(value)
    if not is_list and items == [""]:
        return []
    paths: List[str] = []
    for item in items:
        paths += qt_value_to_strings(item)
    return paths


def format_qt_list(items: Sequence[str]) -> str:
    """A string list in QSettings' INI form, as Qt 5 writes a ``QStringList``."""
    if not items:
        return "@Invalid()"
    return ", ".join(qt_escape(item) for item in items)


def _find_key(lines: List[str]) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """(index of the [Modules] header, index of its AdditionalPaths line, index where the section ends)."""
    header = key = end = None
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if header is not None and end is None:
                end = n
            if stripped[1:-1].strip() == SECTION:
                header, end = n, None
            continue
        if header is not None and end is None and re.match(rf"\s*{KEY}\s*=", line):
            key = n
    if header is not None and end is None:
        end = len(lines)
    return header, key, end


def _same_path(a: str, b: str) -> bool:
    def norm(p: str) -> str:
        p = os.path.normpath(os.path.expanduser(p.replace("\\", "/")))
        return p.lower() if os.name == "nt" else p
    return norm(a) == norm(b)


def add_module_path(settings: Path, module_dir: Path = MODULE_DIR) -> bool:
    """Add ``module_dir`` to ``[Modules] AdditionalPaths`` of ``settings``; True if the file changed."""
    if not (module_dir / "CAMLSegmentation.py").is_file():
        raise InstallError(f"{module_dir}: no CAMLSegmentation.py here, nothing for Slicer to load")
    # Latin-1 maps each byte to one character, so untouched lines are written back byte for byte
    # (and it is how Qt 5 without an INI codec reads the bytes of a value).
    text = settings.read_bytes().decode("latin-1") if settings.is_file() else ""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    header, key, end = _find_key(lines)
    entry = module_dir.resolve().as_posix()
    try:
        current = parse_qt_list(lines[key].split("=", 1)[1]) if key is not None else []
    except ValueError as exc:
        raise InstallError(f"{settings}: cannot read its {SECTION}/{KEY} ({exc}); nothing was changed: add "
                           f"{entry} in Slicer (Edit > Application Settings > Modules)") from exc
    if any(_same_path(p, entry) for p in current):
        return False
    line = f"{KEY}={format_qt_list(current + [entry])}"
    if key is not None:
        lines[key] = line
    elif header is not None:
        at = end if end is not None else len(lines)
        while at - 1 > header and not lines[at - 1].strip():  # after the section's last entry
            at -= 1
        lines.insert(at, line)
    else:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{SECTION}]", line]
    settings.parent.mkdir(parents=True, exist_ok=True)
    tmp = settings.with_name(settings.name + ".caml-tmp")
    tmp.write_bytes((newline.join(lines) + newline).encode("latin-1"))
    os.replace(tmp, settings)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m CAMLSegmentationLib.slicer.install",
        description="Add the CAMLSegmentation module folder to a 3D Slicer installation's Additional module "
                    "paths (close Slicer first; restart it afterwards).")
    parser.add_argument("slicer", nargs="?", help="the Slicer application folder, Slicer.app, or executable")
    parser.add_argument("--settings", metavar="INI", help="the settings file to edit (default: found from SLICER)")
    args = parser.parse_args(argv)
    try:
        if args.settings:
            settings = Path(args.settings).expanduser()
        elif args.slicer:
            given = Path(args.slicer).expanduser()
            application = given.name.split(".")[0] if given.is_file() else None  # the executable names its app
            settings = settings_file(slicer_home(given), application)
        else:
            raise InstallError("give the Slicer installation folder (or --settings FILE)")
        changed = add_module_path(settings)
    except (InstallError, OSError) as exc:
        print(f"install_in_slicer: error: {exc}", file=sys.stderr)
        return 2
    state = "added to" if changed else "already in"
    print(f"{MODULE_DIR.as_posix()} {state} the Additional module paths in {settings}\n"
          f"Restart Slicer; the module is under Modules > Segmentation > CAML Segmentation.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
