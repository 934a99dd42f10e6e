"""The pieces a managed tritonserver is started from, one concern per module.

``config`` (what to start), ``environment`` (the server copied out of the pytriton wheel, the
environment its Python stub needs), ``ports`` (free and taken ports), ``process`` (process
groups through Linux /proc), ``readiness`` (polling until ready) and ``logs`` (reading Triton's
log). :mod:`t2i_router.triton.server` puts them together as :class:`ManagedTritonServer`.
"""
