"""The portal's server-side SVG charts: well-formed, accessible (title and description), labels that do not
cover each other, whiskers for every interval."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from app.portal.charts import _label_box, _overlap, _place_labels, scatter

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup) -> ET.Element:
    return ET.fromstring(str(markup))


def test_labels_of_points_close_together_do_not_overlap():
    anchors = [(400.0, 200.0, "Urban housing 2025"), (404.0, 190.0, "Rural housing"), (398.0, 205.0, "Pilot")]
    placed = _place_labels(anchors, (46.0, 464.0))
    boxes = [_label_box(x, y, text, anchor) for (x, y, anchor), (_, _, text) in zip(placed, anchors, strict=True)]
    for i in range(len(boxes)):
        assert boxes[i][0] >= 46.0 and boxes[i][2] <= 464.0  # inside the plot
        for j in range(i + 1, len(boxes)):
            assert _overlap(boxes[i], boxes[j]) == 0.0, (placed[i], placed[j])


def test_scatter_is_well_formed_with_a_whisker_per_interval_and_a_description():
    points = [("a", 0.92, 0.058, (0.83, 1.0), (0.0, 0.16)), ("b", 0.90, 0.078, (0.80, 1.0), None),
              ("c<&>", 0.78, 0.20, None, None)]
    svg = _parse(scatter(points, "R against D", x_label="relevance R", y_label="diversity D"))
    assert svg.find(f"{SVG}title").text == "R against D"
    assert "c<&>: relevance R 0.7800" in svg.find(f"{SVG}desc").text  # escaped in the markup, intact when read
    assert len(svg.findall(f".//{SVG}circle")) == 3
    whiskers = [p for p in svg.findall(f".//{SVG}path") if p.get("fill") == "none"]
    assert len(whiskers) == 3  # a's two intervals and b's one
