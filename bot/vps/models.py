"""What the provider answers, as pydantic models.

The provider documents its fields but we parse defensively (vps-api.md: "unknown
statuses, extra fields, missing fields"): extra fields are ignored, optional fields
may be absent, an unreadable `created_at` or `size_mb` becomes None rather than
making the whole snapshot unreadable, and a snapshot that carries `server_id`
instead of a `server` object still parses.

What identifies or names something is checked strictly (SPEC §14.5): an id is a JSON
integer (``true`` is not snapshot 1, ``"801"`` is not 801), names and statuses are
strings, and a missing id, name or status makes the entry unreadable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

IN_PROGRESS = "in_progress"
COMPLETED = "completed"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Server(_Model):
    id: StrictInt
    name: StrictStr = ""

    @field_validator("name", mode="before")
    @classmethod
    def _name_or_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class Snapshot(_Model):
    id: StrictInt
    server: Server
    name: StrictStr
    status: StrictStr
    size_mb: StrictInt | None = None
    created_at: datetime | None = None
    description: StrictStr | None = None
    message: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _server_from_server_id(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        server = data.get("server")
        if server is None and data.get("server_id") is not None:
            return {**data, "server": {"id": data["server_id"]}}
        if isinstance(server, int) and not isinstance(server, bool):
            return {**data, "server": {"id": server}}
        return data

    @field_validator("size_mb", mode="wrap")
    @classmethod
    def _size_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> int | None:
        try:
            return handler(value)
        except ValidationError:
            return None

    @field_validator("created_at", mode="wrap")
    @classmethod
    def _utc_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> datetime | None:
        try:
            parsed = handler(value)
        except ValidationError:
            return None
        if parsed is None:
            return None
        # A timestamp without an offset is taken as UTC, the provider's zone.
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)

    @property
    def is_terminal(self) -> bool:
        """No longer changing: completed, or any status other than in_progress."""
        return self.status != IN_PROGRESS

    @property
    def is_completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def is_failed(self) -> bool:
        """Terminal but not completed (`failed`, `error`, or a status we do not know)."""
        return self.is_terminal and not self.is_completed


class ServerState(_Model):
    id: StrictInt
    name: StrictStr = ""
    status: StrictStr = ""

    @field_validator("name", "status", mode="before")
    @classmethod
    def _text_or_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class RestoreResult(_Model):
    """The 200 answer to a restore. `server` is None only if the provider left it out."""

    status: StrictStr = ""
    message: StrictStr = ""
    snapshot: dict[str, Any] = Field(default_factory=dict)
    server: ServerState | None = None
