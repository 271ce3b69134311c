"""A demo provider: echoes a string, and on request waits, fails, or pauses until resumed."""

from __future__ import annotations

from typing import Any

from toolkit import ActionFailed, ActionInactive, ActionProvider, RunContext

provider = ActionProvider(
    name="hello",
    title="Hello",
    subtitle="A demonstration action provider",
    description=(
        "Returns {'hello': echo_string}. sleep_time keeps the action ACTIVE that many seconds (cancellable), "
        "fail ends it FAILED, require_resume pauses it INACTIVE until /resume is called."
    ),
    keywords=["demo", "test"],
    input_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["echo_string"],
        "additionalProperties": False,
        "properties": {
            "echo_string": {"type": "string", "description": "Returned as details.hello."},
            "sleep_time": {
                "type": "number",
                "minimum": 0,
                "maximum": 86400,
                "description": "Seconds to stay ACTIVE before finishing.",
            },
            "fail": {"type": "boolean", "description": "End the action FAILED."},
            "require_resume": {"type": "boolean", "description": "Go INACTIVE until resumed."},
        },
    },
    synchronous=False,
    recovery="rerun",
)


@provider.run
def hello(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    if body.get("require_resume") and not ctx.resumed:
        raise ActionInactive("ResumeRequired", "This action waits for a call to /resume.")
    sleep_time = float(body.get("sleep_time", 0))
    if sleep_time:
        ctx.progress(display_status="sleeping", details={"sleep_time": sleep_time})
        ctx.sleep(sleep_time)
    if body.get("fail"):
        raise ActionFailed("HelloFailed", "Failed because the request asked for it (fail: true).")
    return {"hello": body["echo_string"]}
