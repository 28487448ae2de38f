"""pyroute2's ifinfmsg decoder, imported without the rest of pyroute2.

`import pyroute2.anything` runs pyroute2/__init__.py first, which imports every socket class
the library has (IPDB, NDB, nftables, nl80211, Plan 9...): 311 modules and 22.7 MiB of RSS
against 60 modules and 3.7 MiB for the decoder alone (measured with VmRSS around the import,
pyroute2 0.9.7). Where pyroute2 is not imported yet, the package is registered as a bare
namespace over its own directory, so only the decoder and what it needs are loaded; where it
already is, that module is used as it is; and a later `from pyroute2 import IPRoute` (a test,
an embedding program) still works: the first name asked of the bare package runs its real
__init__ then.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _bare_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return  # let the import below fail with its own message
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    loader = spec.loader

    def complete(name: str) -> object:
        """A submodule (`from pyroute2 import config`) is imported alone; any other name is
        one of the whole library's: load it all, once."""
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")
        del pkg.__dict__["__getattr__"]
        if loader is not None:
            loader.exec_module(pkg)
        return getattr(pkg, name)

    pkg.__dict__["__getattr__"] = complete
    sys.modules["pyroute2"] = pkg


_bare_package()

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402

__all__ = ["ifinfmsg"]
