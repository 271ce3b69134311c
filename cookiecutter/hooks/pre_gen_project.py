"""Refuse answers that would generate a project that does not work, before anything is written."""

import re
import sys

NAME = "{{ cookiecutter.provider_name }}"
PACKAGE = "{{ cookiecutter.package_name }}"
FIELDS = "{{ cookiecutter.input_fields }}"
TYPES = {"string", "integer", "number", "boolean"}

problems = []
if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", NAME):
    problems.append(f"provider name {NAME!r}: lower-case letters, digits, '_', '.' or '-' (it is the URL prefix)")
if not PACKAGE.isidentifier():
    problems.append(f"package name {PACKAGE!r} is not a Python identifier")
seen = set()
for item in FIELDS.split(","):
    field, _, kind = item.strip().partition(":")
    kind = kind.strip() or "string"
    if not field.strip().isidentifier():
        problems.append(f"input field {item.strip()!r}: the name must be a Python identifier")
    elif kind not in TYPES:
        problems.append(f"input field {field}: type {kind!r} is not one of {', '.join(sorted(TYPES))}")
    elif field in seen:
        problems.append(f"input field {field} is given twice")
    seen.add(field.strip())
if problems:
    print("ERROR: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
