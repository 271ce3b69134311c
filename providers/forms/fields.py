"""A form's fields, built from a JSON Schema, and the answer read back from what a browser posts.

The rules, once:

* The schema is an object; each property is a field named by its path (``contact.email``; array items are not
  fields of their own). Supported: ``string`` (``format`` ``email``, ``date``, ``uri``; ``enum`` as radio buttons
  when there are at most :data:`RADIO_LIMIT` choices, else a select; ``minLength``, ``maxLength``, ``pattern``),
  ``number`` and ``integer`` (``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``,
  ``multipleOf``), ``boolean`` (a checkbox), ``array`` of any of these (checkboxes for an ``enum`` of items, else
  one value per line), and nested ``object`` (a fieldset). ``title`` is the label, ``description`` the help text,
  ``default`` the first value shown, ``required`` marks fields that must be filled.
* Anything else in a property (``oneOf``, ``$ref``, an array of objects) is refused at ``/run`` with the field's
  path, so a form that cannot be shown is never created.
* Reading a post: an empty input is an absent value; text is converted to the field's type, and a text that is no
  number where a number is wanted is an error on that field. Then the answer is validated against the whole
  schema with jsonschema and each error is put on the field it concerns (an error no field owns goes on top).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from typing import Any, Iterable, Mapping

import jsonschema

RADIO_LIMIT = 5
SCALARS = ("string", "number", "integer", "boolean")
FORMATS = {"email": "email", "date": "date", "uri": "url"}
MAX_FIELDS = 200


class FormSchemaError(ValueError):
    """The schema cannot be shown as a form; ``str()`` names the property and the reason."""


@dataclasses.dataclass
class Field:
    """One input (or a fieldset, for an object) of a form."""

    name: str  # dotted path: the input's name and the key of its errors
    schema: dict[str, Any]
    kind: str  # text, email, date, url, number, integer, checkbox, radio, select, checkboxes, lines, fieldset
    required: bool = False
    children: list["Field"] = dataclasses.field(default_factory=list)

    @property
    def id(self) -> str:
        return field_id(self.name)

    @property
    def label(self) -> str:
        return str(self.schema.get("title") or self.name.rsplit(".", 1)[-1])

    @property
    def help(self) -> str | None:
        description = self.schema.get("description")
        return str(description) if description else None

    @property
    def type(self) -> str:
        if self.kind in ("checkboxes", "lines"):
            return str(self.schema["items"].get("type", "string"))
        return str(self.schema.get("type", "string"))

    @property
    def choices(self) -> list[tuple[str, str]]:
        """(submitted value, label) of each choice: the value is the choice's index, so any JSON value works."""
        source = self.schema["items"] if self.kind == "checkboxes" else self.schema
        return [(str(i), _label(v)) for i, v in enumerate(source["enum"])]

    @property
    def bounds(self) -> dict[str, Any]:
        """HTML attributes that hint at the schema's limits (the server checks them all again)."""
        s = self.schema
        attrs: dict[str, Any] = {}
        if self.kind in ("number", "integer"):
            low = s.get("minimum", s.get("exclusiveMinimum"))
            high = s.get("maximum", s.get("exclusiveMaximum"))
            if isinstance(low, (int, float)) and not isinstance(low, bool):
                attrs["min"] = low
            if isinstance(high, (int, float)) and not isinstance(high, bool):
                attrs["max"] = high
            attrs["step"] = s.get("multipleOf", 1 if self.kind == "integer" else "any")
        elif self.kind in ("text", "email", "url"):
            if "minLength" in s:
                attrs["minlength"] = s["minLength"]
            if "maxLength" in s:
                attrs["maxlength"] = s["maxLength"]
            if "pattern" in s:
                attrs["pattern"] = s["pattern"]
        return attrs

    def walk(self) -> Iterable["Field"]:
        yield self
        for child in self.children:
            yield from child.walk()


def field_id(name: str) -> str:
    """The HTML id of a field: unique and valid for any property name (other characters as ``-hex-``)."""
    return "f-" + "".join(c if c.isascii() and (c.isalnum() or c in "._") else f"-{ord(c):x}-" for c in name)


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def build(schema: Mapping[str, Any]) -> list[Field]:
    """The form's top-level fields; :class:`FormSchemaError` if the schema cannot be shown."""
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), Mapping):
        raise FormSchemaError("the form schema must be an object with properties")
    if not schema["properties"]:
        raise FormSchemaError("the form schema has no properties: there is nothing to ask")
    fields = _object_fields(schema, "")
    count = sum(1 for f in fields for _ in f.walk())
    if count > MAX_FIELDS:
        raise FormSchemaError(f"the form has {count} fields; at most {MAX_FIELDS} are shown")
    return fields


def _object_fields(schema: Mapping[str, Any], prefix: str) -> list[Field]:
    required = set(schema.get("required") or ())
    fields = []
    for key, sub in schema["properties"].items():
        name = f"{prefix}{key}"
        if not key or "." in key or not isinstance(sub, Mapping):
            raise FormSchemaError(f"{name or repr(key)}: property names must be non-empty and without '.'")
        fields.append(_field(name, dict(sub), key in required))
    return fields


def _field(name: str, schema: dict[str, Any], required: bool) -> Field:
    kind_of = schema.get("type")
    unsupported = sorted(set(schema) & {"oneOf", "anyOf", "allOf", "$ref", "not", "if", "patternProperties"})
    if unsupported:
        raise FormSchemaError(f"{name}: {unsupported[0]} cannot be shown as a form field")
    if "enum" in schema and kind_of in (None, "string", "number", "integer", "boolean"):
        if not isinstance(schema["enum"], list) or not schema["enum"]:
            raise FormSchemaError(f"{name}: enum must be a non-empty list")
        return Field(name, schema, "radio" if len(schema["enum"]) <= RADIO_LIMIT else "select", required)
    if kind_of == "string":
        return Field(name, schema, FORMATS.get(schema.get("format", ""), "text"), required)
    if kind_of in ("number", "integer"):
        return Field(name, schema, kind_of, required)
    if kind_of == "boolean":
        return Field(name, schema, "checkbox", required)
    if kind_of == "array":
        items = schema.get("items")
        if not isinstance(items, Mapping) or items.get("type") not in SCALARS:
            raise FormSchemaError(f"{name}: only arrays of strings, numbers, integers or booleans can be asked")
        if "enum" in items:
            if not isinstance(items["enum"], list) or not items["enum"]:
                raise FormSchemaError(f"{name}: items.enum must be a non-empty list")
            return Field(name, schema, "checkboxes", required)
        if items.get("type") == "boolean":
            raise FormSchemaError(f"{name}: an array of booleans needs an items.enum")
        return Field(name, schema, "lines", required)
    if kind_of == "object":
        if not isinstance(schema.get("properties"), Mapping):
            raise FormSchemaError(f"{name}: a nested object needs properties")
        return Field(name, schema, "fieldset", required, _object_fields(schema, name + "."))
    raise FormSchemaError(f"{name}: type {kind_of!r} cannot be shown as a form field")


# --- reading a post ------------------------------------------------------------------------------------------


def _uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urllib.parse.urlsplit(value)
    return bool(parts.scheme and (parts.netloc or parts.path)) and parts.scheme.isascii()


FORMAT_CHECKER = jsonschema.FormatChecker()
FORMAT_CHECKER.checks("uri")(_uri)  # jsonschema checks "uri" only when rfc3987 is installed


def _convert(text: str, kind: str) -> Any:
    if kind == "integer":
        number = float(text)
        if not number.is_integer():
            raise ValueError("Enter a whole number.")
        return int(number)
    if kind == "number":
        number = float(text)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("Enter a number.")
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    if kind == "boolean":
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise ValueError("Enter true or false.")
    return text


def read(fields: list[Field], form: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The answer a post (a werkzeug ``MultiDict``) holds, and errors by field name for what did not convert."""
    answer: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields:
        value = _read_field(field, form, errors)
        if value is not _ABSENT:
            answer[field.name.rsplit(".", 1)[-1]] = value
    return answer, errors


_ABSENT = object()


def _read_field(field: Field, form: Any, errors: dict[str, str]) -> Any:
    if field.kind == "fieldset":
        inner, inner_errors = read(field.children, form)
        errors.update(inner_errors)
        return inner if inner or field.required else _ABSENT
    if field.kind == "checkbox":
        return form.get(field.name) == "true"
    if field.kind in ("radio", "select", "checkboxes"):
        source = field.schema["items"] if field.kind == "checkboxes" else field.schema
        picked = []
        for raw in form.getlist(field.name):
            if raw.isdigit() and int(raw) < len(source["enum"]):
                picked.append(source["enum"][int(raw)])
            else:
                errors[field.name] = "Choose one of the listed options."
        if field.kind == "checkboxes":
            return picked if picked or field.required else _ABSENT
        return picked[0] if picked else _ABSENT
    raw = form.get(field.name, "")
    if field.kind == "lines":
        values = []
        for line in (line.strip() for line in raw.splitlines()):
            if not line:
                continue
            try:
                values.append(_convert(line, field.type))
            except ValueError as exc:
                errors[field.name] = f"{line[:40]!r}: {_reason(exc, field.type)}"
        return values if values or field.required else _ABSENT
    if raw == "":
        return _ABSENT
    try:
        return _convert(raw, field.kind if field.kind in ("number", "integer") else "string")
    except ValueError as exc:
        errors[field.name] = _reason(exc, field.kind)
        return _ABSENT


def _reason(exc: ValueError, kind: str) -> str:
    message = str(exc)
    if message.startswith("Enter"):
        return message
    return {"integer": "Enter a whole number.", "number": "Enter a number."}.get(kind, "Enter a valid value.")


def validate(schema: Mapping[str, Any], fields: list[Field], answer: dict[str, Any]) -> dict[str, str]:
    """jsonschema's errors for ``answer``, each on the field it concerns (``""``: the form as a whole)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=FORMAT_CHECKER)
    names = {f.name for top in fields for f in top.walk()}
    errors: dict[str, str] = {}
    for error in validator.iter_errors(answer):
        path = [str(p) for p in error.absolute_path if not isinstance(p, int)]
        if error.validator == "required":
            missing = [k for k in error.validator_value if isinstance(error.instance, dict) and k not in error.instance]
            for key in missing:
                name = ".".join([*path, key])
                errors.setdefault(name if name in names else "", "This field is required." if name in names
                                  else f"{name} is required.")
            continue
        name = ".".join(path)
        while name and name not in names:
            name = name.rpartition(".")[0]
        errors.setdefault(name, _human(error))
    return errors


def _human(error: jsonschema.ValidationError) -> str:
    v, value = error.validator, error.validator_value
    return {
        "minimum": f"Enter a value of at least {value}.",
        "maximum": f"Enter a value of at most {value}.",
        "exclusiveMinimum": f"Enter a value greater than {value}.",
        "exclusiveMaximum": f"Enter a value less than {value}.",
        "multipleOf": f"Enter a multiple of {value}.",
        "minLength": f"Enter at least {value} characters.",
        "maxLength": f"Enter at most {value} characters.",
        "pattern": "Enter a value in the requested format.",
        "format": {"email": "Enter an email address.", "date": "Enter a date (YYYY-MM-DD).",
                   "uri": "Enter a full web address (https://...)."}.get(str(value), f"Enter a valid {value}."),
        "minItems": f"Give at least {value}.",
        "maxItems": f"Give at most {value}.",
        "uniqueItems": "Give each value once.",
        "enum": "Choose one of the listed options.",
        "type": f"Enter a{'n' if str(value)[0] in 'aeiou' else ''} {value}.",
        "const": "This value is not accepted.",
    }.get(str(v), error.message[:200])


def shown_values(fields: list[Field], form: Any | None, answer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What each input shows: what was typed (after a refused post), else a saved answer, else the defaults.

    Text inputs map to a string; choices and checkboxes to the set of chosen indices (as strings).
    """
    values: dict[str, Any] = {}
    for top in fields:
        for field in top.walk():
            if field.kind == "fieldset":
                continue
            if form is not None:
                if field.kind in ("radio", "select", "checkboxes"):
                    values[field.name] = set(form.getlist(field.name))
                elif field.kind == "checkbox":
                    values[field.name] = form.get(field.name) == "true"
                else:
                    values[field.name] = form.get(field.name, "")
                continue
            value = _lookup(answer, field.name) if answer is not None else field.schema.get("default", _ABSENT)
            values[field.name] = _as_shown(field, value)
    return values


def _lookup(answer: Mapping[str, Any], name: str) -> Any:
    value: Any = answer
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _as_shown(field: Field, value: Any) -> Any:
    if field.kind in ("radio", "select", "checkboxes"):
        source = field.schema["items"] if field.kind == "checkboxes" else field.schema
        chosen = value if isinstance(value, list) and field.kind == "checkboxes" else [value]
        return {str(i) for i, v in enumerate(source["enum"]) if any(v == c and type(v) is type(c) for c in chosen)}
    if field.kind == "checkbox":
        return value is True
    if value is _ABSENT or value is None:
        return ""
    if field.kind == "lines":
        return "\n".join(_label(v) for v in value) if isinstance(value, list) else ""
    return value if isinstance(value, str) else json.dumps(value)
