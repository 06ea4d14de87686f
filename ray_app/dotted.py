"""Dotted config paths ("training.lr") over nested mappings: reading, setting and
flattening them, for overrides, name patterns, sweeps and config differences."""

from __future__ import annotations

from typing import Any


def get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    """`tree["a"]["b"]` for "a.b"; KeyError naming the whole path when it is not there."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def flatten_dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested mapping under its dotted path (`{"a": {"b": 1}}` ->
    `{"a.b": 1}`); an empty section is a leaf of its own."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten_dotted(value, path))
        else:
            flat[path] = value
    return flat


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> str | None:
    """Set "a.b" in `tree`, making missing sections; returns the problem when a part of
    the path is a value, not a section (nothing is set then)."""
    node = tree
    path = dotted.split(".")
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"override '{dotted}': '{'.'.join(path[: i + 1])}' is not a section"
        node = child
    node[path[-1]] = value
    return None
