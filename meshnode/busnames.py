"""The bus names (services and topics) that processes of a node share.

A module of its own, importing nothing: a proxy worker needs control's and ca's names
but not their modules, which load YAML, config validation and the issuing authority
(2.3 MB of every worker's RSS, measured; tests/integration/test_worker_memory.py).
"""

CONTROL = "control"               # control's request service
SNAPSHOT_TOPIC = "config.snapshot"  # control → workers: the config snapshot (Clone state)
ACK_TOPIC = "config.ack"          # workers → control: ACK/NACK of a snapshot version
CA = "ca"                         # the certificate authority's request service
BUNDLE_TOPIC = "cert.bundle"      # ca → everyone: the trust bundle (Clone state)
BUNDLE_KEY = "bundle"             # the bundle's key in that state
ACCESS_TOPIC = "access."          # workers → telemetry: access records, "access.<worker>"
TAP_TOPIC = "tap.sessions"        # telemetry → workers: the tap sessions under way (meshnode.tap)
