"""The release of this package (``flask_ampalibe.__version__``, setup.cfg's version).

A module of its own so that the modules the package's ``__init__`` imports (``schema`` records
it) can read it without importing the package's ``__init__``.
"""
__version__ = "0.1.0"
