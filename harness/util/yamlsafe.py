"""YAML from files we do not trust (suites, training specs): bounded in size and in alias expansion.

PyYAML's ``safe_load`` never runs code, but an alias bomb ("billion laughs": each level refers to the
previous one nine times) is a few hundred bytes that expand to billions of nodes as soon as anything
walks the result (our line-tracking loader, ``json.dumps`` of a spec). The composed node graph is
small, so the expanded size is computed on it, memoised per node, before anything is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import InputError

#: A suite or a training spec is a page of settings; data lives in data files beside it.
MAX_SPEC_BYTES = 1 << 20
#: Nodes after aliases are expanded; the largest built-in spec has under 200.
MAX_EXPANDED_NODES = 100_000


def read_spec_text(path: Path, what: str, error: type[InputError] = InputError) -> str:
    """The text of a spec file, refused (exit 2) when it is larger than MAX_SPEC_BYTES or not UTF-8."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if size > MAX_SPEC_BYTES:
        raise error(
            f"{path}: {what} is {size:,} bytes, over the {MAX_SPEC_BYTES:,}-byte limit for spec files; "
            "keep examples in a data file (data.path) and the spec small"
        )
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 (byte {exc.start}); re-save it as UTF-8") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def compose_bounded(text: str, path: Path, error: type[InputError] = InputError) -> yaml.Node | None:
    """Compose YAML into nodes and refuse it when aliases expand past MAX_EXPANDED_NODES."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if node is not None:
        n = expanded_size(node)
        if n > MAX_EXPANDED_NODES:
            raise error(
                f"{path}: YAML aliases expand to {n:,} nodes (limit {MAX_EXPANDED_NODES:,}), an alias bomb or a "
                "spec far larger than any real one; remove the nested anchors (&name / *name)"
            )
    return node


def expanded_size(node: yaml.Node) -> int:
    """How many nodes walking ``node`` visits, each alias counted at every place it is used."""
    memo: dict[int, int] = {}
    cap = MAX_EXPANDED_NODES + 1

    def size(n: yaml.Node, depth: int) -> int:
        if id(n) in memo:
            return memo[id(n)]
        if depth > 200:  # deeper than any spec; recursion would overflow first
            return cap
        total = 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total >= cap:
                    break
        elif isinstance(n, yaml.SequenceNode):
            for v in n.value:
                total += size(v, depth + 1)
                if total >= cap:
                    break
        memo[id(n)] = min(total, cap)
        return memo[id(n)]

    return size(node, 0)


def load_yaml_file(path: Path, what: str, error: type[InputError] = InputError) -> Any:
    """``yaml.safe_load`` of a spec file with the size and alias bounds above."""
    text = read_spec_text(path, what, error)
    node = compose_bounded(text, path, error)
    if node is None:
        return None
    try:
        return yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
