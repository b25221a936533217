"""fastpath: the compiled data plane that moves the bytes of user traffic (Cython over C libraries)."""
