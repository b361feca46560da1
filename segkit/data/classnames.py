"""Class lists from a file: ``class_names.txt`` (one name per line) or a VOC/CVAT ``labelmap.txt``
(``name:r,g,b:parts:actions``), so ``data.class_names`` can name a file instead of repeating the list in YAML.

Files are read as UTF-8 with or without a byte-order mark (Windows Notepad writes one; it would otherwise become part
of the first name and shift every class id). A ``__ignore__`` line (labelme's ``labels.txt`` convention: the label
of regions not scored) is not a class and is skipped, so labelme's ``labels.txt`` gives the same ids as the
``class_names.txt`` a conversion writes from it."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

from segkit.data.io import DataError

IGNORE_LABEL = "__ignore__"  # labelme's labels.txt: not a class (its regions become ignore_index when converted)
# name:colour:parts:actions, colour "r,g,b" or empty (CVAT and the Datumaro VOC format write this)
_LABELMAP_LINE = re.compile(r"^(?P<name>[^:]*):(?P<colour>[^:]*)(:.*)?$")


def read_class_names(path: str | Path) -> Tuple[List[str], Optional[List[List[int]]]]:
    """``(names, palette)``: class ``i`` is the ``i``-th name; ``palette`` (one ``[r, g, b]`` per class) comes from a
    labelmap's colours and is ``None`` for a plain list or a labelmap without colours. Blank lines, ``#``
    comments and a ``__ignore__`` line are skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"class list file not found: {path}; give one class name per line (class 0 first), or a "
                        "labelmap.txt with lines name:r,g,b::")
    lines = [(i, line.strip()) for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith("#")]
    labelmap = bool(lines) and all(":" in line for _, line in lines)
    lines = [(i, line) for i, line in lines if (line.split(":")[0].strip() if labelmap else line) != IGNORE_LABEL]
    if not lines:
        raise DataError(f"class list file {path} is empty; give one class name per line (class 0 first)")
    names: List[str] = []
    colours: List[Optional[List[int]]] = []
    for number, line in lines:
        if not labelmap:
            names.append(line)
            continue
        match = _LABELMAP_LINE.match(line)
        name, colour = match["name"].strip(), match["colour"].strip()  # type: ignore[index]
        if not name:
            raise DataError(f"{path}:{number}: empty class name in {line!r}; labelmap lines are name:r,g,b::")
        names.append(name)
        if not colour:
            colours.append(None)
            continue
        try:
            rgb = [int(v) for v in colour.split(",")]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"{path}:{number}: colour {colour!r} of class {name!r} is not r,g,b with values 0-255")
        colours.append(rgb)
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DataError(f"class list file {path} names {duplicates} more than once; each class needs one line")
    palette = [c for c in colours if c is not None]
    if labelmap and len(palette) == len(names):
        if len({tuple(c) for c in palette}) != len(palette):
            raise DataError(f"{path}: two classes share a colour; each class needs its own r,g,b")
        return names, palette
    return names, None


__all__ = ["IGNORE_LABEL", "read_class_names"]
