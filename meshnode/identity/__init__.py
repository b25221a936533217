"""identity: the mesh's workload identities: PKI shapes, the node's authority, the worker's credentials."""
