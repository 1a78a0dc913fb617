#!/usr/bin/env python3
"""Writes python/flotilla/_schema.py from the masters' OpenAPI description (docs/openapi.json).

The Python client has no hand-written copy of the API's types: its TypedDicts, its enums and
the keyword arguments of `Client.submit` (every field of a job file) are generated here, and
the tests fail when the generated file is not what this script makes of the description now
(`--check`). The description itself is checked against the masters by the Rust tests, so a
change of the API reaches the Python client or fails CI.

    python3 python/tools/gen_schema.py          # rewrite python/flotilla/_schema.py
    python3 python/tools/gen_schema.py --check  # exit 1 when it is out of date
"""

import argparse
import json
import keyword
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "openapi.json"
OUT = ROOT / "python" / "flotilla" / "_schema.py"

# Fields `Client.submit` takes apart from these: `command` comes first and may be a string.
SUBMIT_FIRST = "command"


def clean(text):
    """A description as a Python docstring has it: rustdoc links become plain code."""
    text = re.sub(r"\[`([^`]+)`\]", lambda m: "`" + m.group(1).split("::")[-1] + "`", text or "")
    return text.replace('"""', "'''").replace("\\", "\\\\").strip()


def ref_name(ref):
    return ref.rsplit("/", 1)[-1]


def py_type(schema, schemas):
    """The Python annotation of a JSON schema, as a string."""
    if "$ref" in schema:
        return ref_name(schema["$ref"])
    if "oneOf" in schema:
        options = [s for s in schema["oneOf"] if s.get("type") != "null"]
        nullable = len(options) < len(schema["oneOf"])
        inner = " | ".join(py_type(s, schemas) for s in options) if options else "None"
        return f"Optional[{inner}]" if nullable else inner
    kind = schema.get("type")
    nullable = False
    if isinstance(kind, list):
        nullable = "null" in kind
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 else None
    if "enum" in schema and kind == "string":
        base = "Literal[" + ", ".join(json.dumps(v) for v in schema["enum"]) + "]"
    elif kind == "string":
        base = "str"
    elif kind == "integer":
        base = "int"
    elif kind == "number":
        base = "float"
    elif kind == "boolean":
        base = "bool"
    elif kind == "array":
        base = f"List[{py_type(schema.get('items', {}), schemas)}]"
    elif kind == "object":
        extra = schema.get("additionalProperties")
        base = f"Dict[str, {py_type(extra, schemas)}]" if isinstance(extra, dict) else "Dict[str, Any]"
    else:
        base = "Any"
    return f"Optional[{base}]" if nullable else base


def field_description(schema):
    text = schema.get("description", "")
    if not text and "oneOf" in schema:
        text = " ".join(s.get("description", "") for s in schema["oneOf"])
    return clean(text)


def docstring(text, indent):
    if not text:
        return []
    pad = " " * indent
    lines = text.splitlines()
    if len(lines) == 1 and len(text) + indent + 6 <= 100:
        return [f'{pad}"""{text}"""']
    return [f'{pad}"""{lines[0]}'] + [f"{pad}{line}" if line else "" for line in lines[1:]] + [f'{pad}"""']


def const_name(name):
    """`JobState` -> `JOB_STATES`, `OverlapPolicy` -> `OVERLAP_POLICIES`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()
    return words[:-1] + "IES" if words.endswith("Y") else words + "S"


def typed_dict(name, schema, schemas):
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    doc = clean(schema.get("description", ""))
    present = ", ".join(f"`{p}`" for p in props if p in required)
    if present:
        present = textwrap.fill(f"Always present: {present}.", 92, break_on_hyphens=False)
        doc = (doc + "\n\n" if doc else "") + present
    if all(p.isidentifier() and not keyword.iskeyword(p) for p in props):
        out = [f"class {name}(TypedDict, total=False):"]
        out += docstring(doc, 4)
        if not props:
            out.append("    pass")
        for prop, sub in props.items():
            out.append(f"    {prop}: {py_type(sub, schemas)}")
            out += docstring(field_description(sub), 4)
        return out
    # A field named like a Python keyword (`from`): the functional form takes any name.
    out = [f"{name} = TypedDict("]
    out.append(f'    "{name}",')
    out.append("    {")
    for prop, sub in props.items():
        out.append(f'        "{prop}": "{py_type(sub, schemas)}",')
    out.append("    },")
    out.append("    total=False,")
    out.append(")")
    if doc:
        out.append(f"{name}.__doc__ = {json.dumps(doc)}")
    return out


def submit_method(schema, schemas):
    props = schema["properties"]
    names = [SUBMIT_FIRST] + sorted(p for p in props if p != SUBMIT_FIRST)
    out = ["class _SubmitFields:", '    """`Client.submit`, whose keyword arguments are the fields of a job file."""', ""]
    out.append("    def submit(")
    out.append("        self,")
    out.append("        command: Union[str, Sequence[str]],")
    out.append("        *,")
    for prop in names[1:]:
        annotation = py_type(props[prop], schemas)
        if prop == "array":
            annotation = "Union[str, int, None]"
        elif not annotation.startswith("Optional["):
            annotation = f"Optional[{annotation}]"
        out.append(f"        {prop}: {annotation} = None,")
    out.append("        wait: Optional[float] = None,")
    out.append("    ) -> int:")
    doc = [
        "Submits a job and returns its id.",
        "",
        "`command` is the program and its arguments, or a string that `sh -c` runs. A",
        "`request_id` is made up when none is given, so a retry after a failover cannot create",
        "the job twice; give your own to make retries of your own idempotent too. With `wait`,",
        "waits that many seconds at most for the job to finish (see `Client.wait`).",
        "",
        "The other arguments are the fields of a job file (`flotilla submit --file`); those left",
        "at `None` are not sent, and the cluster's defaults apply:",
        "",
    ]
    for prop in names[1:]:
        text = field_description(props[prop]) or "(no description)"
        lines = text.splitlines()
        doc.append(f"{prop}: {lines[0]}")
        doc += ["    " + line for line in lines[1:]]
    if "array" in props:
        doc += ["", "`array` may also be a number `n`, for the tasks `1-n`."]
    out += docstring("\n".join(doc), 8)
    out.append("        fields = {")
    for prop in names[1:]:
        out.append(f'            "{prop}": {prop},')
    out.append("        }")
    out.append("        return self._submit(command, {k: v for k, v in fields.items() if v is not None}, wait)")
    out.append("")
    out.append("    def _submit(self, command, fields, wait):  # pragma: no cover - the client defines it")
    out.append("        raise NotImplementedError")
    return out


def generate(spec):
    schemas = spec["components"]["schemas"]
    out = [
        "# Generated by python/tools/gen_schema.py from docs/openapi.json: do not edit by hand.",
        f'"""The types of the Flotilla API {spec["info"]["version"]}, as the masters describe them.',
        "",
        "Answers are plain dicts; these TypedDicts say which keys they have. Enumerations are",
        "`Literal` types, with a tuple of their values beside each (`JOB_STATES`, …).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import sys",
        "from typing import Any, Dict, List, Optional, Sequence, Union",
        "",
        "if sys.version_info >= (3, 8):",
        "    from typing import Literal, TypedDict",
        "else:  # pragma: no cover",
        "    raise ImportError('flotilla needs Python 3.8 or newer')",
        "",
        f'API_VERSION = "{spec["info"]["version"]}"',
        "",
    ]
    for name in sorted(schemas):
        schema = schemas[name]
        out.append("")
        if schema.get("type") == "string" and "enum" in schema:
            values = ", ".join(json.dumps(v) for v in schema["enum"])
            out.append(f"{name} = Literal[{values}]")
            out += docstring(clean(schema.get("description", "")), 0)
            out.append(f"{const_name(name)} = ({values},)")
        elif schema.get("type") == "object":
            out += typed_dict(name, schema, schemas)
        elif "oneOf" in schema:
            kinds = []
            for variant in schema["oneOf"]:
                kind = variant.get("properties", {}).get("kind", {}).get("enum", ["?"])[0]
                kinds.append(f"- `{kind}`: {clean(variant.get('description', ''))}")
            out.append(f"{name} = Dict[str, Any]")
            out += docstring(clean(schema.get("description", "")) + "\n\n" + "\n".join(kinds), 0)
        else:
            out.append(f"{name} = {py_type(schema, schemas)}")
        out.append("")
    out.append("")
    out += submit_method(schemas["SubmitRequest"], schemas)
    return "\n".join(out).rstrip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is out of date")
    args = parser.parse_args()
    text = generate(json.loads(SPEC.read_text()))
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python3 python/tools/gen_schema.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
