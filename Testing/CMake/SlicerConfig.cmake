# Stand-in for the Slicer SDK's SlicerConfig.cmake, for Testing/Python/test_packaging.py.
#
# No Slicer SDK can be had on the build machines. This package defines what the
# extension's CMake uses -- the install layout variables, Slicer_USE_FILE with
# slicerMacroBuildScriptedModule, the extension config and CPack includes -- and
# reproduces where Slicer puts things: scripts and RESOURCES are copied into the
# build tree's qt-scripted-modules folder and installed under it *at their path
# as written* (so "../x" entries escape the module folder, as in Slicer).
set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 8)
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_SUBDIR "qt-scripted-modules")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR
  "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
if(NOT DEFINED BUILD_TESTING)
  set(BUILD_TESTING ON)
endif()
