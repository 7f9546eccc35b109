"""Check that an environment holds exactly the locked versions: `python .ci/lockcheck.py .ci/constraints.txt`.

Run by .ci/bootstrap after it installs, so a set-up that drifted from the lock (a package pip kept at
another version, one the lock names but nothing installed) stops the README's commands and CI with one
line per package instead of testing a combination nobody locked. Exit 0 when every locked package is
installed at its locked version; 1 otherwise.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def read_lock(path: Path) -> list[Requirement]:
    reqs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if [s.operator for s in req.specifier] != ["=="]:
            raise SystemExit(f"{path}:{number}: {line!r} is not an exact pin (name==version)")
        reqs.append(req)
    return reqs


def main(argv: list[str]) -> int:
    lock = Path(argv[1] if len(argv) > 1 else Path(__file__).with_name("constraints.txt"))
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = []
    for req in read_lock(lock):
        have = installed.get(canonicalize_name(req.name))
        # `==2.13.0` matches torch's local build label (2.13.0+cpu), as pip's own resolver does
        if have is None or not req.specifier.contains(have, prereleases=True):
            wrong.append(f"{req.name}: locked {req.specifier}, installed {have or 'nothing'}")
    for line in wrong:
        print(f"lock mismatch ({lock}): {line}", file=sys.stderr)
    if not wrong:
        print(f"[lockcheck] {len(installed)} packages installed; every one of the lock's pins holds", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
