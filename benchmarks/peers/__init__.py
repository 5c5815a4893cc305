"""The systems of the side-by-side benchmark (`benchmarks/compare.py`), one module per project.

Each public module here holds a module-level ``SYSTEMS`` list of `peers.base.System`
subclasses; modules whose names start with ``_`` are helpers and hold none.
"""
