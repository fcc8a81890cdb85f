"""``CAMLSegmentationLogic``: everything the panel does, usable without it (and without Qt).

Parameters, dependency checks, the warm ``caml worker`` child process that
segments (one per session, the model kept loaded), turning its output into a
segmentation node, the Segment Editor hand-over, the sample
phantom, and (mixed in from ``al_logic``) the active-learning loop. Runs on any
MRML scene: the Slicer application's or the ``slicer-core`` wheels'. Heavy
imports (the engine's numpy/SimpleITK code) happen inside the methods; torch is
never imported in this process.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import slicer

from .al_logic import ActiveLearningLogicMixin
from .framework import IN_SLICER_APP, MODULE_NAME, TORCH_REQUIREMENT, ScriptedLoadableModuleLogic, _, moduleResourcePath
from .parameters import QUALITY_PRESETS, CAMLSegmentationParameters
from .review import UncertainRegionReviewMixin
from .runs import SegmentationRun

#: What the Sample Data module shows: the project's phantom, generated here (never downloaded).
SAMPLE_NAME = "CAMLPhantom"
SAMPLE_CATEGORY = "CAML Segmentation"


def samplePhantomPath() -> Path:
    """Where the phantom's NRRD file lives: ``$CAML_HOME/samples`` (``~/.caml/samples``)."""
    from CAMLSegmentationLib.model.catalog import caml_home

    return caml_home() / "samples" / f"{SAMPLE_NAME}.nrrd"


def ensureSamplePhantomFile() -> Path:
    """Write the phantom's NRRD once (a second or two of numpy); later calls find it and return at once."""
    path = samplePhantomPath()
    if path.is_file() and path.stat().st_size > 0:
        return path
    from CAMLSegmentationLib.io.phantom import PHANTOM_SEED, mri_phantom
    from CAMLSegmentationLib.slicer import mrml_bridge

    volume, _label = mri_phantom(seed=PHANTOM_SEED)
    scene = slicer.vtkMRMLScene()  # a private scene: nothing appears in the user's
    node = mrml_bridge.volume_to_node(volume, scene, SAMPLE_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{time.time_ns()}.partial.nrrd")  # another Slicer may write too
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(partial))
    storage.SetUseCompression(True)
    try:
        if not storage.WriteData(node):
            raise OSError(f"cannot write {partial}")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def loadSamplePhantomFromSource(source: Any) -> Any:
    """The Sample Data button: load the phantom as ``downloadSample`` does, then show it in the views."""
    import SampleData

    ensureSamplePhantomFile()  # it may have been deleted since start-up
    nodes = [n for n in SampleData.SampleDataLogic().downloadFromSource(source) if hasattr(n, "IsA")]
    if not nodes:
        raise RuntimeError(_("The CAML phantom could not be loaded from {path}.").format(path=samplePhantomPath()))
    node = nodes[0]
    node.SetAttribute("CAMLSegmentation.Synthetic", "phantom: not patient data")
    slicer.util.setSliceViewerLayers(background=node, fit=True)
    return node


def registerSampleData() -> None:
    """The synthetic MRI-like phantom in the Sample Data module ("CAML Segmentation" category).

    No patient data ships with the extension. Slicer's ``SampleData.downloadSample(name)``
    never calls a source's custom downloader (only the module's button does): it copies
    each URI into the cache and loads the file. So the phantom is written once to a local
    file (``ensureSamplePhantomFile``) whose ``file://`` URI is the source's, and both
    paths load that file; the button also shows the volume in the slice views.
    """
    try:
        import SampleData
    except ImportError:  # Sample Data module disabled
        return
    try:
        path = ensureSamplePhantomFile()
    except Exception as exc:  # one line: the module still works, only its sample is missing
        logging.warning("CAMLSegmentation: no %s sample data: %s", SAMPLE_NAME, str(exc).splitlines()[0] if str(exc)
                        else type(exc).__name__)
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY, sampleName=SAMPLE_NAME, uris=[path.as_uri()], fileNames=[path.name],
        nodeNames=[SAMPLE_NAME], loadFileType="VolumeFile",
        thumbnailFileName=str(moduleResourcePath("Icons/CAMLSegmentation.png")),
        customDownloader=loadSamplePhantomFromSource)


class CAMLSegmentationLogic(ActiveLearningLogicMixin, UncertainRegionReviewMixin, ScriptedLoadableModuleLogic):
    """All behaviour of the module; works on any MRML scene, with or without the Slicer GUI."""

    #: Python packages ``caml segment`` needs besides torch (import name -> pip requirement). h5py is
    #: not among them: only ``.h5`` input and training read HDF5, and they import it when they do.
    ENGINE_REQUIREMENTS = {"numpy": "numpy>=1.21", "scipy": "scipy>=1.7", "SimpleITK": "SimpleITK>=2.1",
                           "filelock": "filelock>=3.0"}
    #: What segmenting needs instead of PyTorch when the model has an ONNX export (tens of MB, not GBs):
    #: any one of the engine's export runtimes (``inference.backends.EXPORT_RUNTIMES``: import name ->
    #: pip requirement here). With none installed, the engine's first choice is offered: OpenVINO.
    EXPORT_RUNTIME_REQUIREMENTS = {"openvino": "openvino>=2024.0", "onnxruntime": "onnxruntime>=1.16"}
    #: Packages Slicer bundles: never reinstalled or upgraded from here.
    SLICER_BUNDLED = ("numpy", "SimpleITK", "requests")

    def __init__(self, scene: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        #: argv prefix that runs ``caml`` (replaceable, e.g. by a test's stand-in engine).
        self.engineCommand: Optional[List[str]] = None
        #: Runs started here and not finished or cancelled yet: closing the scene cancels them.
        self._activeRuns: List[SegmentationRun] = []
        self._sceneCloseObserver: Optional[int] = None
        #: The warm ``caml worker`` (``engineWorker``), None until the first Segment.
        self._engineWorker: Any = None

    # -- parameters --------------------------------------------------------------
    def getParameterNode(self) -> CAMLSegmentationParameters:
        """The module's singleton parameter node in ``self.scene``, with defaults filled in.

        Found as the scripted-module base class finds it: by singleton tag, with the
        ``ModuleName`` attribute that node selectors filter on (restored after a scene close).
        """
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        elif node.GetAttribute("ModuleName") != MODULE_NAME:
            node.SetAttribute("ModuleName", MODULE_NAME)
        params = CAMLSegmentationParameters(node)
        params.setDefaults()
        if not params.model:
            params.model = self.defaultModelId(self.availableModels())
        return params

    @staticmethod
    def applyQualityPreset(params: CAMLSegmentationParameters, quality: str) -> None:
        """Set quality and the test-time flips it starts with."""
        params.quality = quality
        params.tta = QUALITY_PRESETS[quality]["tta"]

    # -- models ------------------------------------------------------------------
    def availableModels(self, catalogs: Optional[Sequence[Tuple[Path, str]]] = None) -> List[Dict[str, Any]]:
        """Bundled then user-trained models, read by the engine's catalog code (the ``caml`` CLI's view).

        ``catalogs`` are ``(models.json, "bundled" | "user")`` pairs (default: the engine's
        bundled and user catalogs). Returns dicts with ``id``, ``label``, ``source`` and the
        engine's ``entry``. A catalog that cannot be read is skipped (logged), never fatal
        for the panel; an id listed twice keeps its first entry.
        """
        from CAMLSegmentationLib.model import catalog

        if catalogs is None:
            catalogs = [(catalog.bundled_catalog_path(), "bundled"), (catalog.user_catalog_path(), "user")]
        models: List[Dict[str, Any]] = []
        seen = set()
        for path, source in catalogs:
            try:
                entries = catalog.read_catalog(path, source)
            except catalog.CatalogError as exc:
                logging.warning("CAMLSegmentation: ignoring model catalog: %s", exc)
                continue
            for entry in entries:
                if entry.id in seen:
                    logging.warning("CAMLSegmentation: model id %r listed again in %s; ignored", entry.id, path)
                    continue
                seen.add(entry.id)
                label = (f"{entry.title} ({entry.id} v{entry.version}, {source})" if entry.title
                         else f"{entry.id} (v{entry.version}, {source})")
                models.append({"id": entry.id, "label": label, "source": source, "entry": entry})
        return models

    @staticmethod
    def defaultModelId(models: Sequence[Dict[str, Any]]) -> str:
        """The engine's choice (``catalog.default_model``) among ``models``; "" when there is none."""
        from CAMLSegmentationLib.model import catalog

        entry = catalog.default_model([m["entry"] for m in models])
        return entry.id if entry is not None else ""

    # -- dependencies ------------------------------------------------------------
    @staticmethod
    def installedTorchVersion() -> Optional[str]:
        """The installed PyTorch's version, read from its package metadata (torch is not imported here)."""
        import importlib.metadata

        try:
            return importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return None

    @staticmethod
    def versionSatisfies(version: str, requirement: str = TORCH_REQUIREMENT) -> bool:
        """``version`` (e.g. ``2.13.0+cpu``) against a ``>=X.Y`` requirement, by its leading numbers."""
        import re

        def numbers(text: str) -> Tuple[int, ...]:
            return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])

        minimum = requirement.strip()
        if not minimum.startswith(">="):
            raise ValueError(f"only '>=' requirements are supported, not {requirement!r}")
        have, need = numbers(version), numbers(minimum[2:])
        width = max(len(have), len(need))
        return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))

    def torchAvailable(self) -> bool:
        """PyTorch is installed and recent enough (``TORCH_REQUIREMENT``)."""
        version = self.installedTorchVersion()
        return version is not None and self.versionSatisfies(version)

    def missingPackages(self, requirements: Optional[Dict[str, str]] = None) -> List[str]:
        """pip requirements of the engine whose package cannot be imported here."""
        import importlib.util

        requirements = self.ENGINE_REQUIREMENTS if requirements is None else requirements
        return [req for name, req in requirements.items() if importlib.util.find_spec(name) is None]

    def missingExportRuntime(self) -> List[str]:
        """``[]`` when one of the engine's export runtimes (OpenVINO, ONNX Runtime) can be imported here,
        else the pip requirement of the one to install: the engine's first choice (``--backend auto``)."""
        from CAMLSegmentationLib.inference.backends import EXPORT_RUNTIMES, installed_runtimes

        if installed_runtimes():
            return []
        first = next(iter(EXPORT_RUNTIMES.values()))
        return [self.EXPORT_RUNTIME_REQUIREMENTS[first]]

    def segmentationNeedsTorch(self, params: CAMLSegmentationParameters) -> bool:
        """Whether segmenting with ``params`` needs PyTorch: a GPU asked for, or a model without an ONNX
        export (of sub-model A too when the uncertainty map is asked for). Otherwise the engine runs the
        export with OpenVINO or ONNX Runtime (``caml segment --backend auto``). An unknown model needs
        torch: the engine's own error then names the problem."""
        if params.device.startswith("cuda"):
            return True
        from CAMLSegmentationLib.model.catalog import CatalogError, default_model, find_model

        try:
            entry = find_model(params.model) if params.model else default_model()
        except CatalogError:
            return True
        needed = {"v", "a"} if params.uncertainty else {"v"}
        return entry is None or not needed <= set(entry.onnx)

    def ensureDependencies(self, confirm: Callable[[str], bool],
                           installTorch: Optional[Callable[[], Any]] = None,
                           pipInstall: Optional[Callable[[List[str]], Any]] = None,
                           params: Optional[CAMLSegmentationParameters] = None) -> bool:
        """Offer, with one confirmation, to install what is missing; True when all is there.

        ``params``: check for segmenting with these parameters only: when the model has
        an ONNX export and no GPU is asked for, the engine's light packages and one
        export runtime suffice (``segmentationNeedsTorch``): ``openvino`` is offered
        when neither it nor ``onnxruntime`` is installed. Without ``params`` (training,
        active learning) PyTorch is needed. torch comes from the PyTorch extension (which
        picks the CUDA build for the driver), at ``TORCH_REQUIREMENT`` or newer; the other
        packages from pip, never touching the ones Slicer bundles. Nothing is imported:
        torch is only ever loaded by the ``caml`` child process, so upgrading it here
        needs no restart.
        """
        version = self.installedTorchVersion()
        withTorch = params is None or self.segmentationNeedsTorch(params)
        needTorch = withTorch and not self.torchAvailable()

        def missing() -> List[str]:
            return [p for p in self.missingPackages() if not any(p.startswith(b) for b in self.SLICER_BUNDLED)
                    ] + ([] if withTorch else self.missingExportRuntime())

        packages = missing()
        if not needTorch and not packages:
            return True
        torchLine = (_("PyTorch {requirement} (installed: {version}), through the PyTorch extension").format(
            requirement=TORCH_REQUIREMENT, version=version) if version else
            _("PyTorch (through the PyTorch extension)"))
        what = ([torchLine] if needTorch else []) + packages
        if not confirm(_("CAML Segmentation needs these Python packages, which will be downloaded and "
                         "installed now (this can take several minutes):") + "\n\n  " + "\n  ".join(what)):
            return False
        if needTorch:
            (installTorch or self._installTorchWithPyTorchExtension)()
        if packages:
            (pipInstall or self._pipInstall)(packages)
        return (not withTorch or self.torchAvailable()) and not missing()

    @staticmethod
    def _installTorchWithPyTorchExtension() -> None:
        try:
            import PyTorchUtils
        except ImportError as exc:
            raise RuntimeError(_("The PyTorch extension is required: install 'PyTorch' from the "
                                 "Extensions Manager and restart Slicer.")) from exc
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError(_("PyTorch could not be installed."))

    @staticmethod
    def _pipInstall(requirements: List[str]) -> None:
        """``slicer.packaging.pip_ensure`` (Slicer 5.12+; the user already confirmed), else ``pip_install``."""
        try:
            from slicer.packaging import pip_ensure
        except ImportError:
            pip_ensure = None
        if pip_ensure is not None:
            pip_ensure(requirements, prompt_install=False, requester=MODULE_NAME)
        else:
            slicer.util.pip_install(requirements)

    # -- the segmentation job ----------------------------------------------------
    def segmentCommand(self, inputPath: Path, outputPath: Path, params: CAMLSegmentationParameters,
                       device: str, uncertaintyPath: Optional[Path] = None) -> List[str]:
        """argv of the ``caml segment`` run the parameters describe (what the warm worker is asked for)."""
        from CAMLSegmentationLib.slicer.jobs import caml_command

        args = ["segment", *self.segmentArguments(inputPath, outputPath, params, device, uncertaintyPath)]
        prefix = self.engineCommand
        return [*prefix, *args] if prefix else caml_command(*args)

    @staticmethod
    def segmentArguments(inputPath: Path, outputPath: Path, params: CAMLSegmentationParameters,
                         device: str, uncertaintyPath: Optional[Path] = None) -> List[str]:
        """``caml segment``'s arguments (after the word ``segment``) for these parameters."""
        args = [str(inputPath), str(outputPath), "--device", device,
                "--protocol", QUALITY_PRESETS[params.quality]["protocol"], "--progress", "json"]
        if params.model:
            args += ["--model", params.model]
        args.append("--tta" if params.tta else "--no-tta")
        if params.largestComponent is not None:
            args.append("--lcc" if params.largestComponent else "--no-lcc")
        if uncertaintyPath is not None:
            args += ["--uncertainty", str(uncertaintyPath)]
        return args

    @staticmethod
    def makeWorkDirectory() -> Path:
        """A fresh folder for one job's files: under Slicer's temporary folder in the application."""
        if IN_SLICER_APP:
            return Path(slicer.util.tempDirectory("CAMLSegmentation-"))
        return Path(tempfile.mkdtemp(prefix="CAMLSegmentation-"))

    def engineWorker(self) -> Any:
        """The warm engine (``jobs.EngineWorker``, a ``caml worker`` child) this Logic's Segment clicks go
        to: started on the first call, and again when it has died or ``engineCommand`` changed.

        It keeps the model loaded between clicks, so a second Segment costs the network and the
        file I/O, not the imports and the load. ``stopEngineWorker`` ends it (the panel's cleanup);
        so does this Logic's garbage collection, or the end of Slicer (the worker's stdin closes).
        """
        from CAMLSegmentationLib.slicer.jobs import EngineWorker, caml_command

        argv = [*self.engineCommand, "worker"] if self.engineCommand else caml_command("worker")
        worker = self._engineWorker
        if worker is not None and worker.alive and worker.argv == argv:
            return worker
        if worker is not None:
            worker.stop()
        worker = self._engineWorker = EngineWorker(argv).start()
        weakref.finalize(self, worker.stop)
        return worker

    def stopEngineWorker(self) -> None:
        """End the warm engine (a request it is running is cancelled); the next Segment starts another."""
        worker, self._engineWorker = self._engineWorker, None
        if worker is not None:
            worker.stop()

    def startSegmentation(self, params: CAMLSegmentationParameters) -> SegmentationRun:
        """Write the input (cropped to the ROI), send it to the warm engine (``engineWorker``), return the run.

        The device choice goes to the engine as is (``auto`` included): the child
        process picks CUDA or the CPU and reports which it used, so Slicer's own
        process never imports torch.
        """
        from CAMLSegmentationLib.slicer import mrml_bridge

        inputNode = params.inputVolume
        if inputNode is None or inputNode.GetImageData() is None:
            raise ValueError(_("Select an input volume first."))
        volume = mrml_bridge.volume_from_node(inputNode)
        start, stop = (0, 0, 0), volume.shape
        if params.roi is not None:
            start, stop = mrml_bridge.roi_index_bounds(params.roi, inputNode)
            volume = mrml_bridge.crop_volume(volume, start, stop)

        workDir = self.makeWorkDirectory()
        try:
            inputPath = workDir / "input.nrrd"
            writeVolume(volume, inputPath, compress=False)
            outputPath = workDir / "segmentation.nrrd"
            uncertaintyPath = workDir / "uncertainty.nrrd" if params.uncertainty else None
            args = self.segmentArguments(inputPath, outputPath, params, params.device, uncertaintyPath)
            outputs = [outputPath] + ([uncertaintyPath] if uncertaintyPath else [])
            job = self.engineWorker().submit(args, outputs=outputs)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        fullShape = tuple(int(d) for d in inputNode.GetImageData().GetDimensions())
        run = SegmentationRun(job, workDir, inputNode, params.outputSegmentation, volume, start, fullShape,
                              outputPath, uncertaintyPath, params.device)
        self._track(run)
        return run

    # -- runs and the scene --------------------------------------------------------
    def _track(self, run: SegmentationRun) -> None:
        self._activeRuns.append(run)
        if self._sceneCloseObserver is None:
            self._sceneCloseObserver = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                              self._onSceneStartClose)

    def _forget(self, run: SegmentationRun) -> None:
        if run in self._activeRuns:
            self._activeRuns.remove(run)
        if not self._activeRuns and self._sceneCloseObserver is not None:
            self.scene.RemoveObserver(self._sceneCloseObserver)
            self._sceneCloseObserver = None

    def _onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        """The scene is being closed: a result must not land in the next, empty scene. Cancel every run."""
        for run in list(self._activeRuns):
            run.abandoned = _("the scene was closed while it ran")
            self.cancel(run)

    def inputStillInScene(self, run: SegmentationRun) -> bool:
        node = run.inputNode
        return (node is not None and node.GetScene() is self.scene
                and self.scene.GetNodeByID(node.GetID()) is node)

    def cancel(self, run: SegmentationRun) -> None:
        """Kill the job and its children; nothing is added to the scene."""
        run.job.cancel()
        run.job.wait(timeout=30)
        shutil.rmtree(run.workDir, ignore_errors=True)
        self._forget(run)

    def finishSegmentation(self, run: SegmentationRun,
                           params: Optional[CAMLSegmentationParameters] = None) -> Any:
        """Turn a finished run into the "Left atrium" segment (and the uncertainty volume); returns the node.

        Raises ``RuntimeError`` if the job failed or was cancelled, or if its input
        volume is no longer in the scene (closed or deleted meanwhile); the scene is
        then unchanged.
        """
        from CAMLSegmentationLib.io.volume import read_image
        from CAMLSegmentationLib.slicer import mrml_bridge

        try:
            state = run.job.wait()
            run.poll()
            if run.abandoned:
                raise RuntimeError(_("Segmentation cancelled: {why}.").format(why=run.abandoned))
            if state != "done":
                raise RuntimeError(f"Segmentation {state}: {run.job.error}" if run.job.error
                                   else f"Segmentation {state}.")
            if not self.inputStillInScene(run):
                raise RuntimeError(_("The input volume is no longer in the scene: the result was discarded."))
            if run.outputNode is not None and self.scene.GetNodeByID(run.outputNode.GetID()) is not run.outputNode:
                run.outputNode = None  # the chosen output node was deleted meanwhile: make a new one
            result = read_image(run.outputPath)
            if not result.same_geometry(run.engineInput, tol=1e-3):
                raise RuntimeError(f"the engine's mask ({result.shape} voxels) is not on the input's grid "
                                   f"({run.engineInput.shape} voxels)")
            mask = mrml_bridge.paste_mask((result.array > 0.5).astype("uint8"), run.fullShape, run.cropStart)
            segNode, _segmentId = mrml_bridge.mask_to_segmentation_node(
                mask, run.inputNode, self.scene, segmentation_node=run.outputNode)
            if run.outputNode is None:
                segNode.SetName(self.scene.GenerateUniqueName(f"{run.inputNode.GetName()} left atrium"))
            if params is not None:
                params.outputSegmentation = segNode
            if run.uncertaintyPath is not None and run.uncertaintyPath.exists():
                uncertaintyNode = self.loadUncertainty(run, read_image(run.uncertaintyPath),
                                                       params.uncertaintyVolume if params else None)
                if params is not None:
                    params.uncertaintyVolume = uncertaintyNode
            return segNode
        finally:
            shutil.rmtree(run.workDir, ignore_errors=True)
            self._forget(run)

    def loadUncertainty(self, run: SegmentationRun, uncertainty: Any, node: Any = None) -> Any:
        """Put the uncertainty map (on the cropped grid) into a volume node on the input's full grid."""
        import numpy as np

        from CAMLSegmentationLib.slicer import mrml_bridge

        if not uncertainty.same_geometry(run.engineInput, tol=1e-3):
            raise RuntimeError("the engine's uncertainty map is not on the input's grid")

        full = mrml_bridge.volume_from_node(run.inputNode)
        values = np.zeros(run.fullShape, dtype=np.float32)
        sl = tuple(slice(s, s + n) for s, n in zip(run.cropStart, uncertainty.shape))
        values[sl] = uncertainty.array
        full.array = values
        if node is None:
            node = mrml_bridge.volume_to_node(
                full, self.scene, self.scene.GenerateUniqueName(f"{run.inputNode.GetName()} uncertainty"))
        else:
            mrml_bridge.volume_to_node(full, self.scene, node=node)
        node.SetAndObserveTransformNodeID(run.inputNode.GetTransformNodeID())
        self.setupUncertaintyDisplay(node)
        return node

    @staticmethod
    def setupUncertaintyDisplay(node: Any) -> None:
        """Show the map as a 0..1 heat overlay (the Widget puts it in the slice foreground)."""
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        scene = node.GetScene()
        for colorId in ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeRed"):
            if scene is not None and scene.GetNodeByID(colorId) is not None:
                display.SetAndObserveColorNodeID(colorId)
                break

    def segment(self, params: CAMLSegmentationParameters,
                progress: Optional[Callable[[SegmentationRun], None]] = None,
                timeout: Optional[float] = None) -> Any:
        """Blocking convenience for scripts and tests: start, follow, finish; returns the segment's node.

        ``progress(run)`` is called about ten times a second while waiting (the self-test
        passes one that processes Qt events, so Slicer stays responsive).
        """
        run = self.startSegmentation(params)
        deadline = None if timeout is None else time.time() + timeout
        while run.running:
            run.poll()
            if progress is not None:
                progress(run)
            if deadline is not None and time.time() > deadline:
                self.cancel(run)
                raise TimeoutError(f"segmentation did not finish within {timeout} s")
            run.job.wait(0.1)
        return self.finishSegmentation(run, params)

    # -- sample data ---------------------------------------------------------------
    def loadSamplePhantom(self, name: str = SAMPLE_NAME) -> Any:
        """Add the synthetic MRI-like phantom (the README picture's image) to the scene as a volume node."""
        from CAMLSegmentationLib.io.phantom import PHANTOM_SEED, mri_phantom
        from CAMLSegmentationLib.slicer import mrml_bridge

        volume, _label = mri_phantom(seed=PHANTOM_SEED)
        node = mrml_bridge.volume_to_node(volume, self.scene, self.scene.GenerateUniqueName(name))
        node.SetAttribute("CAMLSegmentation.Synthetic", "phantom: not patient data")
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        return node

    @staticmethod
    def sourceVolumeOf(segmentationNode: Any) -> Any:
        """The volume a segmentation was made on: its reference-geometry node (None if it has none)."""
        if segmentationNode is None:
            return None
        return segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())

    def setInputVolume(self, params: CAMLSegmentationParameters, volumeNode: Any) -> None:
        """Select the input; an output segmentation made on another volume is deselected, so the next
        run makes a new one instead of overwriting that volume's result."""
        wasModifying = params.node.StartModify()
        try:
            params.inputVolume = volumeNode
            source = self.sourceVolumeOf(params.outputSegmentation)
            if source is not None and source is not volumeNode:
                params.outputSegmentation = None
        finally:
            params.node.EndModify(wasModifying)

    def prepareCorrection(self, segmentationNode: Any, fallbackVolumeNode: Any = None) -> Any:
        """A Segment Editor parameter node set up to edit the left-atrium segment on its own volume.

        The source volume is the segmentation's reference-geometry node (the volume it was
        made on); ``fallbackVolumeNode`` (the panel's input) only when it has none.
        """
        from CAMLSegmentationLib.slicer.mrml_bridge import LEFT_ATRIUM_NAME

        if segmentationNode is None:
            raise ValueError("Segment first: there is no segmentation to correct.")
        editorNode = self.scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if editorNode is None:
            editorNode = slicer.vtkMRMLSegmentEditorNode()
            editorNode.SetSingletonTag("SegmentEditor")
            editorNode = self.scene.AddNode(editorNode)
        editorNode.SetAndObserveSegmentationNode(segmentationNode)
        volumeNode = self.sourceVolumeOf(segmentationNode) or fallbackVolumeNode
        if volumeNode is not None:
            editorNode.SetAndObserveSourceVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(LEFT_ATRIUM_NAME)
        if segmentId:
            editorNode.SetSelectedSegmentID(segmentId)
        return editorNode

    # -- what the panel shows besides the run ------------------------------------------------------
    def versionsLine(self) -> str:
        """One line: the engine's version, the installed PyTorch's and those of the export runtimes that
        are installed (from their metadata, never imported)."""
        import importlib.metadata

        from CAMLSegmentationLib import __version__
        from CAMLSegmentationLib.inference.backends import EXPORT_RUNTIMES

        torch = self.installedTorchVersion()
        line = _("CAML engine {engine} · PyTorch {torch}").format(
            engine=__version__, torch=torch if torch else _("not installed"))
        for package in EXPORT_RUNTIMES.values():
            try:
                line += f" · {package} {importlib.metadata.version(package)}"
            except importlib.metadata.PackageNotFoundError:
                pass
        return line

    @staticmethod
    def alIsCohort(folder: str) -> bool:
        """``folder`` holds an active-learning cohort's state (the engine's own definition of where it is)."""
        from CAMLSegmentationLib.activelearning.database import db_path

        return bool(folder) and db_path(folder).is_file()


def writeVolume(volume: Any, path: Path, compress: bool = True) -> None:
    """Write an engine ``Volume`` (LPS geometry) for ``caml`` to read, with SimpleITK like the engine.

    ``compress=False`` for a file read once and deleted (a Segment's input): gzip then costs more
    than it saves (about 0.1 s of a second click on an LA crop)."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume.array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in np.asarray(volume.direction, dtype=float).ravel()])
    sitk.WriteImage(image, str(path), bool(compress))


def makeTestVolume(scene: Any, shape: Tuple[int, int, int] = (48, 40, 32)) -> Any:
    """A synthetic MRI-like volume: a bright ellipsoid ("atrium") in noise, oblique geometry."""
    import numpy as np

    from CAMLSegmentationLib.io.volume import Volume
    from CAMLSegmentationLib.slicer import mrml_bridge

    rng = np.random.default_rng(7)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = np.array(shape, dtype=np.float32) / 2
    inside = (((i - centre[0]) / (shape[0] / 4)) ** 2 + ((j - centre[1]) / (shape[1] / 5)) ** 2
              + ((k - centre[2]) / (shape[2] / 4)) ** 2) <= 1.0
    array = (rng.normal(100.0, 10.0, size=shape) + 300.0 * inside).astype(np.float32)
    angle = np.radians(20.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                          [0.0, 0.0, 1.0]])
    volume = Volume(array=array, spacing=(0.9, 0.9, 1.2), origin=(-20.0, 15.0, -30.0), direction=direction)
    return mrml_bridge.volume_to_node(volume, scene, "CAMLTestVolume")

