# Makes fastpath/includes a cimport-able package (`from fastpath.includes cimport openssl`).
# It is deliberately not a Python package: these declarations exist only at build time.
