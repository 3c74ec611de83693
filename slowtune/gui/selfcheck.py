"""The Qt half of ``slowtune --self-test``: build the main window, draw it and the app icon, and say what happened.

It lives here because only ``slowtune/gui/`` imports Qt; ``slowtune.selftest`` judges the figures (its
``WindowReport``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication

from slowtune.gui.app import MainWindow, make_app
from slowtune.resources import resource_path


def qt_app_exists() -> bool:
    return QApplication.instance() is not None


def draw_main_window() -> dict[str, Any]:
    """Build the main window (offscreen when no Qt app is running yet), draw it and the SVG icon, close it; the
    figures: ``pages``, ``sidebar_entries``, ``width`` and ``height`` of the drawn window (0 when it could not be
    drawn), ``icon_drawn`` and ``platform`` (Qt's)."""
    if not qt_app_exists():
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = make_app([sys.argv[0] if sys.argv else "slowtune"])
    window = MainWindow(open_last_project=False)
    try:
        picture = window.grab()
        icon = QIcon(str(resource_path("icons", "slowtune.svg"))).pixmap(64, 64)
        app.processEvents()
        drawn = not picture.isNull()
        return {"pages": window.pages.count(), "sidebar_entries": window.sidebar.count(),
                "width": picture.width() if drawn else 0, "height": picture.height() if drawn else 0,
                "icon_drawn": not icon.isNull(), "platform": QGuiApplication.platformName()}
    finally:
        window.close()
        window.deleteLater()
        app.processEvents()
