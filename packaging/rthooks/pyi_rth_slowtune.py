"""Runs in the frozen app before slowtune's own code.

On a Mac, keyring is told to use the macOS Keychain explicitly: in the bundle its backends are discovered from the
collected package metadata, and naming the backend keeps that discovery (and its priority order) out of the way.
A choice the user made (PYTHON_KEYRING_BACKEND, or keyring's own keyringrc.cfg) is kept.
"""

import os
import sys


def _select_keychain() -> None:
    if sys.platform != "darwin" or os.environ.get("PYTHON_KEYRING_BACKEND"):
        return
    try:
        from keyring.util import platform_

        if (platform_.config_root() / "keyringrc.cfg").exists():
            return
    except Exception:  # keyring's layout changed: select the Keychain anyway
        pass
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.macOS.Keyring"


_select_keychain()
