"""Interoperability with other libraries.

- :mod:`fundl.interop.torch`: map a PyTorch ``state_dict`` onto fundl params and
  state, and back (PyTorch is imported only by the functions that need it).
"""

__all__ = ["torch"]
