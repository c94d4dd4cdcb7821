"""``.. config-reference:: module.DataclassName``: a table of the config keys of a dataclass,
their defaults (from the dataclass) and descriptions (from its docstring lines ``key[, key]: text``).

The reference is generated from the code, so it cannot drift; a field the docstring does not
describe is a build error (and the docs build runs with warnings as errors).
"""
from __future__ import annotations

import dataclasses
import importlib
import re

import yaml

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ENTRY = re.compile(r"^(\w+(?:, \w+)*): (.*)$")


def entries(cls) -> list[tuple[list[str], str]]:
    """[(keys, description)] in docstring order; continuation lines are indented."""
    lines = (cls.__doc__ or "").splitlines()
    out: list[tuple[list[str], str]] = []
    for line in lines[1:] if len(lines) > 1 else lines:
        text = line.strip()
        match = ENTRY.match(text)
        names = match.group(1).split(", ") if match else []
        fields = {f.name for f in dataclasses.fields(cls)}
        if match and all(n in fields for n in names):
            out.append((names, match.group(2)))
        elif out and text and line.startswith(" " * 8):
            out[-1] = (out[-1][0], out[-1][1] + " " + text)
    # a one-line docstring "key: text"
    if not out and lines:
        match = ENTRY.match(lines[0].strip())
        if match:
            out.append((match.group(1).split(", "), match.group(2)))
    return out


def default_of(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)) and not value:
        return "unset"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return yaml.safe_dump(value, default_flow_style=True).split("\n")[0] if isinstance(value, str) else str(value)


def rows(cls) -> list[tuple[str, str, str]]:
    """(keys, defaults, description) per docstring entry; raises if a field is undescribed."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    found = entries(cls)
    described = {n for names, _ in found for n in names}
    missing = [n for n in fields if n not in described]
    if missing:
        raise ValueError(f"{cls.__qualname__}: the docstring describes no {', '.join(missing)}")
    return [(", ".join(names), ", ".join(default_of(fields[n]) for n in names), text) for names, text in found]


class ConfigReference(SphinxDirective):
    required_arguments = 1

    def run(self):
        module, _, name = self.arguments[0].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        try:
            table = rows(cls)
        except ValueError as e:
            raise self.error(str(e))
        text = [".. list-table::", "   :header-rows: 1", "   :widths: 20 12 68", "",
                "   * - key", "     - default", "     - meaning"]
        for keys, default, meaning in table:
            text += [f"   * - ``{keys}``", f"     - ``{default}``", f"     - {meaning}"]
        node = nodes.container()
        self.state.nested_parse(StringList(text), self.content_offset, node)
        return node.children


def setup(app):
    app.add_directive("config-reference", ConfigReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
