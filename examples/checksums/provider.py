"""A checksum and metadata extractor over a folder of a configured root."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from toolkit import ActionFailed, ActionProvider, BadActionRequest, HookContext, RunContext, register_settings
from toolkit.settings import setting

ROOT_SETTING = "APTK_CHECKSUMS_ROOT"
register_settings(ROOT_SETTING)

provider = ActionProvider(
    name="checksums",
    title="Checksums and metadata",
    description="SHA-256, size and modification time of every file in a folder under the configured root.",
    input_schema={
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "description": "A folder, relative to the root."},
            "max_files": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1000},
        },
    },
    runnable_by=["all_authenticated_users"],
)


def _folder(config: Any, path: str) -> Path:
    root_text = setting(config, ROOT_SETTING)
    if not root_text:
        raise ActionFailed("NotConfigured", f"{ROOT_SETTING} is not set")
    root = Path(root_text).resolve()
    folder = (root / path.lstrip("/")).resolve()
    if folder != root and root not in folder.parents:
        raise BadActionRequest(f"body.path: {path!r} leads outside the root")
    return folder


@provider.check
def within_root(body: dict[str, Any], ctx: HookContext) -> None:
    folder = _folder(ctx.config, body["path"])
    if not folder.is_dir():
        raise BadActionRequest(f"body.path: {body['path']!r} is not a folder")


@provider.run
def checksum(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    folder = _folder(ctx.config, body["path"])
    limit = body.get("max_files", 1000)
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if len(files) >= limit:
            raise ActionFailed("TooManyFiles", f"more than {limit} files under {body['path']!r}")
        ctx.check()
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        stat = path.stat()
        files.append({"path": str(path.relative_to(folder)), "size": stat.st_size, "mtime": stat.st_mtime,
                      "sha256": digest.hexdigest()})
        ctx.progress(details={"files_done": len(files)}, display_status=f"{len(files)} files")
    return {"files": files, "total_bytes": sum(f["size"] for f in files)}
