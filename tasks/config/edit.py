"""Change values in params.yaml the way a person would: checked first, nothing else touched.

``set_params(path, {"top_k": 250, "sample.classes": [1, 2]})`` builds the whole resulting
params, validates it (tasks/config/params.py: unknown keys, ranges, a ``top_k`` above the
codebook) and only then rewrites the file, editing just the text of the values that
change. Comments, their alignment, flow-style mappings (``{a: 1, b: 2}``) and ``null``
stay as written; a key the file lacks is added at the end of its mapping. A bad value
raises ConfigError and leaves the file byte for byte as it was.

``restoring(path)`` puts a file's text back when the block it guards fails (or always):
Prefect's overrides, the sample sweep and ``taming exp run`` leave params.yaml as they
found it when a run does not complete.
"""
from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import yaml

from tasks.config.params import from_dict
from tasks.config.typed import ConfigError
from tasks.data.files import write_text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings (values read as YAML, as by ``taming <stage> -S``) -> {dotted key: value}."""
    changes = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        changes[key.strip()] = yaml.safe_load(raw)
    return changes


def set_params(path: str | Path, changes: Mapping[str, Any], validate: Callable[[dict], object] = from_dict,
               write: bool = True):
    """Write ``changes`` ({dotted key: value}) into the YAML file ``path`` once the whole result
    passes ``validate`` (default: the pipeline's schema); returns what ``validate`` returns.
    ``write=False`` only checks."""
    path = Path(path)
    text = path.read_text()
    wanted = copy.deepcopy(yaml.safe_load(text) or {})
    if not isinstance(wanted, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for key, value in changes.items():
        _assign(wanted, key.split("."), value, key)
    checked = validate(wanted)
    if not write:
        return checked
    new = text
    for key, value in changes.items():
        new = _edit(new, key.split("."), value)
    if yaml.safe_load(new) != wanted:  # the edit must mean exactly what was asked
        raise RuntimeError(f"{path}: editing {', '.join(changes)} in place went wrong; the file is unchanged")
    if new != text:
        write_text(path, new)
    return checked


@contextlib.contextmanager
def restoring(path: str | Path, always: bool = False) -> Iterator[None]:
    """Put the file's current text back if the block raises (and when it ends, if ``always``)."""
    path = Path(path)
    original = path.read_text()
    try:
        yield
    except BaseException:
        write_text(path, original)
        raise
    if always:
        write_text(path, original)


def _assign(data: dict, keys: list[str], value: Any, dotted: str) -> None:
    for i, key in enumerate(keys[:-1]):
        if data.get(key) is None:
            data[key] = {}
        data = data[key]
        if not isinstance(data, dict):
            raise ConfigError(f"{dotted}: {'.'.join(keys[:i + 1])} is not a section")
    data[keys[-1]] = value


def _flow(value: Any) -> str:
    """``value`` as one line of flow-style YAML: 250, null, [0.9, 0.95], {a: 1}."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).removesuffix(
        "\n...\n").strip()


def _nested(keys: list[str], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def _edit(text: str, keys: list[str], value: Any) -> str:
    """``text`` with the value at ``keys`` replaced (or added) by editing only its own characters."""
    node = yaml.compose(text)
    key_node = None
    for i, key in enumerate(keys):
        if not isinstance(node, yaml.MappingNode):  # null or empty: becomes the mapping that holds the rest
            return _replace(text, key_node, node, _flow(_nested(keys[i:], value)))
        pair = next(((k, v) for k, v in node.value if k.value == key), None)
        if pair is None:
            return _insert(text, node, keys[i], _nested(keys[i + 1:], value))
        key_node, node = pair
    return _replace(text, key_node, node, _flow(value))


def _replace(text: str, key_node: yaml.Node, node: yaml.Node, new: str) -> str:
    if isinstance(node, yaml.CollectionNode) and not node.flow_style:
        # a block list or mapping on the lines below its key: the flow value goes after the key
        start = text.index(":", key_node.end_mark.index) + 1
        end, new = _last_end(node), " " + new
    else:
        start, end = node.start_mark.index, node.end_mark.index
        if start == end:  # `key:` with nothing after it (null)
            new = " " + new
    line_end = text.find("\n", end)
    rest = text[end:line_end if line_end >= 0 else len(text)]
    if rest.strip().startswith("#"):  # keep a trailing comment where it was, one space at least
        shift = len(new) - (end - start)
        spaces = len(rest) - len(rest.lstrip(" "))
        text = text[:end] + " " * max(1, spaces - shift) + text[end + spaces:]
    return text[:start] + new + text[end:]


def _last_end(node: yaml.Node) -> int:
    """Where a block collection's own text ends (its end mark may lie at the next key)."""
    while isinstance(node, yaml.CollectionNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    return node.end_mark.index


def _insert(text: str, mapping: yaml.MappingNode, key: str, value: Any) -> str:
    entry = f"{_flow(key)}: {_flow(value)}"
    if mapping.flow_style:  # {a: 1} -> {a: 1, key: value}
        close = text.rindex("}", 0, mapping.end_mark.index)
        return text[:close] + (", " if mapping.value else "") + entry + text[close:]
    # a block mapping: a new line after its last entry's line, at its keys' indentation
    indent = mapping.value[0][0].start_mark.column
    line_end = text.find("\n", _last_end(mapping))
    at = len(text) if line_end < 0 else line_end
    return text[:at] + "\n" + " " * indent + entry + text[at:]
