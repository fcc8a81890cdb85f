"""``python -m CAMLSegmentationLib.slicer.install /path/to/Slicer``: load this module in that Slicer.

Adds the folder holding ``CAMLSegmentation.py`` to the *Additional module
paths* of the given 3D Slicer installation, what *Edit > Application
Settings > Modules* does by hand. Slicer reads that list from its
revision-specific settings file (``slicer.app.revisionUserSettings()``,
key ``Modules/AdditionalPaths``), an INI file named ``Slicer-<revision>.ini``
that an installed Slicer keeps in ``<Slicer home>/slicer.org/`` (inside
``Slicer.app/Contents`` on macOS) and a build tree next to the user settings.

* The path is added once: running the script again changes nothing.
* Everything else in the file is kept byte for byte.
* Close Slicer first: a running Slicer may write its own list back on exit.
* ``--settings FILE`` names the INI file directly (any Slicer layout, or a test).

A path that is not a Slicer installation is a one-line error (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .. import MODULE_DIR

SECTION = "Modules"
KEY = "AdditionalPaths"


class InstallError(Exception):
    """The Slicer installation or its settings cannot be used; the message is one line."""


# --------------------------------------------------------------------------- finding the settings file


def slicer_home(path: Path) -> Path:
    """The Slicer home folder for an application folder, a ``Slicer.app`` bundle or the executable."""
    given = path = path.expanduser()
    if not path.exists():
        raise InstallError(f"{given}: no such file or folder")
    if path.is_file():  # the executable: Slicer(.exe) in the home folder, or Contents/MacOS/Slicer on macOS
        path = path.parent.parent if path.parent.name == "MacOS" else path.parent
    if path.suffix == ".app" and (path / "Contents").is_dir():
        path = path / "Contents"
    launcher = [path / "bin" / "SlicerLauncherSettings.ini", path / "SlicerLauncherSettings.ini"]
    if not any(p.is_file() for p in launcher) and not (path / "slicer.org").is_dir():
        raise InstallError(f"{given}: not a 3D Slicer installation (no bin/SlicerLauncherSettings.ini "
                           f"or slicer.org/ folder); give the folder Slicer was unpacked or installed in")
    return path


def _launcher_revision(home: Path) -> Optional[str]:
    for launcher in (home / "bin" / "SlicerLauncherSettings.ini", home / "SlicerLauncherSettings.ini"):
        if launcher.is_file():
            match = re.search(r"^\s*revision\s*=\s*(\S+)\s*$", launcher.read_text(errors="replace"), re.M)
            if match:
                return match.group(1)
    return None


def settings_file(home: Path) -> Path:
    """The revision-specific settings INI of the Slicer installed at ``home`` (it may not exist yet)."""
    folder = home / "slicer.org"
    revision = _launcher_revision(home)
    if revision is None and folder.is_dir():
        found = sorted(folder.glob("Slicer-*.ini"), key=lambda p: p.stat().st_mtime)
        found = [p for p in found if re.fullmatch(r"Slicer-\d+\.ini", p.name)]
        if found:
            return found[-1]
    if revision is None:
        raise InstallError(f"{home}: cannot tell this Slicer's revision (no 'revision=' in "
                           f"bin/SlicerLauncherSettings.ini, no slicer.org/Slicer-<revision>.ini); start Slicer "
                           f"once, or pass --settings FILE")
    return folder / f"Slicer-{revision}.ini"


# --------------------------------------------------------------------------- Qt's INI list format


def parse_qt_list(value: str) -> List[str]:
    """A QSettings INI value as the string list Qt reads from it (comma-separated, optionally quoted)."""
    value = value.strip()
    if value in ("", "@Invalid()"):
        return []
    items, current, quoted, i = [], [], False, 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            current.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(nxt, nxt))
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current).strip())
    return items


def format_qt_list(items: Sequence[str]) -> str:
    """A string list in QSettings' INI form: quoted where needed, backslashes and quotes escaped."""
    if not items:
        return "@Invalid()"
    out = []
    for item in items:
        text = item.replace("\\", "\\\\").replace('"', '\\"')
        if any(c in item for c in ',;="') or item != item.strip() or item.startswith("@"):
            text = f'"{text}"'
        out.append(text)
    return ", ".join(out)


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
    text = settings.read_text(encoding="utf-8") if settings.is_file() else ""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    header, key, end = _find_key(lines)
    entry = module_dir.resolve().as_posix()
    current = parse_qt_list(lines[key].split("=", 1)[1]) if key is not None else []
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
    tmp.write_text(newline.join(lines) + newline, encoding="utf-8")
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
            settings = settings_file(slicer_home(Path(args.slicer)))
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
