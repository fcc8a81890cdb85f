# Stand-in: Slicer packages the install tree with CPack; here `cmake --install` is the package.
