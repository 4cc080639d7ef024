"""Compatibility layers: other SDKs' APIs on flame-async's runtime.

* :mod:`flame_async.compat.flamesdk`: flamesdk 0.6's synchronous ``FlameCoreSDK``, so analyses
  written for it (python-sdk-patterns' ``StarModel`` and the packages built on it) run on
  flame-async unchanged.
"""
