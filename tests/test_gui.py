from __future__ import annotations

from slowtune.gui.app import PAGES, MainWindow, make_app


def test_main_window_shows_every_page(qtbot) -> None:
    app = make_app(["slowtune"])
    assert not app.windowIcon().isNull(), "the app icon from resources/ did not load"
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    assert window.sidebar.count() == len(PAGES)
    for row, name in enumerate(PAGES):
        window.sidebar.setCurrentRow(row)
        assert window.pages.currentWidget().objectName() == f"page-{name.lower()}"
    assert "no project open" in window.statusBar().currentMessage()
