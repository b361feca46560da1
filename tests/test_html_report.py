"""The HTML evaluation report: every image decodes, ignored pixels show distinctly, and a real headless browser
renders the page (skipped where no Chromium is installed; CI installs it best-effort)."""
import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.analysis.html_report import HATCH, colorize, error_map, to_rgb, worst_images, write_report
from segkit.data.spec import default_palette
from segkit.metrics import summarize

NAMES = ["background", "disk", "square", "triangle"]
PALETTE = default_palette(len(NAMES))


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def _decode(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    img.load()
    return img


def _evaluation(n: int = 5, size: int = 48):
    """Images of every supported kind with truths, noisy predictions, an ignored border, and their metrics."""
    rng = np.random.default_rng(0)
    worst, confusion = [], np.zeros((4, 4), np.int64)
    kinds = [lambda a: a, lambda a: a.astype(np.float32) / 255, lambda a: a[..., :1],
             lambda a: np.concatenate([a, a[..., :1]], axis=2), lambda a: a[..., 0].astype(np.float64) / 255]
    for i in range(n):
        truth = np.zeros((size, size), np.int64)
        truth[5:20, 5:25] = 1 + i % 3
        truth[25:40, 20:45] = 1 + (i + 1) % 3
        truth[:, :2] = 255
        pred = truth.copy()
        pred[truth == 255] = 0
        flip = rng.random(truth.shape) < 0.05 * (i + 1)
        pred[flip] = rng.integers(0, 4, flip.sum())
        image = np.where(truth[..., None] % 255 > 0, 200, 40).astype(np.uint8) + rng.integers(0, 40, (size, size, 3),
                                                                                             dtype=np.uint8)
        valid = truth != 255
        cm = np.bincount(truth[valid] * 4 + pred[valid], minlength=16).reshape(4, 4)
        confusion += cm
        iou = summarize(torch.as_tensor(cm), NAMES)["mIoU"]
        worst.append({"name": f"img_{i:03d}", "miou": iou, "image": kinds[i % len(kinds)](image), "truth": truth,
                      "pred": pred})
    summary = {**summarize(torch.as_tensor(confusion), NAMES), "num_images": n, "split": "val"}
    return summary, confusion, worst_images(worst, count=n)


def test_image_helpers():
    assert to_rgb(np.full((2, 3, 1), 0.5, np.float32)).tolist() == [[[128] * 3] * 3] * 2
    assert to_rgb(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))[0, 0].tolist() == [0, 1, 2]
    truth = np.array([[0, 1], [255, 2]])
    colours = colorize(truth, PALETTE, 255)
    assert colours[0, 1].tolist() == PALETTE[1] and tuple(colours[1, 0]) in HATCH
    errors = error_map(np.zeros((2, 2, 3), np.uint8), truth, np.array([[0, 2], [0, 2]]), 255)
    assert errors[0, 1].tolist() == [230, 30, 30] and errors[0, 0].tolist() != [230, 30, 30]
    assert tuple(errors[1, 0]) in HATCH
    records = [{"miou": 0.5}, {"miou": float("nan")}, {"miou": 0.1}]
    assert [r["miou"] for r in worst_images(records, 2)] == [0.1, 0.5]


def test_report_embeds_decodable_images(tmp_path):
    summary, confusion, worst = _evaluation()
    path = write_report(tmp_path, summary, confusion, NAMES, PALETTE, worst)
    text = path.read_text()
    parser = _Images()
    parser.feed(text)
    gallery = [a for a in parser.images if a["alt"] in ("image", "ground truth", "prediction", "errors")]
    assert len(gallery) == 4 * len(worst)
    for attrs in parser.images:
        img = _decode(attrs["src"])
        assert img.size[0] > 0 and img.size[1] > 0
    for item, k in zip(worst, range(0, len(gallery), 4)):
        np.testing.assert_array_equal(np.asarray(_decode(gallery[k + 1]["src"]).convert("RGB")),
                                      colorize(item["truth"], PALETTE, 255))
        np.testing.assert_array_equal(np.asarray(_decode(gallery[k]["src"]).convert("RGB")), to_rgb(item["image"]))
    assert f"{summary['mIoU']:.4f}" in text and "img_004" in text
    for name, iou in summary["per_class_iou"].items():
        assert f"{iou:.4f}" in text
    assert text.index(worst[0]["name"]) < text.index(worst[-1]["name"])  # lowest mIoU first
    big = dict(worst[0], image=np.zeros((300, 1000, 3), np.uint8), truth=np.zeros((300, 1000), np.int64),
               pred=np.ones((300, 1000), np.int64))
    parser = _Images()
    parser.feed(write_report(tmp_path / "big", summary, confusion, NAMES, PALETTE, [big], max_side=200).read_text())
    assert [_decode(a["src"]).size for a in parser.images if a["alt"] == "errors"] == [(200, 60)]
    with pytest.raises(ValueError, match="must have the same height and width"):
        write_report(tmp_path, summary, confusion, NAMES, PALETTE, [dict(worst[0], pred=worst[0]["pred"][:5])])


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chrome on PATH (CI installs Debian's chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    summary, confusion, worst = _evaluation()
    path = write_report(tmp_path / "report", summary, confusion, NAMES, PALETTE, worst)
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    # every <img> decoded by the browser itself: a copy of the page counts them after load
    probe = tmp_path / "report" / "probe.html"
    probe.write_text(path.read_text().replace("</body>", (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
        "document.body.dataset.loaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;"
        "document.body.dataset.total=imgs.length;});</script></body>")))
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    loaded, total = re.search(r'data-loaded="(\d+)"', dom), re.search(r'data-total="(\d+)"', dom)
    assert loaded and total, dom[-500:]
    assert int(total.group(1)) == 4 * len(worst) + 1 and loaded.group(1) == total.group(1)

    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2400", path.as_uri()], capture_output=True,
                   timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2400, 1280, 3)
    assert pixels.std() > 20  # not a blank page
    reds = (pixels[..., 0] == 230) & (pixels[..., 1] == 30) & (pixels[..., 2] == 30)
    assert reds.sum() > 100  # the error maps were drawn
    bar = (np.abs(pixels.astype(int) - [0x4a, 0x6f, 0xc8]).sum(axis=2) < 6)
    assert bar.sum() > 500  # the IoU bars were drawn
    shutil.copy(shot, path.parent / "screenshot.png")
