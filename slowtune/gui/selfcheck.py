"""The Qt half of ``slowtune --self-test``: build the main window, draw it and the app icon, and say what happened.

It lives here because only ``slowtune/gui/`` imports Qt; ``slowtune.selftest`` judges the figures.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication

from slowtune.gui.app import MainWindow, make_app
from slowtune.resources import resource_path


@dataclass(frozen=True)
class WindowReport:
    pages: int
    sidebar_entries: int
    width: int  # of the drawn window; 0 when it could not be drawn
    height: int
    icon_drawn: bool
    platform: str


def qt_app_exists() -> bool:
    return QApplication.instance() is not None


def draw_main_window() -> WindowReport:
    """Build the main window (offscreen when no Qt app is running yet), draw it and the SVG icon, close it."""
    if not qt_app_exists():
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = make_app([sys.argv[0] if sys.argv else "slowtune"])
    window = MainWindow(open_last_project=False)
    try:
        picture = window.grab()
        icon = QIcon(str(resource_path("icons", "slowtune.svg"))).pixmap(64, 64)
        app.processEvents()
        drawn = not picture.isNull()
        return WindowReport(window.pages.count(), window.sidebar.count(), picture.width() if drawn else 0,
                            picture.height() if drawn else 0, not icon.isNull(), QGuiApplication.platformName())
    finally:
        window.close()
        window.deleteLater()
        app.processEvents()
