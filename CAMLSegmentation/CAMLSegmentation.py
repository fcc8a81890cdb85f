"""3D Slicer scripted module for CAML left-atrium segmentation (filled in by the Slicer-extension work)."""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class CAMLSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CAML Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["CAMLSegmentation contributors"]
        self.parent.helpText = "Left-atrium segmentation of MRI with CAML."
        self.parent.acknowledgementText = "CAML: Gao et al., MICCAI 2023 (arXiv 2307.06312)."
