# Stand-in: check the extension metadata Slicer's extension build requires and record it.
foreach(var EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
            EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "${var} is not set: the Extensions Manager needs it")
  endif()
endforeach()
file(WRITE "${CMAKE_BINARY_DIR}/standin-extension-metadata.txt"
  "name=${PROJECT_NAME}\n"
  "homepage=${EXTENSION_HOMEPAGE}\n"
  "category=${EXTENSION_CATEGORY}\n"
  "contributors=${EXTENSION_CONTRIBUTORS}\n"
  "description=${EXTENSION_DESCRIPTION}\n"
  "iconurl=${EXTENSION_ICONURL}\n"
  "screenshoturls=${EXTENSION_SCREENSHOTURLS}\n"
  "depends=${EXTENSION_DEPENDS}\n")
