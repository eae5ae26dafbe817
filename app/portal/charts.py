"""Charts drawn on the server as inline SVG (pages read without JavaScript and load nothing from elsewhere):
histograms, bar charts, a scatter of labelled points with intervals, and line charts. Every chart has a title
and a text description for screen readers (``role="img"``, ``<title>``, ``<desc>``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

INK, ACCENT, MUTED, GRID = "#1f2a44", "#2f6fde", "#8a94a6", "#e3e7ee"


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else "—"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def _svg(width: int, height: int, title: str, desc: str, body: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" preserveAspectRatio="xMidYMid meet" '
        f'style="max-width:{width}px" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f'<desc>{escape(desc)}</desc>{body}</svg>')


def _zoom(values: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    """A tight axis range around ``values`` within [lo, hi], on a grid of 0.05 (so close sellers stay apart)."""
    if not values:
        return lo, hi
    a = max(lo, math.floor((min(values) - 0.05) * 20) / 20)
    b = min(hi, math.ceil((max(values) + 0.05) * 20) / 20)
    return (a, b) if b - a >= 0.1 else (max(lo, a - 0.05), min(hi, b + 0.05))


def histogram(edges: Sequence[float], counts: Sequence[int], title: str, *, width: int = 320,
              height: int = 120) -> Markup:
    """Bars of ``counts`` between consecutive ``edges``, the first and last edge labelled."""
    if not counts:
        return Markup("")
    top = max(max(counts), 1)
    pad_l, pad_b, pad_t = 6, 18, 6
    inner_w, inner_h = width - 2 * pad_l, height - pad_b - pad_t
    bar_w = inner_w / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = inner_h * c / top
        lo = edges[i] if i < len(edges) else 0
        hi = edges[i + 1] if i + 1 < len(edges) else lo
        bars.append(f'<rect x="{pad_l + i * bar_w + 0.5:.1f}" y="{pad_t + inner_h - h:.1f}" '
                    f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" fill="{ACCENT}">'
                    f'<title>{escape(_fmt(lo))} to {escape(_fmt(hi))}: {c:,}</title></rect>')
    axis = (f'<line x1="{pad_l}" y1="{pad_t + inner_h}" x2="{width - pad_l}" y2="{pad_t + inner_h}" '
            f'stroke="{MUTED}"/>'
            f'<text x="{pad_l}" y="{height - 4}" font-size="10" fill="{INK}">{escape(_fmt(edges[0]))}</text>'
            f'<text x="{width - pad_l}" y="{height - 4}" font-size="10" fill="{INK}" text-anchor="end">'
            f'{escape(_fmt(edges[-1]))}</text>')
    desc = f"{len(counts)} bins from {_fmt(edges[0])} to {_fmt(edges[-1])}; the largest bin holds {top:,}"
    return _svg(width, height, title, desc, "".join(bars) + axis)


def bars(labels: Sequence[str], values: Sequence[float], title: str, *, errors: Sequence[float | None] | None = None,
         width: int = 560, fmt: str = ".4f") -> Markup:
    """Horizontal bars, one per label, with an error bar (± errors[i]) where given; negative values go left."""
    n = len(values)
    if n == 0:
        return Markup("")
    row_h, label_w, pad = 26, 170, 8
    height = n * row_h + 2 * pad
    lo = min(0.0, *(v - (e or 0) for v, e in zip(values, errors or [None] * n, strict=True)))
    hi = max(0.0, *(v + (e or 0) for v, e in zip(values, errors or [None] * n, strict=True)))
    span = (hi - lo) or 1.0
    plot_w = width - label_w - 2 * pad - 60
    x0 = label_w + pad + plot_w * (0 - lo) / span
    parts = [f'<line x1="{x0:.1f}" y1="{pad}" x2="{x0:.1f}" y2="{height - pad}" stroke="{MUTED}"/>']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = pad + i * row_h
        x = label_w + pad + plot_w * (v - lo) / span
        left, w = min(x, x0), abs(x - x0)
        parts.append(f'<text x="{label_w}" y="{y + 17}" font-size="12" fill="{INK}" text-anchor="end">'
                     f'{escape(label[:28])}</text>')
        parts.append(f'<rect x="{left:.1f}" y="{y + 5}" width="{max(w, 1):.1f}" height="{row_h - 10}" '
                     f'fill="{ACCENT}"><title>{escape(label)}: {format(v, fmt)}</title></rect>')
        err = errors[i] if errors else None
        if err:
            e_lo = label_w + pad + plot_w * (v - err - lo) / span
            e_hi = label_w + pad + plot_w * (v + err - lo) / span
            parts.append(f'<line x1="{e_lo:.1f}" y1="{y + row_h / 2}" x2="{e_hi:.1f}" y2="{y + row_h / 2}" '
                         f'stroke="{INK}" stroke-width="1.5"/>')
        parts.append(f'<text x="{label_w + pad + plot_w + 6}" y="{y + 17}" font-size="11" fill="{INK}">'
                     f'{escape(format(v, fmt))}</text>')
    desc = "; ".join(f"{label}: {format(v, fmt)}" for label, v in zip(labels, values, strict=True))
    return _svg(width, height, title, desc, "".join(parts))


def scatter(points: Sequence[tuple[str, float, float, tuple[float, float] | None, tuple[float, float] | None]],
            title: str, *, x_label: str, y_label: str, width: int = 480, height: int = 360,
            domain: tuple[float, float] = (0.0, 1.0)) -> Markup:
    """Labelled points (label, x, y, x interval, y interval), the axes zoomed to the points (and their intervals)
    within [domain]; intervals drawn as whiskers."""
    pad_l, pad_b, pad_t, pad_r = 60, 40, 12, 16  # room for 6-character ticks beside the rotated axis label
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    xs = [v for _, x, _, xi, _ in points for v in (x, *(xi or ()))]
    ys = [v for _, _, y, _, yi in points for v in (y, *(yi or ()))]
    (x_lo, x_hi), (y_lo, y_hi) = _zoom(xs, *domain), _zoom(ys, *domain)

    def px(v: float) -> float:
        return pad_l + w * (min(max(v, x_lo), x_hi) - x_lo) / (x_hi - x_lo)

    def py(v: float) -> float:
        return pad_t + h - h * (min(max(v, y_lo), y_hi) - y_lo) / (y_hi - y_lo)

    parts = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        xv, yv = x_lo + t * (x_hi - x_lo), y_lo + t * (y_hi - y_lo)
        parts.append(f'<line x1="{px(xv):.1f}" y1="{pad_t}" x2="{px(xv):.1f}" y2="{pad_t + h}" stroke="{GRID}"/>'
                     f'<line x1="{pad_l}" y1="{py(yv):.1f}" x2="{pad_l + w}" y2="{py(yv):.1f}" stroke="{GRID}"/>'
                     f'<text x="{px(xv):.1f}" y="{pad_t + h + 14}" font-size="10" text-anchor="middle" '
                     f'fill="{INK}">{xv:.3g}</text><text x="{pad_l - 6}" y="{py(yv) + 3:.1f}" font-size="10" '
                     f'text-anchor="end" fill="{INK}">{yv:.3g}</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 6}" font-size="12" text-anchor="middle" fill="{INK}">'
                 f'{escape(x_label)}</text><text x="12" y="{pad_t + h / 2}" font-size="12" text-anchor="middle" '
                 f'fill="{INK}" transform="rotate(-90 12 {pad_t + h / 2})">{escape(y_label)}</text>')
    for _, x, y, xi, yi in points:  # whiskers with end caps, under every point and label
        if xi:
            parts.append(f'<path d="M{px(xi[0]):.1f},{py(y):.1f}H{px(xi[1]):.1f}M{px(xi[0]):.1f},{py(y) - 3:.1f}'
                         f'v6M{px(xi[1]):.1f},{py(y) - 3:.1f}v6" stroke="{MUTED}" stroke-width="1.2" fill="none"/>')
        if yi:
            parts.append(f'<path d="M{px(x):.1f},{py(yi[0]):.1f}V{py(yi[1]):.1f}M{px(x) - 3:.1f},{py(yi[0]):.1f}'
                         f'h6M{px(x) - 3:.1f},{py(yi[1]):.1f}h6" stroke="{MUTED}" stroke-width="1.2" fill="none"/>')
    placed = _place_labels([(px(x), py(y), label[:24]) for label, x, y, _, _ in points], (pad_l, pad_l + w))
    for (label, x, y, _, _), (label_x, label_y, anchor) in zip(points, placed, strict=True):
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{ACCENT}"><title>{escape(label)}: '
                     f'{x_label} {x:.4f}, {y_label} {y:.4f}</title></circle><text x="{label_x:.1f}" '
                     f'y="{label_y:.1f}" font-size="11" fill="{INK}" text-anchor="{anchor}">'
                     f'{escape(label[:24])}</text>')
    desc = "; ".join(f"{label}: {x_label} {x:.4f}, {y_label} {y:.4f}" for label, x, y, _, _ in points)
    return _svg(width, height, title, desc, "".join(parts))


#: where a point's label may go, relative to the point: (dx, dy, text-anchor), in order of preference
_LABEL_SPOTS = ((8, -8, "start"), (-8, -8, "end"), (8, 16, "start"), (-8, 16, "end"), (10, 4, "start"),
                (-10, 4, "end"), (0, -12, "middle"), (0, 22, "middle"))
_CHAR_PX, _LINE_PX = 6.2, 12.0  # an 11 px label's width per character and its height


def _label_box(x: float, y: float, text: str, anchor: str) -> tuple[float, float, float, float]:
    width = _CHAR_PX * len(text)
    left = {"start": x, "end": x - width, "middle": x - width / 2}[anchor]
    return left, y - _LINE_PX + 2, left + width, y + 2


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _place_labels(anchors: Sequence[tuple[float, float, str]],
                  x_range: tuple[float, float]) -> list[tuple[float, float, str]]:
    """A spot for each point's label (x, y, text-anchor): greedily the first of :data:`_LABEL_SPOTS` that stays
    inside the plot and covers no other label or point, else the one that covers least."""
    markers = [(x - 6, y - 6, x + 6, y + 6) for x, y, _ in anchors]
    boxes: list[tuple[float, float, float, float]] = []
    placed: list[tuple[float, float, str]] = [(0.0, 0.0, "start")] * len(anchors)
    for i in sorted(range(len(anchors)), key=lambda i: anchors[i][1]):  # top to bottom
        x, y, text = anchors[i]
        best: tuple[float, tuple[float, float, str], tuple[float, float, float, float]] | None = None
        for dx, dy, anchor in _LABEL_SPOTS:
            box = _label_box(x + dx, y + dy, text, anchor)
            outside = max(0.0, x_range[0] - box[0]) + max(0.0, box[2] - x_range[1])
            cost = outside * 1000 + sum(_overlap(box, b) for b in boxes) + sum(
                _overlap(box, m) for j, m in enumerate(markers) if j != i)
            if best is None or cost < best[0]:
                best = (cost, (x + dx, y + dy, anchor), box)
            if cost == 0:
                break
        assert best is not None
        placed[i] = best[1]
        boxes.append(best[2])
    return placed


def lines(series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], title: str, *, x_label: str,
          y_label: str, width: int = 520, height: int = 280) -> Markup:
    """Line charts of (name, xs, ys, colour) sharing axes, with a legend."""
    xs_all = [x for _, xs, _, _ in series for x in xs]
    ys_all = [y for _, _, ys, _ in series for y in ys]
    if not xs_all:
        return Markup("")
    x_lo, x_hi = min(xs_all), max(xs_all) or 1.0
    y_lo, y_hi = min(ys_all), max(ys_all)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad_l, pad_b, pad_t, pad_r = 62, 40, 28, 12
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(v: float) -> float:
        return pad_l + w * (v - x_lo) / ((x_hi - x_lo) or 1.0)

    def py(v: float) -> float:
        return pad_t + h - h * (v - y_lo) / (y_hi - y_lo)

    parts = [f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="{MUTED}"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="{MUTED}"/>']
    for t in (0.0, 0.5, 1.0):
        yv, xv = y_lo + t * (y_hi - y_lo), x_lo + t * (x_hi - x_lo)
        parts.append(f'<text x="{pad_l - 6}" y="{py(yv) + 3:.1f}" font-size="10" text-anchor="end" fill="{INK}">'
                     f'{_fmt(yv)}</text><text x="{px(xv):.1f}" y="{pad_t + h + 14}" font-size="10" '
                     f'text-anchor="middle" fill="{INK}">{_fmt(xv)}</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 6}" font-size="12" text-anchor="middle" fill="{INK}">'
                 f'{escape(x_label)}</text><text x="12" y="{pad_t + h / 2}" font-size="12" text-anchor="middle" '
                 f'fill="{INK}" transform="rotate(-90 12 {pad_t + h / 2})">{escape(y_label)}</text>')
    for k, (name, xs, ys, colour) in enumerate(series):
        path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(zip(xs, ys,
                                                                                                       strict=True)))
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<rect x="{pad_l + 8 + k * 200}" y="8" width="12" height="4" fill="{colour}"/>'
                     f'<text x="{pad_l + 24 + k * 200}" y="13" font-size="11" fill="{INK}">{escape(name)}</text>')
    desc = "; ".join(f"{name}: from {_fmt(ys[0])} to {_fmt(ys[-1])}" for name, _, ys, _ in series if ys)
    return _svg(width, height, title, desc, "".join(parts))
