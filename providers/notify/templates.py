"""Named Jinja templates for notification bodies: shipped ones, overridden from a deployment's own directory.

A template ``name`` is ``name.html`` and/or ``name.txt``, looked up first in ``APTK_NOTIFY_TEMPLATES_DIR`` and
then among the shipped ones (``notify/`` in the toolkit's templates). Templates are the deployment's; callers
only bring the variables, which are rendered in a sandbox: in HTML every value is escaped, unless the caller
lists it in ``raw_variables`` or the template asks for it with ``|safe``.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import Markup

from toolkit import BadActionRequest

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def shipped_directory() -> Path:
    return Path(str(files("toolkit") / "templates" / "notify"))


@functools.lru_cache(maxsize=16)
def _environments(override: str | None) -> tuple[jinja2.Environment, jinja2.Environment]:
    """(HTML, text) environments over the override directory, then the shipped templates."""
    searched = [override] if override else []
    loader = jinja2.FileSystemLoader([*searched, str(shipped_directory())])
    common: dict[str, Any] = {"loader": loader, "undefined": jinja2.StrictUndefined, "keep_trailing_newline": True}
    return (ImmutableSandboxedEnvironment(autoescape=True, **common),
            ImmutableSandboxedEnvironment(autoescape=False, **common))


def _load(env: jinja2.Environment, name: str) -> jinja2.Template | None:
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound:
        return None
    except jinja2.TemplateSyntaxError as exc:
        raise BadActionRequest(f"template: this server's template {name} is broken (line {exc.lineno}: "
                               f"{exc.message}).") from None


def render(name: str, variables: Mapping[str, Any], raw: set[str], subject: str,
           config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(text, html) for the template ``name``; either may be None (not both)."""
    from .mail import _setting

    if not NAME.fullmatch(name):
        raise BadActionRequest(f"template: {name[:64]!r} is not a template name (letters, digits, '_', '-').")
    html_env, text_env = _environments(_setting(config, "APTK_NOTIFY_TEMPLATES_DIR"))
    html_template, text_template = _load(html_env, f"{name}.html"), _load(text_env, f"{name}.txt")
    if html_template is None and text_template is None:
        raise BadActionRequest(f"template: this server has no template named {name!r}.")
    values = {"subject": subject, **variables}
    out: list[str | None] = []
    for template, markup in ((text_template, False), (html_template, True)):
        if template is None:
            out.append(None)
            continue
        context = {k: Markup(v) if markup and k in raw and isinstance(v, str) else v for k, v in values.items()}
        try:
            out.append(template.render(context))
        except jinja2.UndefinedError as exc:
            raise BadActionRequest(f"template: {name} needs a value body_variables does not give ({exc.message}).") \
                from None
        except SecurityError as exc:
            raise BadActionRequest(f"template: {name} refused an unsafe operation ({exc}).") from None
        except (TypeError, ValueError, jinja2.TemplateError) as exc:
            raise BadActionRequest(f"template: {name} could not be rendered with these variables ({exc}).") \
                from None
    return out[0], out[1]
