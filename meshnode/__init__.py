"""meshnode: the mesh-aware part of the service mesh (config, processes, CLI)."""
