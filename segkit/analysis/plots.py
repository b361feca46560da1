"""Figures drawn with Pillow (no plotting dependency): confusion matrices and bar charts."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def confusion_matrix_image(cm: np.ndarray, class_names: Sequence[str], cell: int = 44) -> Image.Image:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction) with percentages."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    font = ImageFont.load_default()
    left, top = 8 + 7 * max(len(n) for n in class_names), 40
    img = Image.new("RGB", (left + k * cell + 10, top + k * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), "rows: ground truth, columns: prediction (row-normalised)", fill="black", font=font)
    for i, name in enumerate(class_names):
        draw.text((4, top + i * cell + cell // 2 - 5), name, fill="black", font=font)
        draw.text((left + i * cell + 2, top - 14), name[:7], fill="black", font=font)
    for i in range(k):
        for j in range(k):
            v = rows[i, j]
            shade = int(255 * (1 - v))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="grey")
            draw.text((x0 + 6, y0 + cell // 2 - 5), f"{100 * v:.0f}%", fill="black" if v < 0.6 else "white",
                      font=font)
    return img


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], width: int = 360,
              bar_height: int = 22) -> Image.Image:
    """A horizontal bar chart with value labels."""
    font = ImageFont.load_default()
    margin = 10 + 7 * max(len(s) for s in labels)
    img = Image.new("RGB", (margin + width + 80, 30 + len(labels) * (bar_height + 6)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 6), title, fill="black", font=font)
    vmax = max([abs(v) for v in values if v == v] + [1e-12])
    for i, (label, v) in enumerate(zip(labels, values)):
        y = 26 + i * (bar_height + 6)
        draw.text((6, y + bar_height // 2 - 5), label, fill="black", font=font)
        length = 0 if v != v else int(width * abs(v) / vmax)
        draw.rectangle([margin, y, margin + length, y + bar_height], fill=(70, 110, 200))
        draw.text((margin + length + 4, y + bar_height // 2 - 5), f"{v:.4g}", fill="black", font=font)
    return img


def stack_vertical(images: Sequence[Image.Image]) -> Image.Image:
    w = max(i.width for i in images)
    out = Image.new("RGB", (w, sum(i.height for i in images)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out
