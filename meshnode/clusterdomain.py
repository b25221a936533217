"""The DNS domain a Service's FQDN ends in: ``name.ns.svc.cluster.local``, Kubernetes' and
Istio's default. It is in Istio's ``destination_service`` label and in the SNI between
nodes (``outbound_.PORT_._.FQDN``), so policies and queries written for Istio match.

Istio takes another domain from istiod's ``--domain`` flag, not from MeshConfig;
meshnode's Services have no cluster DNS behind them, so only a policy written for an
Istio mesh with another domain would need a setting, and none is made. A module of its
own: the workers need it and must not import the config package (or YAML).
"""

CLUSTER_DOMAIN = "cluster.local"
