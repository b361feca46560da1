"""The ``segkit`` command: ``segkit train|evaluate|predict|export|check-data|convert|... ARGS``, the same as
``python scripts/<command>.py ARGS`` (Hydra overrides, ``--help``, ``--multirun`` ...).

The scripts and ``configs/`` live in the repository checkout, next to the ``segkit`` package, so the command works
from an editable install (``pip install -e .``); ``SEGKIT_HOME`` points it at another checkout."""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Dict, List, Optional


def scripts_dir() -> Path:
    """``scripts/`` of the checkout: ``$SEGKIT_HOME/scripts``, else the one beside this package."""
    home = os.environ.get("SEGKIT_HOME")
    return (Path(home).expanduser() if home else Path(__file__).resolve().parents[1]) / "scripts"


def commands() -> Dict[str, Path]:
    """Command name -> script: every ``scripts/*.py``, ``_`` spelled ``-`` (``check_data.py`` -> ``check-data``)."""
    return {p.stem.replace("_", "-"): p for p in sorted(scripts_dir().glob("*.py")) if not p.stem.startswith("_")}


def _summary(script: Path) -> str:
    """The first line of a script's docstring (without running it)."""
    import ast

    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    return doc.splitlines()[0].split(": python ")[0].rstrip(":. ") if doc else ""


def usage(available: Dict[str, Path]) -> str:
    width = max((len(n) for n in available), default=0)
    lines = ["usage: segkit COMMAND [ARGS...]   (ARGS as for python scripts/<command>.py; COMMAND --help for more)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {_summary(path)}" for name, path in available.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``scripts/<command>.py`` in this process with ``sys.argv`` set as if it had been called directly."""
    argv = list(sys.argv[1:] if argv is None else argv)
    available = commands()
    if not available:
        print(f"segkit: no scripts found in {scripts_dir()}. The segkit command runs the scripts of a repository "
              "checkout: install segkit with `pip install -e .` from the checkout, or set SEGKIT_HOME to the "
              "checkout's directory.", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(available))
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    script = available.get(command) or available.get(command.replace("_", "-"))
    if script is None:
        print(f"segkit: unknown command {command!r}\n\n{usage(available)}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
