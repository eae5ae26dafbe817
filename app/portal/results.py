"""A finished job's result as the portal shows it: the ranked table of sellers (the method's declared columns
with their intervals) and the charts that fit the method (the numbers come from :mod:`app.services.results`)."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from app.methods import Method
from app.portal import charts
from app.services.results import ranked, value_at


def rows(method: Method, result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per seller: name, dataset id and each declared column (value and interval)."""
    out = []
    for e in ranked(method, result):
        cells = []
        for c in method.columns:
            interval = (e.get("intervals") or {}).get(c.interval) if c.interval else None
            cells.append({"key": c.key, "title": c.title, "value": value_at(e, c.key), "fmt": c.fmt,
                          "interval": interval})
        out.append({"seller": e.get("seller"), "dataset_id": e.get("dataset_id"), "cells": cells,
                    "notes": e.get("notes") or [], "warnings": e.get("warnings") or []})
    return out


def charts_for(method: Method, result: dict[str, Any]) -> list[tuple[str, Markup]]:
    """The charts of a result, each with its caption: relevance against diversity; structural disparity;
    point-value histograms and the removal curve; sellers' Shapley shares."""
    return [(_caption(chart), chart) for chart in _charts(method, result)]


def _caption(chart: Markup) -> str:
    from html import unescape

    text = str(chart)
    return unescape(text.split("<title>", 1)[1].split("</title>", 1)[0]) if "<title>" in text else ""


def _charts(method: Method, result: dict[str, Any]) -> list[Markup]:
    entries = ranked(method, result)
    out: list[Markup] = []
    if entries and "relevance" in entries[0] and "diversity" in entries[0]:
        points = []
        for e in entries:
            iv = e.get("intervals") or {}
            points.append((str(e.get("seller")), float(e["relevance"] or 0), float(e["diversity"] or 0),
                           tuple(iv["relevance"]) if iv.get("relevance") else None,
                           tuple(iv["diversity"]) if iv.get("diversity") else None))
        out.append(charts.scatter(points, "Relevance against diversity, one point per seller",
                                  x_label="relevance R", y_label="diversity D"))
    if entries and "structural_disparity" in entries[0]:
        out.append(charts.bars([str(e.get("seller")) for e in entries],
                               [float(e["structural_disparity"] or 0) for e in entries],
                               "Structural disparity S (lower: wired more like yours)"))
    for e in entries:
        h = e.get("histogram")
        if h and h.get("counts"):
            out.append(charts.histogram(h["edges"], h["counts"], f"Point values of {e.get('seller')}", width=560,
                                        height=150))
    curve = result.get("removal_curve")
    if curve:
        xs = [100 * f for f in curve["fractions"]]
        out.append(charts.lines([("highest-valued removed first", xs, curve["highest_first"], charts.ACCENT),
                                 ("lowest-valued removed first", xs, curve["lowest_first"], "#d9822b")],
                                "The buyer's validation score as points are removed",
                                x_label="% of seller points removed", y_label=curve.get("metric", "score")))
    if method.id == "seller-shapley" and entries:
        out.append(charts.bars([str(e.get("seller")) for e in entries], [float(e.get("value") or 0) for e in entries],
                               "Each seller's Shapley share of the gain",
                               errors=[e.get("stderr") for e in entries]))
    return out
