"""The form's description: plain text as paragraphs, or Markdown rendered without raw HTML and then sanitised."""

from __future__ import annotations

from markupsafe import Markup, escape

ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h2", "h3", "h4",
                "hr", "table", "thead", "tbody", "tr", "th", "td"}


def render_description(text: str, mimetype: str = "text/plain") -> Markup:
    if not text:
        return Markup("")
    if mimetype == "text/markdown":
        import nh3
        from markdown_it import MarkdownIt

        html = MarkdownIt("js-default").enable("table").render(text)  # js-default: raw HTML is shown as text
        return Markup(nh3.clean(html, tags=ALLOWED_TAGS, attributes={"a": {"href", "title"}},
                                url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer nofollow"))
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return Markup("").join(Markup("<p>{}</p>").format(Markup("<br>").join(escape(line) for line in p.split("\n")))
                           for p in paragraphs)
