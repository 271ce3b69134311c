"""{{ cookiecutter.title }}: an action provider built with the Action Provider Toolkit."""

from .provider import provider

__all__ = ["provider"]
