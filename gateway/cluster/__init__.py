"""Several gateways at one site as one: a replicated store (etcd, or in-process for a single
gateway), leader election on a lease, fenced setpoint writes, device ownership and takeover.

The ``cluster:`` config section is declared in :mod:`gateway.cluster.config`.
"""
