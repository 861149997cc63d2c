"""The documented Python API: `from facesim import api`, then `api.load_model`, `api.verify`,
`api.search` and `api.embed`. They live in `facesim.app.api`; this module names them where users
look for them."""

from facesim.app.api import *  # noqa: F403
from facesim.app.api import __all__  # noqa: F401
