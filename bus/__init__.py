"""bus: ZeroMQ transport between a node's processes, with no mesh knowledge."""
