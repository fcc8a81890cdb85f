"""``SampleData``: the Sample Data module as another module sees it, written from the behaviour of Slicer's
``Modules/Scripted/SampleData/SampleData.py`` (``Slicer/Slicer`` at 01c2def0e79b, read, not copied).
``slicer-core`` does not ship that file, so the harness re-implements the paths a registered source takes:

- ``SampleDataLogic.registerCustomSampleDataSource(...)`` appends a ``SampleDataSource`` to
  ``slicer.modules.sampleDataSources[category]`` (lists of URIs, file names, node names of equal length);
- the module's button for a source calls ``source.customDownloader(source)`` when it has one, else
  ``SampleDataLogic().downloadFromSource(source)`` (``clickSample`` below does what the button does);
- ``SampleData.downloadSample(name)`` never calls the custom downloader: it finds the source by name and
  runs ``downloadFromSource``, which, per URI, reuses ``<remote cache>/<fileName>`` when it exists and is not
  empty, else fetches the URI with ``urllib.request.urlretrieve``, then loads the file with
  ``slicer.app.coreIOManager().loadNodes(fileType, {"fileName", "name"}, loadedNodes)`` and returns the
  nodes; ``downloadSample`` returns the first, so a source with no URI raises ``IndexError``.

Not here: checksums, retries, zip and scene files, the module's widget.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from typing import Any, Callable, List, Optional


def _listed(value: Any, count: int) -> List[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * count


class SampleDataSource:
    def __init__(self, sampleName: Optional[str] = None, sampleDescription: Optional[str] = None,
                 uris: Any = None, fileNames: Any = None, nodeNames: Any = None, checksums: Any = None,
                 loadFiles: Any = None, customDownloader: Optional[Callable[[Any], Any]] = None,
                 thumbnailFileName: Optional[str] = None, loadFileType: Any = None,
                 loadFileProperties: Optional[dict] = None) -> None:
        self.sampleName = sampleName
        self.sampleDescription = sampleName if sampleDescription is None else sampleDescription
        if isinstance(uris, str):
            uris, fileNames, nodeNames = [uris], [fileNames], [nodeNames]
        self.uris = list(uris)
        count = len(self.uris)
        self.fileNames = list(fileNames)
        self.nodeNames = _listed(nodeNames, count)
        self.checksums = _listed(checksums, count)
        self.loadFiles = _listed(loadFiles, count)
        self.loadFileType = [kind if kind is not None else ("VolumeFile" if node else None)
                             for kind, node in zip(_listed(loadFileType, count), self.nodeNames)]
        self.customDownloader = customDownloader
        self.thumbnailFileName = thumbnailFileName
        self.loadFileProperties = dict(loadFileProperties or {})
        lengths = {len(self.uris), len(self.fileNames), len(self.nodeNames), len(self.checksums),
                   len(self.loadFiles), len(self.loadFileType)}
        if len(lengths) != 1:
            raise ValueError("All fields of sample data source must have the same length")

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, SampleDataSource) and vars(self) == vars(other)


def _sources() -> dict:
    import slicer

    if not hasattr(slicer.modules, "sampleDataSources"):
        slicer.modules.sampleDataSources = {}
    return slicer.modules.sampleDataSources


class SampleDataLogic:
    @staticmethod
    def registerCustomSampleDataSource(category: str = "Custom", sampleName: Optional[str] = None,
                                       uris: Any = None, fileNames: Any = None, nodeNames: Any = None,
                                       customDownloader: Any = None, thumbnailFileName: Optional[str] = None,
                                       loadFileType: Any = "VolumeFile", loadFiles: Any = None,
                                       loadFileProperties: Optional[dict] = None, checksums: Any = None) -> None:
        source = SampleDataSource(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                  thumbnailFileName=thumbnailFileName, loadFileType=loadFileType,
                                  loadFiles=loadFiles, loadFileProperties=loadFileProperties,
                                  checksums=checksums, customDownloader=customDownloader)
        listed = _sources().setdefault(category, [])
        if source not in listed:
            listed.append(source)

    @staticmethod
    def sampleDataSourcesByCategory(category: Optional[str] = None) -> Any:
        return _sources() if category is None else _sources().get(category, [])

    def sourceForSampleName(self, sampleName: str) -> Optional[SampleDataSource]:
        for sources in _sources().values():
            for source in sources:
                if source.sampleName == sampleName:
                    return source
        return None

    def downloadSamples(self, sampleName: str) -> List[Any]:
        source = self.sourceForSampleName(sampleName)
        return self.downloadFromSource(source) if source else []

    def downloadSample(self, sampleName: str) -> Any:
        return self.downloadSamples(sampleName)[0]

    def downloadFromSource(self, source: SampleDataSource) -> List[Any]:
        import slicer
        import vtk

        nodes: List[Any] = []
        paths: List[str] = []
        for uri, fileName, nodeName, loadFile, fileType in zip(source.uris, source.fileNames, source.nodeNames,
                                                               source.loadFiles, source.loadFileType):
            folder = slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory()
            os.makedirs(folder, exist_ok=True)
            path = folder + "/" + fileName
            if not os.path.exists(path) or os.stat(path).st_size == 0:
                try:
                    urllib.request.urlretrieve(uri, path)
                except OSError as exc:
                    logging.error("Download failed: %s", exc)
                    continue
            paths.append(path)
            if nodeName and loadFile is not False:
                loaded = vtk.vtkCollection()
                properties = dict(source.loadFileProperties, fileName=path, name=nodeName)
                if slicer.app.coreIOManager().loadNodes(fileType, properties, loaded) and loaded.GetNumberOfItems():
                    nodes.append(loaded.GetItemAsObject(0))
        return nodes or paths


def downloadSample(sampleName: str) -> Any:
    return SampleDataLogic().downloadSamples(sampleName)[0]


def downloadSamples(sampleName: str) -> List[Any]:
    return SampleDataLogic().downloadSamples(sampleName)


def clickSample(sampleName: str) -> Any:
    """What the Sample Data module's button for ``sampleName`` does (a harness helper)."""
    source = SampleDataLogic().sourceForSampleName(sampleName)
    if source is None:
        raise LookupError(f"no Sample Data button named {sampleName!r}")
    if source.customDownloader:
        return source.customDownloader(source)
    return SampleDataLogic().downloadFromSource(source)
