"""The module's parameter node: the single source of the panel's state, saved with the scene."""

from __future__ import annotations

from typing import Any, Dict

#: Speed vs quality: the engine's inference protocol (``caml segment --protocol``) and whether
#: it uses the test-time flips (the TTA box starts there; tests check these match the engine).
QUALITY_PRESETS: Dict[str, Dict[str, Any]] = {
    "standard": {"protocol": "default", "tta": True},
    "fast": {"protocol": "fast", "tta": False},
}
DEVICES = ("auto", "cpu", "cuda")
#: The largest-component choices the panel offers, as (label, ``largestComponent`` value): None is the
#: model's own choice (stored with its weights; ``caml segment`` gets neither --lcc nor --no-lcc).
LARGEST_COMPONENT_CHOICES = (("Model's choice", None), ("Always", True), ("Never", False))


def matchesQualityPreset(params: CAMLSegmentationParameters) -> bool:
    """The advanced options are what the quality preset sets (else the panel shows "Custom")."""
    return params.tta == QUALITY_PRESETS[params.quality]["tta"]


class CAMLSegmentationParameters:
    """Typed access to the module's parameter node (a ``vtkMRMLScriptedModuleNode``).

    The node is the single source of the panel's state and is saved with the scene.
    """

    _NODE_ROLES = {"inputVolume": "InputVolume", "roi": "ROI",
                   "outputSegmentation": "OutputSegmentation", "uncertaintyVolume": "UncertaintyVolume"}
    # The defaults are the settings the bundled model's card was scored with (`caml segment`'s
    # defaults: dense averaged windows with test-time flips, and the largest-component filter as
    # the model's validation chose it: "model" passes neither --lcc nor --no-lcc).
    _DEFAULTS = {"model": "", "device": "auto", "quality": "standard",
                 "tta": str(QUALITY_PRESETS["standard"]["tta"]).lower(),
                 "uncertainty": "false", "largestComponent": "model"}

    def __init__(self, node: Any) -> None:
        object.__setattr__(self, "node", node)

    def setDefaults(self) -> None:
        for key, value in self._DEFAULTS.items():
            if not self.node.GetParameter(key):
                self.node.SetParameter(key, value)

    def __getattr__(self, name: str) -> Any:
        if name in self._NODE_ROLES:
            return self.node.GetNodeReference(self._NODE_ROLES[name])
        if name in ("tta", "uncertainty"):
            return (self.node.GetParameter(name) or self._DEFAULTS[name]) == "true"
        if name == "largestComponent":  # None: the model's own choice (stored with its weights)
            return {"true": True, "false": False}.get(self.node.GetParameter(name) or self._DEFAULTS[name])
        if name == "quality":  # a scene saved by an older version may name a retired preset
            value = self.node.GetParameter(name)
            return value if value in QUALITY_PRESETS else self._DEFAULTS[name]
        if name in self._DEFAULTS:
            return self.node.GetParameter(name) or self._DEFAULTS[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._NODE_ROLES:
            self.node.SetNodeReferenceID(self._NODE_ROLES[name], value.GetID() if value is not None else None)
            return
        if name not in self._DEFAULTS:
            raise AttributeError(name)
        if name == "device" and value not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {value!r}")
        if name == "quality" and value not in QUALITY_PRESETS:
            raise ValueError(f"quality must be one of {sorted(QUALITY_PRESETS)}, not {value!r}")
        if name == "largestComponent" and value not in (None, True, False):
            raise ValueError(f"largestComponent must be None (the model's choice), True or False, not {value!r}")
        if value is None and name == "largestComponent":
            value = "model"
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        self.node.SetParameter(name, text)
