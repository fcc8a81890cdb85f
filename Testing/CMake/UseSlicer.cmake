# Stand-in UseSlicer.cmake: the scripted-module macro, recording what it installs.

# A manifest of what each scripted module declared, for the packaging test.
set(STANDIN_MANIFEST "${CMAKE_BINARY_DIR}/standin-slicer-manifest.txt")
file(WRITE "${STANDIN_MANIFEST}" "")

macro(slicerMacroBuildScriptedModule)
  set(options WITH_GENERIC_TESTS WITH_SUBDIR VERBOSE)
  set(oneValueArgs NAME)
  set(multiValueArgs SCRIPTS RESOURCES)
  cmake_parse_arguments(MY_SLICER "${options}" "${oneValueArgs}" "${multiValueArgs}" ${ARGN})

  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED MY_SLICER_NAME)
    message(FATAL_ERROR "NAME is mandatory")
  endif()
  # As Slicer does: every listed file must exist (".py" may be left off scripts).
  foreach(var SCRIPTS RESOURCES)
    foreach(value ${MY_SLICER_${var}})
      if(IS_ABSOLUTE "${value}")
        set(_abs "${value}")
      else()
        set(_abs "${CMAKE_CURRENT_SOURCE_DIR}/${value}")
      endif()
      if(NOT EXISTS "${_abs}" AND NOT EXISTS "${_abs}.py")
        message(FATAL_ERROR "slicerMacroBuildScriptedModule(${var}) given nonexistent file or directory '${value}'")
      endif()
    endforeach()
  endforeach()

  set(_dest "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
  set(_copied)
  foreach(kind SCRIPTS RESOURCES)
    foreach(file ${MY_SLICER_${kind}})
      if(kind STREQUAL "SCRIPTS" AND NOT file MATCHES "\\.py$")
        set(file "${file}.py")
      endif()
      set(_src "${CMAKE_CURRENT_SOURCE_DIR}/${file}")
      set(_tgt "${_dest}/${file}")
      add_custom_command(OUTPUT "${_tgt}" DEPENDS "${_src}"
        COMMAND ${CMAKE_COMMAND} -E copy "${_src}" "${_tgt}"
        COMMENT "Copying python ${kind}: ${file}")
      list(APPEND _copied "${_tgt}")
      # Installed at its path as written, relative to the scripted-modules folder.
      get_filename_component(_subdir "${file}" DIRECTORY)
      install(FILES "${_src}" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${_subdir}"
        COMPONENT RuntimeLibraries)
      file(APPEND "${STANDIN_MANIFEST}" "${MY_SLICER_NAME} ${kind} ${file}\n")
    endforeach()
  endforeach()
  add_custom_target(Copy${MY_SLICER_NAME}PythonFiles ALL DEPENDS ${_copied})
  if(MY_SLICER_WITH_GENERIC_TESTS)
    file(APPEND "${STANDIN_MANIFEST}" "${MY_SLICER_NAME} WITH_GENERIC_TESTS\n")
  endif()
endmacro()

# Stand-in for Slicer's slicer_add_python_unittest (CMake/SlicerMacroPythonTesting.cmake):
# Slicer registers a CTest test "py_<script name>" that runs the script's unittest
# classes inside the application. No application exists here, so the stand-in checks
# the script exists and records the registration for the packaging test.
macro(slicer_add_python_unittest)
  set(options)
  set(oneValueArgs TESTNAME_PREFIX SCRIPT)
  set(multiValueArgs SLICER_ARGS)
  cmake_parse_arguments(MY "${options}" "${oneValueArgs}" "${multiValueArgs}" ${ARGN})
  if(NOT DEFINED MY_SCRIPT)
    message(FATAL_ERROR "slicer_add_python_unittest: SCRIPT is mandatory")
  endif()
  if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}")
    message(FATAL_ERROR "slicer_add_python_unittest: no such script '${MY_SCRIPT}'")
  endif()
  get_filename_component(_test_name ${MY_SCRIPT} NAME_WE)
  file(APPEND "${STANDIN_MANIFEST}" "PYTHON_UNITTEST py_${MY_TESTNAME_PREFIX}${_test_name} ${MY_SCRIPT}\n")
endmacro()
