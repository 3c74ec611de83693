"""A small line chart drawn with QPainter: the live loss curves of a training run.

PySide6-Essentials has no QtCharts, and a plotting library would add megabytes to the app for two lines, so this
widget draws what the Train page needs: several series over a shared x axis (steps), "nice" axis ticks, a legend
with each series' latest value, and a read-out of the values under the mouse. Long runs stay cheap to draw: when a
series has more points than the plot has pixel columns, each column is drawn as the minimum and maximum of the
points that fall in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from PySide6.QtCore import QEvent, QPointF, QRectF, QSize, Qt
from PySide6.QtGui import (
    QColor,
    QFontMetricsF,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPalette,
    QPen,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

MARKER_LIMIT = 200  # markers are drawn on series with at most this many points
LEGEND_GAP = 18.0  # between legend entries


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]; with
    ``integer``, at least 1 apart (steps are whole numbers)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    normalized = raw / power
    step = power * (1 if normalized < 1.5 else 2 if normalized < 3 else 5 if normalized < 7 else 10)
    if integer:
        step = max(step, 1.0)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def format_tick(value: float, step: float) -> str:
    if step >= 1 and float(value).is_integer():
        return f"{value:,.0f}"
    decimals = max(0, min(6, -math.floor(math.log10(step)))) if step > 0 else 2
    return f"{value:.{decimals}f}"


@dataclass
class Series:
    name: str
    color: QColor
    markers: bool = False
    points: list[tuple[float, float]] = field(default_factory=list)


class LineChart(QWidget):
    """Line series over a shared x axis. ``add_series`` once, then ``append``/``extend`` points as they arrive."""

    def __init__(self, parent: QWidget | None = None, *, x_label: str = "", y_label: str = "",
                 placeholder: str = "No data yet", x_integer: bool = False) -> None:
        super().__init__(parent)
        self.setObjectName("line-chart")
        self.x_integer = x_integer  # x values are whole numbers (steps): ticks at least 1 apart
        self.x_label = x_label
        self.y_label = y_label
        self.placeholder = placeholder
        self.series: dict[str, Series] = {}
        self.x_max_hint: float | None = None  # e.g. the run's total steps: the axis spans the whole run
        self._hover_x: float | None = None
        self.setMouseTracking(True)
        self.setMinimumSize(320, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    # --- data ----------------------------------------------------------------------------------------
    def add_series(self, name: str, color: str | QColor, *, markers: bool = False) -> None:
        self.series[name] = Series(name, QColor(color), markers)
        self.update()

    def append(self, name: str, x: float, y: float) -> None:
        if math.isfinite(x) and math.isfinite(y):
            self.series[name].points.append((float(x), float(y)))
            self.update()

    def extend(self, name: str, points: Iterable[tuple[float, float]]) -> None:
        self.series[name].points.extend((float(x), float(y)) for x, y in points
                                        if math.isfinite(x) and math.isfinite(y))
        self.update()

    def points(self, name: str) -> list[tuple[float, float]]:
        return list(self.series[name].points)

    def clear(self) -> None:
        """Remove every point (the series stay)."""
        for series in self.series.values():
            series.points.clear()
        self._hover_x = None
        self.update()

    def set_x_max_hint(self, value: float | None) -> None:
        self.x_max_hint = value
        self.update()

    def set_placeholder(self, text: str) -> None:
        self.placeholder = text
        self.update()

    def has_points(self) -> bool:
        return any(s.points for s in self.series.values())

    # --- geometry ------------------------------------------------------------------------------------
    def sizeHint(self) -> QSize:
        return QSize(640, 300)

    def _ranges(self) -> tuple[float, float, float, float]:
        xs = [x for s in self.series.values() for x, _ in s.points]
        ys = [y for s in self.series.values() for _, y in s.points]
        x_low = min(xs) if xs else 0.0
        x_high = max(xs) if xs else 1.0
        if self.x_max_hint is not None and self.x_max_hint > x_high:
            x_high = self.x_max_hint
        x_low = min(x_low, 1.0) if x_low >= 0 else x_low
        if x_high <= x_low:
            x_high = x_low + 1.0
        y_low, y_high = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if y_high - y_low < 1e-9:
            y_low, y_high = y_low - 0.5, y_high + 0.5
        pad = (y_high - y_low) * 0.06
        y_low = max(0.0, y_low - pad) if y_low >= 0 else y_low - pad
        return x_low, x_high, y_low, y_high + pad

    def _plot_rect(self, metrics: QFontMetricsF, y_labels: list[str]) -> QRectF:
        left = max((metrics.horizontalAdvance(t) for t in y_labels), default=20.0) + 14
        if self.y_label:
            left += metrics.height() + 4
        bottom = metrics.height() * (2.4 if self.x_label else 1.4) + 6
        width = max(10.0, self.width() - left - 14)
        # The legend has a band of its own above the plot, so it never hides a line (losses start high and a
        # flat validation line runs along the top, where a legend inside the plot would sit).
        top = 6 + len(self._legend_rows(metrics, width)) * (metrics.height() + 2) + 6
        return QRectF(left, top, width, max(10.0, self.height() - bottom - top))

    def _legend_rows(self, metrics: QFontMetricsF, width: float) -> list[list[tuple[Series, str, float]]]:
        """The legend's entries (series, text, width), in rows that fit ``width``."""
        rows: list[list[tuple[Series, str, float]]] = [[]]
        used = 0.0
        for series in self.series.values():
            text = series.name + (f"  {series.points[-1][1]:.3f}" if series.points else "")
            entry = metrics.horizontalAdvance(text) + 28
            if rows[-1] and used + LEGEND_GAP + entry > width:
                rows.append([])
                used = 0.0
            used += (LEGEND_GAP if rows[-1] else 0) + entry
            rows[-1].append((series, text, entry))
        return [row for row in rows if row]

    # --- painting ------------------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        text_color = palette.color(QPalette.ColorRole.WindowText)
        grid_color = QColor(text_color)
        grid_color.setAlphaF(0.12)
        muted = QColor(text_color)
        muted.setAlphaF(0.6)
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))
        metrics = QFontMetricsF(self.font())

        if not self.has_points():
            painter.setPen(muted)
            painter.drawText(QRectF(self.rect()), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                             self.placeholder)
            return

        x_low, x_high, y_low, y_high = self._ranges()
        y_ticks = nice_ticks(y_low, y_high, 5)
        y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
        y_labels = [format_tick(t, y_step) for t in y_ticks]
        plot = self._plot_rect(metrics, y_labels)

        def px(x: float) -> float:
            return plot.left() + (x - x_low) / (x_high - x_low) * plot.width()

        def py(y: float) -> float:
            return plot.bottom() - (y - y_low) / (y_high - y_low) * plot.height()

        # Grid and axes.
        painter.setPen(QPen(grid_color, 1))
        for tick, label in zip(y_ticks, y_labels, strict=True):
            y = py(tick)
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(muted)
            painter.drawText(QRectF(0, y - metrics.height() / 2, plot.left() - 6, metrics.height()),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
            painter.setPen(QPen(grid_color, 1))
        x_ticks = [t for t in nice_ticks(x_low, x_high, max(2, int(plot.width() // 90)), integer=self.x_integer)
                   if x_low <= t <= x_high]
        x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
        for tick in x_ticks:
            x = px(tick)
            painter.setPen(QPen(grid_color, 1))
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            painter.setPen(muted)
            painter.drawText(QRectF(x - 40, plot.bottom() + 4, 80, metrics.height()),
                             Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, format_tick(tick, x_step))
        axis = QColor(text_color)
        axis.setAlphaF(0.35)
        painter.setPen(QPen(axis, 1))
        painter.drawLine(plot.bottomLeft(), plot.bottomRight())
        painter.drawLine(plot.bottomLeft(), plot.topLeft())
        painter.setPen(muted)
        if self.x_label:
            painter.drawText(QRectF(plot.left(), plot.bottom() + metrics.height() + 6, plot.width(),
                                    metrics.height()), Qt.AlignmentFlag.AlignHCenter, self.x_label)
        if self.y_label:
            painter.save()
            painter.translate(metrics.height() * 0.2, plot.center().y())
            painter.rotate(-90)
            painter.drawText(QRectF(-plot.height() / 2, 0, plot.height(), metrics.height()),
                             Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, self.y_label)
            painter.restore()

        # The series.
        painter.save()
        painter.setClipRect(plot.adjusted(-4, -4, 4, 4))
        for series in self.series.values():
            if not series.points:
                continue
            pen = QPen(series.color, 2)
            pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
            painter.setPen(pen)
            path = QPainterPath()
            for i, (x, y) in enumerate(self._decimated(series.points, px, int(plot.width()))):
                point = QPointF(px(x), py(y))
                if i == 0:
                    path.moveTo(point)
                else:
                    path.lineTo(point)
            painter.drawPath(path)
            if series.markers and len(series.points) <= MARKER_LIMIT:
                painter.setBrush(series.color)
                for x, y in series.points:
                    painter.drawEllipse(QPointF(px(x), py(y)), 3, 3)
                painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.restore()

        self._draw_legend(painter, plot, metrics, text_color)
        if self._hover_x is not None:
            self._draw_hover(painter, plot, metrics, px, text_color)

    @staticmethod
    def _decimated(points: list[tuple[float, float]], px: Callable[[float], float], columns: int) -> list[tuple[float, float]]:
        """At most two points (min and max) per pixel column, in order."""
        if len(points) <= 2 * max(columns, 1):
            return points
        out: list[tuple[float, float]] = []
        bucket: list[tuple[float, float]] = []
        current = None
        for point in points:
            column = int(px(point[0]))
            if column != current and bucket:
                low = min(bucket, key=lambda p: p[1])
                high = max(bucket, key=lambda p: p[1])
                out.extend(sorted({low, high}))
                bucket = []
            current = column
            bucket.append(point)
        if bucket:
            low = min(bucket, key=lambda p: p[1])
            high = max(bucket, key=lambda p: p[1])
            out.extend(sorted({low, high}))
        return out

    def _draw_legend(self, painter: QPainter, plot: QRectF, metrics: QFontMetricsF, text_color: QColor) -> None:
        """Each series' colour, name and latest value, right-aligned in the band above the plot."""
        y = 6.0
        for row in self._legend_rows(metrics, plot.width()):
            x = plot.right() - sum(entry for _, _, entry in row) - LEGEND_GAP * (len(row) - 1)
            for series, text, entry in row:
                painter.setPen(QPen(series.color, 3))
                middle = y + metrics.height() / 2
                painter.drawLine(QPointF(x, middle), QPointF(x + 18, middle))
                painter.setPen(text_color if series.points else QColor(text_color.red(), text_color.green(),
                                                                       text_color.blue(), 120))
                painter.drawText(QRectF(x + 26, y, entry - 26, metrics.height()),
                                 Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text)
                x += entry + LEGEND_GAP
            y += metrics.height() + 2

    def _draw_hover(self, painter: QPainter, plot: QRectF, metrics: QFontMetricsF, px: Callable[[float], float],
                    text_color: QColor) -> None:
        hover = self._hover_x
        assert hover is not None
        lines = []
        x_shown = None
        for series in self.series.values():
            if not series.points:
                continue
            x, y = min(series.points, key=lambda p: abs(p[0] - hover))
            if x_shown is None:
                x_shown = x
            lines.append((series.color, f"{series.name}: {y:.4f} (step {x:,.0f})"))
        if x_shown is None:
            return
        guide = QColor(text_color)
        guide.setAlphaF(0.3)
        painter.setPen(QPen(guide, 1, Qt.PenStyle.DashLine))
        x_px = px(x_shown)
        painter.drawLine(QPointF(x_px, plot.top()), QPointF(x_px, plot.bottom()))
        width = max(metrics.horizontalAdvance(text) for _, text in lines) + 16
        height = metrics.height() * len(lines) + 8
        left = x_px + 10 if x_px + 10 + width < plot.right() else x_px - 10 - width
        box = QRectF(left, plot.bottom() - height - 8, width, height)
        background = self.palette().color(QPalette.ColorRole.ToolTipBase)
        painter.setPen(QPen(guide, 1))
        painter.setBrush(background)
        painter.drawRoundedRect(box, 4, 4)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        y = box.top() + 4
        for color, text in lines:
            painter.setPen(color)
            painter.drawText(QRectF(box.left() + 8, y, width - 8, metrics.height()),
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text)
            y += metrics.height()

    # --- the mouse -----------------------------------------------------------------------------------
    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if not self.has_points():
            return
        x_low, x_high, y_low, y_high = self._ranges()
        y_ticks = nice_ticks(y_low, y_high, 5)
        y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
        plot = self._plot_rect(QFontMetricsF(self.font()), [format_tick(t, y_step) for t in y_ticks])
        position = event.position()
        if plot.contains(position):
            self._hover_x = x_low + (position.x() - plot.left()) / plot.width() * (x_high - x_low)
        else:
            self._hover_x = None
        self.update()

    def leaveEvent(self, event: QEvent) -> None:
        self._hover_x = None
        self.update()
