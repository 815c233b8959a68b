"""fundl's version: the one place it is written.

``pyproject.toml`` reads it from here when the package is built
(``[tool.setuptools.dynamic] version = {attr = "fundl._version.__version__"}``),
so the installed metadata and ``fundl.__version__`` always agree, and a source
checkout that is not installed reports its own version, not that of some other
installed copy.
"""

__version__ = "0.1.0"
