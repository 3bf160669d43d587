"""manifest.yml is what a user pastes into Slack: Slack must accept it, and it must
ask for no more than snapbot needs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "manifest.yml"
SCHEMA_NAME = "manifest.schema.1.0.0.json"
EVENTS_PATH = "/slack/events"
MINIMAL_BOT_SCOPES = {"commands", "chat:write", "usergroups:read"}


# Slack's published schema ships with the tests (MIT, tests/data/LICENSE.manifest-schema),
# so the manifest is checked in every clone, not only next to the team's shared folder.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "data" / SCHEMA_NAME


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    with MANIFEST.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), "manifest.yml must be a YAML mapping"
    return data


def test_manifest_is_accepted_by_slacks_published_schema(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_background_color_is_a_hex_colour(manifest: dict[str, Any]) -> None:
    # The schema spells this rule "regex", which JSON Schema ignores; Slack does not.
    color = manifest["display_information"]["background_color"]
    assert re.fullmatch(r"#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?", color)


def test_the_only_slash_command_is_snapshot(manifest: dict[str, Any]) -> None:
    commands = manifest["features"]["slash_commands"]
    assert [c["command"] for c in commands] == ["/snapshot"]
    (snapshot,) = commands
    assert snapshot["should_escape"] is False
    for sub in ("list", "create", "restore", "delete", "audit", "pending"):
        assert sub in snapshot["usage_hint"]


def test_request_urls_point_at_the_events_route(manifest: dict[str, Any]) -> None:
    urls = [c["url"] for c in manifest["features"]["slash_commands"]]
    urls.append(manifest["settings"]["interactivity"]["request_url"])
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    for url in urls:
        assert url.startswith("https://"), url
        assert url.endswith(EVENTS_PATH), url


def test_bot_scopes_are_exactly_the_minimal_set(manifest: dict[str, Any]) -> None:
    scopes = manifest["oauth_config"]["scopes"]
    assert sorted(scopes["bot"]) == sorted(MINIMAL_BOT_SCOPES)
    assert len(scopes["bot"]) == len(set(scopes["bot"]))
    assert not scopes.get("user"), "snapbot acts as its bot user only"


def test_bot_user_and_settings(manifest: dict[str, Any]) -> None:
    assert manifest["display_information"]["name"] == "snapbot"
    assert manifest["features"]["bot_user"] == {"display_name": "snapbot", "always_online": True}
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is False
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False
