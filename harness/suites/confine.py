"""A suite's files stay in its folder: ``confine`` (used by harness suites and lm-eval task files alike)."""

from __future__ import annotations

from pathlib import Path

from harness.errors import SafetyError

#: folders (os.pathsep-separated) a suite's files may also come from, besides the suite's own folder
SUITE_ROOTS_ENV = "HARNESS_SUITE_ROOTS"


def confine(spec_path: Path, field: str, given: str, resolved: Path) -> None:
    """A suite is hostile input: a file it names (data, and anything else it reads) must resolve inside the
    suite's own folder, or under a root the user names in ``HARNESS_SUITE_ROOTS``; otherwise a
    ``SafetyError`` (exit 4) naming the path, before anything is read or stored. Symbolic links are
    resolved first, so a link out of the folder is refused too."""
    import os

    roots = [spec_path.parent.resolve()] + [Path(r).resolve() for r in os.environ.get(SUITE_ROOTS_ENV, "").split(os.pathsep) if r]
    if not any(resolved == r or r in resolved.parents for r in roots):
        raise SafetyError(f"{spec_path}: {field} {given!r} resolves to {resolved}, outside the suite's folder "
                          f"{spec_path.parent.resolve()}; a suite reads only files beside it: move the file there, or "
                          f"name its folder in {SUITE_ROOTS_ENV}")
