"""The public backend plugin API, at the import path plugins are written against.

Everything here lives in :mod:`snncompile.targets` (the API in ``targets/api.py``); this
module re-exports it so that plugins written against docs/plugins.md keep loading.
"""

from .targets.api import *  # noqa: F401,F403
from .targets.api import __all__  # noqa: F401
