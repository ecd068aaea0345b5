"""Adapters that put ld3 solvers and (learned) discretizations inside other libraries.

* :mod:`ld3.integrations.diffusers`: :class:`~ld3.integrations.diffusers.LD3Scheduler`, a diffusers scheduler
  (needs the optional package ``diffusers``; see docs/diffusers.md).
"""
