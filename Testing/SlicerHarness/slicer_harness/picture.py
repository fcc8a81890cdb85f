"""The README's picture of the panel: the module's Widget, on real Qt (offscreen), after it segmented the phantom.

``make screenshot`` runs ``python -m slicer_harness.picture Resources/Panel.png``; the test suite calls
``segment_phantom_and_render`` on its own harness, so the picture's path is the one the tests drive.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from PyQt5 import QtGui

from .pythonqt import unwrap

#: Width x height asked of the panel (Qt keeps it no narrower than its layout needs): its content, no more.
PICTURE_SIZE = (420, 625)


def segment_phantom_and_render(harness: Any, out: Path, quality: str = "standard", timeout: float = 600.0) -> Any:
    """Enter the module, load the phantom, pick it as the input, press Segment, wait, save the panel as a PNG.

    Returns the Python widget, so a caller can check what the picture shows. The run
    uses the bundled model through the real ``caml segment`` child, as a user's click does.
    """
    panel = harness.openModule("CAMLSegmentation")
    ui = panel.ui
    phantom = panel.logic.loadSamplePhantom()
    unwrap(ui.inputVolumeSelector).chooseAsUser(phantom)
    combo = unwrap(ui.qualitySelector)
    combo.setCurrentIndex(combo.findData(quality))
    combo.activated.emit(combo.currentIndex())
    button = unwrap(ui.segmentButton)
    if not button.isEnabled():
        raise RuntimeError(f"Segment is disabled: {button.toolTip()}")
    button.click()
    harness.waitUntil(lambda: panel._run is None, timeout, "the segmentation of the phantom to end")
    if not ui.statusLabel.text.startswith("Done."):
        raise RuntimeError(f"the segmentation did not finish: {ui.statusLabel.text}")
    for name in ("advancedCollapsibleButton", "logCollapsibleButton", "activeLearningCollapsibleButton"):
        unwrap(getattr(ui, name)).setCollapsed(True)
    widget = harness.panel("CAMLSegmentation")
    widget.resize(*PICTURE_SIZE)
    harness.processEvents(0.2)
    image = widget.grab().toImage()
    # A panel has few colours: a palette image is a fraction of the size of an RGB one, and looks the same.
    image = image.convertToFormat(QtGui.QImage.Format_Indexed8)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out), "PNG", 0):  # 0: the most compression
        raise RuntimeError(f"could not write {out}")
    return panel


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the PNG to write (make screenshot: Resources/Panel.png)")
    parser.add_argument("--quality", choices=("standard", "fast"), default="standard")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    repo = Path(__file__).resolve().parents[3]
    sys.path.insert(0, str(repo / "CAMLSegmentation"))
    from . import install

    harness = install()
    harness.loadScriptedModule("CAMLSegmentation", repo / "CAMLSegmentation" / "CAMLSegmentation.py")
    harness.app.startupCompleted.emit()
    try:
        panel = segment_phantom_and_render(harness, args.out.resolve(), args.quality)
        print(f"{args.out}: {panel.ui.statusLabel.text}")
    finally:
        python = harness.panel("CAMLSegmentation").self()
        python.cleanup()
        errors = harness.takeErrors()
        harness.uninstall()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
