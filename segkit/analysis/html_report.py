"""An evaluation report to look at: one self-contained ``report.html`` (images embedded as base64 PNG) with the
per-class IoU table, the confusion matrix and a gallery of the worst images (image, truth, prediction, errors).

No plotting or templating dependency: Pillow draws the images, the page is plain HTML and CSS, and opens from disk
or an e-mail attachment as it is.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from segkit.data.spec import default_palette

ERROR_COLOUR = (230, 30, 30)  # wrong pixels in the error map
HATCH = ((255, 255, 255), (150, 150, 150))  # ignored pixels: diagonal stripes, unlike any flat class colour
THUMB = 256  # displayed width of gallery images (pixelated upscaling for small images)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1|3|N)`` uint8 or float in 0-1 -> ``(H, W, 3)`` uint8: the first three channels, or gray
    for one or two channels."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    arr = arr[..., :3] if arr.shape[2] >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    return np.ascontiguousarray(arr)


def _hatch(shape: Sequence[int]) -> np.ndarray:
    yy, xx = np.indices(tuple(shape[:2]))
    return np.where((((xx + yy) // 3) % 2 == 0)[..., None], HATCH[0], HATCH[1]).astype(np.uint8)


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: Optional[int]) -> np.ndarray:
    """Class ids -> palette colours; ``ignore_index`` hatched; ids outside the palette black."""
    mask = np.asarray(mask).astype(np.int64)
    lut = np.zeros((len(palette) + 1, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    out = lut[np.where((mask >= 0) & (mask < len(palette)), mask, len(palette))]
    if ignore_index is not None:
        ignored = mask == ignore_index
        out[ignored] = _hatch(mask.shape)[ignored]
    return out


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, ignore_index: Optional[int]) -> np.ndarray:
    """The image dimmed to gray where the prediction is right, red where it is wrong, hatched where ignored."""
    gray = to_rgb(image).astype(np.float32).mean(axis=2, keepdims=True)
    out = np.repeat((gray * 0.5 + 40).astype(np.uint8), 3, axis=2)
    truth, pred = np.asarray(truth), np.asarray(pred)
    ignored = truth == ignore_index if ignore_index is not None else np.zeros(truth.shape, bool)
    out[(truth != pred) & ~ignored] = ERROR_COLOUR
    out[ignored] = _hatch(truth.shape)[ignored]
    return out


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    """A ``data:image/png;base64,...`` URI (lossless, so masks keep their exact colours)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _swatch(colour: Sequence[int]) -> str:
    r, g, b = (int(c) for c in colour)
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _iou_table(summary: Mapping[str, Any], confusion: np.ndarray, class_names: Sequence[str],
               palette: Sequence[Sequence[int]]) -> str:
    per_class = summary.get("per_class_iou") or {}
    truth_pixels, pred_pixels = confusion.sum(axis=1), confusion.sum(axis=0)
    total = max(float(truth_pixels.sum()), 1.0)
    rows = []
    for i, name in enumerate(class_names):
        iou = per_class.get(name)
        width = 0.0 if iou is None or (isinstance(iou, float) and math.isnan(iou)) else 100.0 * float(iou)
        recall = confusion[i, i] / truth_pixels[i] if truth_pixels[i] else None
        precision = confusion[i, i] / pred_pixels[i] if pred_pixels[i] else None
        rows.append(f"<tr><td class=num>{i}</td><td>{_swatch(palette[i])}{html.escape(name)}</td>"
                    f'<td class=num>{_fmt(iou)}</td><td class=barcell><div class=bar style="width:{width:.1f}%">'
                    f"</div></td><td class=num>{_fmt(None if recall is None else float(recall), 3)}</td>"
                    f"<td class=num>{_fmt(None if precision is None else float(precision), 3)}</td>"
                    f"<td class=num>{100 * truth_pixels[i] / total:.2f}%</td></tr>")
    return ("<table class=iou><thead><tr><th>id</th><th>class</th><th>IoU</th><th class=barcell></th>"
            "<th>recall</th><th>precision</th><th>share of pixels</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table><p class=note>IoU —: the class is in neither the ground truth nor the predictions "
            "(left out of the mean); recall/precision —: no ground-truth/predicted pixels of the class.</p>")


def _confusion_table(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    """Row-normalised (rows: ground truth, columns: prediction), shaded; the raw pixel count on hover."""
    rows_sum = confusion.sum(axis=1, keepdims=True)
    norm = confusion / np.maximum(rows_sum, 1)
    head = "".join(f'<th class=col title="{html.escape(n)}"><div>{html.escape(n)}</div></th>' for n in class_names)
    body = []
    for i, name in enumerate(class_names):
        cells = []
        for j in range(len(class_names)):
            v = float(norm[i, j])
            shade = int(round(255 * (1 - v)))
            colour = "#fff" if v >= 0.6 else "#000"
            kind = " diag" if i == j else ""
            cells.append(f'<td class="cm{kind}" style="background:rgb({shade},{shade},255);color:{colour}" '
                         f'title="truth {html.escape(name)}, predicted {html.escape(class_names[j])}: '
                         f'{int(confusion[i, j])} pixels">{100 * v:.0f}</td>')
        body.append(f"<tr><th class=row>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return (f"<table class=confusion><thead><tr><th class=corner>truth \\ prediction</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table><p class=note>Percent of each ground-truth class's pixels "
            "(rows) predicted as each class (columns); hover a cell for the pixel count.</p>")


def _shrink(arr: np.ndarray, max_side: int, smooth: bool) -> np.ndarray:
    """At most ``max_side`` pixels on the long side (keeps the page light for large images); masks stay exact
    colours (nearest), photos are filtered."""
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return arr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(arr).resize(size, resample))


def _gallery(worst: Sequence[Mapping[str, Any]], palette: Sequence[Sequence[int]], ignore_index: Optional[int],
             max_side: int = 512) -> str:
    cards = []
    for item in worst:
        image, truth, pred = item["image"], np.asarray(item["truth"]), np.asarray(item["pred"])
        rgb = to_rgb(image)
        if rgb.shape[:2] != truth.shape or truth.shape != pred.shape:
            raise ValueError(f"worst image {item.get('name')!r}: image {rgb.shape[:2]}, truth {truth.shape} and "
                             f"prediction {pred.shape} must have the same height and width")
        panels = [("image", _shrink(rgb, max_side, True)),
                  ("ground truth", _shrink(colorize(truth, palette, ignore_index), max_side, False)),
                  ("prediction", _shrink(colorize(pred, palette, ignore_index), max_side, False)),
                  ("errors", _shrink(error_map(rgb, truth, pred, ignore_index), max_side, False))]
        figures = "".join(f'<figure><img src="{png_data_uri(arr)}" alt="{label}" width="{THUMB}" '
                          f'height="{max(1, round(THUMB * arr.shape[0] / arr.shape[1]))}">'
                          f"<figcaption>{label}</figcaption></figure>" for label, arr in panels)
        cards.append(f'<div class=card><h3>{html.escape(str(item.get("name", "?")))} <span class=miou>mIoU '
                     f'{_fmt(item.get("miou"))}</span></h3><div class=row>{figures}</div></div>')
    return "".join(cards) or "<p class=note>No images were given.</p>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;color:#222;
background:#fafafa}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.headline{display:flex;gap:32px;margin:12px 0}.headline div{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:10px 16px}.headline b{display:block;font-size:28px}
table{border-collapse:collapse;background:#fff}td,th{padding:3px 8px;border:1px solid #e4e4e4;font-size:14px}
.num{text-align:right;font-variant-numeric:tabular-nums}.barcell{width:260px}
.bar{height:14px;background:#4a6fc8;border-radius:2px}.sw{display:inline-block;width:12px;height:12px;
margin-right:6px;border:1px solid #999;vertical-align:middle}
.confusion td.cm{width:34px;height:28px;text-align:center;font-size:12px;padding:0}.confusion td.diag{outline:2px
solid #333;outline-offset:-2px}.confusion th.col{height:110px;vertical-align:bottom;padding:2px}
.confusion th.col div{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;font-weight:normal}
.confusion th.row{text-align:right;font-weight:normal;white-space:nowrap}.corner{font-size:11px;color:#666}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}
.card h3{margin:4px 0 8px;font-size:16px}.miou{color:#b22;font-weight:normal;margin-left:8px}
.row{display:flex;gap:10px;flex-wrap:wrap}figure{margin:0}figcaption{font-size:12px;color:#555;text-align:center}
img{image-rendering:pixelated;border:1px solid #ccc;display:block}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;font-size:13px;margin:8px 0}.note{font-size:12px;color:#666}
"""


def render_report(summary: Mapping[str, Any], confusion: np.ndarray, class_names: Sequence[str],
                  palette: Optional[Sequence[Sequence[int]]], worst: Sequence[Mapping[str, Any]],
                  ignore_index: Optional[int] = 255, title: str = "segkit evaluation", max_side: int = 512) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    k = len(class_names)
    if confusion.shape != (k, k):
        raise ValueError(f"confusion matrix is {confusion.shape} but there are {k} class names")
    palette = [list(map(int, c)) for c in (palette or default_palette(k))]
    if len(palette) < k:
        raise ValueError(f"the palette has {len(palette)} colours for {k} classes")
    split = summary.get("split")
    facts = [("mIoU", _fmt(summary.get("mIoU"))), ("pixel accuracy", _fmt(summary.get("pixel_accuracy"))),
             ("images", _fmt(summary.get("num_images"))), ("classes", str(k))]
    headline = "".join(f"<div>{name}<b>{value}</b></div>" for name, value in facts)
    hatch = png_data_uri(_hatch((12, 12)))
    legend = ("".join(f"<span>{_swatch(palette[i])}{html.escape(n)}</span>" for i, n in enumerate(class_names))
              + f'<span><img src="{hatch}" alt="ignored" width="12" height="12" style="display:inline-block;'
              f'vertical-align:middle;margin-right:6px">ignored ({ignore_index})</span>'
              f"<span>{_swatch(ERROR_COLOUR)}error (errors panel)</span>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class=note>{'split: ' + html.escape(str(split)) if split else ''}</div>
<div class=headline>{headline}</div>
<h2>Per-class IoU</h2>
{_iou_table(summary, confusion, class_names, palette)}
<h2>Confusion matrix</h2>
{_confusion_table(confusion, class_names)}
<h2>Worst images (lowest per-image mIoU)</h2>
<div class=legend>{legend}</div>
{_gallery(worst, palette, ignore_index, max_side)}
</body></html>
"""


def write_report(output_dir: str | Path, summary: Mapping[str, Any], confusion: np.ndarray,
                 class_names: Sequence[str], palette: Optional[Sequence[Sequence[int]]],
                 worst: Sequence[Mapping[str, Any]], ignore_index: Optional[int] = 255,
                 title: str = "segkit evaluation", max_side: int = 512) -> Path:
    """Write ``output_dir/report.html`` and return its path.

    ``summary``: the metrics.json dict (:func:`segkit.metrics.summarize` + ``num_images``/``split``);
    ``confusion``: ``(K, K)`` pixel counts, rows = ground truth; ``worst``: dicts ``{name, miou, image, truth,
    pred}`` with ``image`` ``(H, W, C)`` uint8 or float in 0-1 (the first three channels are shown, gray for one),
    ``truth``/``pred`` ``(H, W)`` class ids (``ignore_index`` in ``truth`` is hatched). Gallery images larger than
    ``max_side`` are shown shrunk to it (masks by nearest neighbour, so colours stay exact).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "report.html"
    path.write_text(render_report(summary, confusion, class_names, palette, worst, ignore_index, title, max_side),
                    encoding="utf-8")
    return path


def worst_images(per_image: Sequence[Mapping[str, Any]], count: int = 8) -> List[Dict[str, Any]]:
    """The ``count`` records with the lowest ``miou`` (NaN last: an image with no scored pixel says nothing)."""
    ranked = sorted(per_image, key=lambda r: (math.isnan(float(r["miou"])), float(r["miou"])))
    return [dict(r) for r in ranked[:count]]


__all__ = ["colorize", "error_map", "png_data_uri", "render_report", "to_rgb", "worst_images", "write_report"]
