"""VpsClient: the happy paths and the error taxonomy against the simulator, the faults
(timeouts, lost answers, retries) against httpx.MockTransport."""

from __future__ import annotations

import json
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import stamina
from hypothesis import given, settings
from hypothesis import strategies as st
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from bot.vps import (
    RestoreResult,
    Server,
    ServerState,
    Snapshot,
    VpsAuthError,
    VpsBadRequest,
    VpsClient,
    VpsError,
    VpsNotFound,
    VpsUnavailable,
)
from snapbot_local.provider import (
    CREATE_MESSAGE,
    LIMIT_REACHED,
    NAME_INVALID,
    NOT_RESTORABLE_SERVER,
    SimHandle,
    start_simulator,
)

TOKEN = "s3cr3t-provider-token"


# ---- against the simulator ------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with start_simulator(port=0, token=TOKEN) as handle:
        yield handle


@pytest.fixture
def client(sim: SimHandle) -> Iterator[VpsClient]:
    with VpsClient(sim.url, TOKEN, retries=2) as vps:
        yield vps


def test_list_parses_the_documented_snapshots(client: VpsClient) -> None:
    snapshots = client.list_snapshots()
    assert [s.id for s in snapshots] == [801, 798]
    first = snapshots[0]
    assert first.server == Server(id=12345, name="web-server-01")
    assert first.name == "pre-migration-snapshot"
    assert first.size_mb == 5120
    assert first.created_at == datetime(2025, 1, 15, 18, 30, tzinfo=UTC)
    assert first.description == "Before major migration"
    assert first.is_completed and first.is_terminal and not first.is_failed


def test_list_filters_by_server(client: VpsClient) -> None:
    assert len(client.list_snapshots(12345)) == 2
    assert client.list_snapshots(12346) == []


def test_find_snapshot_reads_through_the_list(client: VpsClient, sim: SimHandle) -> None:
    assert client.find_snapshot(798).name == "weekly-snapshot-2025-01-08"
    assert client.find_snapshot(798, server_id=12345).id == 798
    assert client.find_snapshot(798, server_id=12346) is None
    assert client.find_snapshot(12) is None
    assert "GET snapshots/{id}/" not in sim.state.calls


def test_create_answers_an_in_progress_snapshot_that_later_completes(
    client: VpsClient, sim: SimHandle
) -> None:
    snapshot = client.create_snapshot(12345, "before-update", "Before system update")
    assert snapshot.status == "in_progress" and not snapshot.is_terminal
    assert snapshot.size_mb is None
    assert snapshot.message == CREATE_MESSAGE
    assert snapshot.server.name == "web-server-01"
    assert snapshot.created_at is not None and snapshot.created_at.tzinfo is not None
    sim.state.advance(sim.state.create_seconds)
    done = client.find_snapshot(snapshot.id, server_id=12345)
    assert done is not None and done.is_completed and done.size_mb


def test_restore_answers_the_server_restoring(client: VpsClient, sim: SimHandle) -> None:
    result = client.restore_snapshot(801)
    assert isinstance(result, RestoreResult)
    assert result.status == "success"
    assert result.snapshot["id"] == 801
    assert result.server == ServerState(id=12345, name="web-server-01", status="restoring")
    assert client.get_server(12345).status == "restoring"
    sim.state.advance(sim.state.restore_seconds)
    assert client.get_server(12345).status == "running"


def test_delete_removes_the_snapshot(client: VpsClient) -> None:
    assert client.delete_snapshot(798) is None
    assert client.find_snapshot(798) is None


def test_get_server_is_none_for_unknown_servers_and_a_missing_endpoint(
    client: VpsClient, sim: SimHandle
) -> None:
    assert client.get_server(4) is None
    sim.state.servers_endpoint_enabled = False
    assert client.get_server(12345) is None


def test_resolve_server_by_id_or_name(client: VpsClient) -> None:
    assert client.resolve_server(12345) == Server(id=12345, name="web-server-01")
    assert client.resolve_server("12345") == Server(id=12345, name="web-server-01")
    assert client.resolve_server(12346) == Server(id=12346)  # no snapshots: no name known
    assert client.resolve_server("web-server-01").id == 12345
    assert client.resolve_server("WEB-SERVER-01").id == 12345


def test_resolve_server_with_an_unknown_name_is_not_found(client: VpsClient) -> None:
    with pytest.raises(VpsNotFound) as caught:
        client.resolve_server("mail-server-09")
    assert caught.value.kind == "server"
    assert caught.value.ident == "mail-server-09"
    assert "numeric id" in str(caught.value)


def test_a_rejected_token_is_an_auth_error_that_names_the_setting(sim: SimHandle) -> None:
    with (
        VpsClient(sim.url, "wrong-token", retries=2) as vps,
        pytest.raises(VpsAuthError) as caught,
    ):
        vps.list_snapshots()
    assert caught.value.status == 401
    assert "VPS_API_TOKEN" in str(caught.value)
    assert "wrong-token" not in str(caught.value)
    assert sim.state.calls["GET snapshots/"] == 1  # never retried


@pytest.mark.parametrize(
    ("call", "kind", "ident"),
    [
        (lambda vps: vps.restore_snapshot(999), "snapshot", 999),
        (lambda vps: vps.delete_snapshot(999), "snapshot", 999),
        (lambda vps: vps.create_snapshot(99999, "x"), "server", 99999),
    ],
    ids=["restore", "delete", "create"],
)
def test_unknown_ids_are_not_found_with_their_kind(
    client: VpsClient, sim: SimHandle, call: Callable[[VpsClient], Any], kind: str, ident: int
) -> None:
    with pytest.raises(VpsNotFound) as caught:
        call(client)
    assert (caught.value.kind, caught.value.ident, caught.value.status) == (kind, ident, 404)
    assert str(caught.value) == f"{kind.capitalize()} {ident} does not exist."
    assert sim.state.stats()["total"] == 1  # never retried


def test_bad_requests_carry_the_providers_reason_verbatim(
    client: VpsClient, sim: SimHandle
) -> None:
    with pytest.raises(VpsBadRequest) as caught:
        client.create_snapshot(12345, "no spaces allowed")
    assert caught.value.reason == NAME_INVALID
    assert str(caught.value) == f"The provider refused the request: {NAME_INVALID}"

    for n in range(3):
        client.create_snapshot(12345, f"fill-{n}")
    with pytest.raises(VpsBadRequest) as caught:
        client.create_snapshot(12345, "sixth")
    assert caught.value.reason == LIMIT_REACHED

    client.restore_snapshot(801)
    with pytest.raises(VpsBadRequest) as caught:
        client.restore_snapshot(798)
    assert caught.value.reason == NOT_RESTORABLE_SERVER
    assert sim.state.calls["POST snapshots/{id}/restore/"] == 2


def test_server_errors_are_retried_for_reads_then_reported_unavailable(
    client: VpsClient, sim: SimHandle
) -> None:
    sim.state.fail_next(100)
    with pytest.raises(VpsUnavailable) as caught:
        client.list_snapshots()
    assert caught.value.nothing_changed is True
    assert caught.value.status == 503
    assert "nothing was changed" in str(caught.value)
    assert sim.state.calls["GET snapshots/"] == 3  # 1 + retries=2


def test_a_create_whose_answer_is_lost_is_found_in_the_list_and_not_resent(
    client: VpsClient, sim: SimHandle
) -> None:
    sim.state.fail_next(1, status=502, after_apply=True)
    snapshot = client.create_snapshot(12345, "lost-answer")
    assert snapshot.name == "lost-answer" and snapshot.status == "in_progress"
    assert sim.state.calls["POST snapshots/"] == 1


def test_a_create_refused_with_503_is_reported_as_unknown_not_resent(
    client: VpsClient, sim: SimHandle
) -> None:
    sim.state.fail_next(1)
    with pytest.raises(VpsUnavailable) as caught:
        client.create_snapshot(12345, "refused")
    assert caught.value.nothing_changed is False
    assert "/snapshot list" in str(caught.value)
    assert sim.state.calls["POST snapshots/"] == 1


def test_an_unreachable_provider_is_unavailable_and_nothing_changed() -> None:
    with start_simulator() as gone:
        url = gone.url
    with (
        VpsClient(url, TOKEN, retries=1) as vps,
        pytest.raises(VpsUnavailable) as caught,
    ):
        vps.create_snapshot(12345, "never-sent")
    assert caught.value.nothing_changed is True
    assert "connection refused" in str(caught.value)


# ---- faults, scripted with MockTransport ----------------------------------------------------

BASE = "https://vps.test/api/v1"

Answer = httpx.Response | type[Exception] | Callable[[httpx.Request], httpx.Response]


class Provider:
    """A scripted provider: answers queued per (method, path); records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._answers: dict[tuple[str, str], deque[Answer]] = defaultdict(deque)

    def on(self, method: str, path: str, *answers: Answer) -> Provider:
        self._answers[(method, path)].extend(answers)
        return self

    def calls(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if (r.method, _path(r)) == (method, path))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self._answers[(request.method, _path(request))]
        if not queue:
            return httpx.Response(599, json={"detail": f"unscripted {request.method}"})
        answer = queue[0] if len(queue) == 1 else queue.popleft()  # the last one repeats
        if isinstance(answer, type) and issubclass(answer, Exception):
            raise answer("scripted failure", request=request)
        if callable(answer):
            return answer(request)
        return answer


def _path(request: httpx.Request) -> str:
    return request.url.path.removeprefix("/api/v1/")


def snapshot_json(snap_id: int = 802, name: str = "snap", **extra: Any) -> dict[str, Any]:
    return {
        "id": snap_id,
        "server": {"id": 12345, "name": "web-server-01"},
        "name": name,
        "status": "in_progress",
        "size_mb": None,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": None,
        **extra,
    }


def listing(*snapshots: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"count": len(snapshots), "results": list(snapshots)})


OK_LIST = listing(snapshot_json(801, "old", status="completed"))
UNAVAILABLE = httpx.Response(503, text="Service Unavailable")


@pytest.fixture
def make(sleeps: list[float]) -> Callable[..., tuple[VpsClient, Provider]]:
    clients: list[VpsClient] = []

    def factory(provider: Provider | None = None, **options: Any) -> tuple[VpsClient, Provider]:
        provider = provider or Provider()
        options = {"retries": 3, "backoff_base": 0.2, **options}
        vps = VpsClient(BASE, TOKEN, transport=httpx.MockTransport(provider), **options)
        clients.append(vps)
        return vps, provider

    yield factory
    for vps in clients:
        vps.close()


def test_requests_carry_the_bearer_token_and_json(make) -> None:
    vps, provider = make(
        Provider().on("POST", "snapshots/", httpx.Response(201, json=snapshot_json()))
    )
    vps.create_snapshot(12345, "snap", "why")
    request = provider.requests[0]
    assert str(request.url) == f"{BASE}/snapshots/"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"server_id": 12345, "name": "snap", "description": "why"}


def test_a_read_is_retried_on_503_with_capped_jittered_backoff(make, sleeps) -> None:
    vps, provider = make(Provider().on("GET", "snapshots/", UNAVAILABLE, UNAVAILABLE, OK_LIST))
    assert [s.id for s in vps.list_snapshots()] == [801]
    assert provider.calls("GET", "snapshots/") == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.2 and 0 <= sleeps[1] <= 0.4


def test_backoff_never_exceeds_its_cap(make, sleeps) -> None:
    vps, _ = make(Provider().on("GET", "snapshots/", UNAVAILABLE), retries=8, backoff_cap=0.5)
    with pytest.raises(VpsUnavailable):
        vps.list_snapshots()
    assert len(sleeps) == 8
    assert all(0 <= s <= 0.5 for s in sleeps)


def test_a_read_gives_up_after_its_retries(make) -> None:
    vps, provider = make(Provider().on("GET", "snapshots/", UNAVAILABLE), retries=2)
    with pytest.raises(VpsUnavailable) as caught:
        vps.list_snapshots(12345)
    assert provider.calls("GET", "snapshots/") == 3
    assert provider.requests[0].url.params["server_id"] == "12345"
    assert caught.value.nothing_changed is True and caught.value.status == 503


def test_retries_stop_at_the_deadline(make) -> None:
    vps, provider = make(Provider().on("GET", "snapshots/", UNAVAILABLE), deadline=0)
    with pytest.raises(VpsUnavailable):
        vps.list_snapshots()
    assert provider.calls("GET", "snapshots/") == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout,
        httpx.ConnectError,
        httpx.RemoteProtocolError,
        httpx.Response(502, text="<html>Bad gateway</html>"),
        httpx.Response(429, json={"detail": "Slow down."}),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json={"unexpected": True}),
    ],
    ids=["read-timeout", "connect", "protocol", "502", "429", "not-json", "no-results"],
)
def test_reads_retry_every_kind_of_unavailability(make, failure: Answer) -> None:
    vps, provider = make(Provider().on("GET", "snapshots/", failure, OK_LIST))
    assert len(vps.list_snapshots()) == 1
    assert provider.calls("GET", "snapshots/") == 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(401, json={"detail": "Invalid token."}), VpsAuthError),
        (httpx.Response(403, json={"detail": "Forbidden."}), VpsAuthError),
        (httpx.Response(404, json={"detail": "Not found."}), VpsNotFound),
        (httpx.Response(400, json={"detail": "No."}), VpsBadRequest),
    ],
)
def test_refusals_are_never_retried(make, answer: httpx.Response, error: type[VpsError]) -> None:
    vps, provider = make(Provider().on("GET", "snapshots/", answer))
    with pytest.raises(error):
        vps.list_snapshots()
    assert len(provider.requests) == 1


def test_create_is_not_resent_after_a_timeout_and_is_found_by_name(make) -> None:
    provider = Provider().on("POST", "snapshots/", httpx.ReadTimeout)
    provider.on("GET", "snapshots/", listing(snapshot_json(802, "nightly"), snapshot_json(801)))
    vps, _ = make(provider)
    snapshot = vps.create_snapshot(12345, "nightly")
    assert snapshot.id == 802 and snapshot.name == "nightly"
    assert provider.calls("POST", "snapshots/") == 1
    lookup = provider.requests[1]
    assert (lookup.method, lookup.url.params["server_id"]) == ("GET", "12345")


def test_create_not_found_after_a_timeout_is_an_unknown_outcome(make) -> None:
    provider = Provider().on("POST", "snapshots/", httpx.ReadTimeout)
    provider.on("GET", "snapshots/", OK_LIST)
    vps, _ = make(provider)
    with pytest.raises(VpsUnavailable) as caught:
        vps.create_snapshot(12345, "nightly")
    assert caught.value.nothing_changed is False
    assert str(caught.value) == (
        "The provider did not confirm the snapshot 'nightly' (timed out) and it is not in "
        "the list; the outcome is unknown. Check `/snapshot list` before retrying."
    )
    assert provider.calls("POST", "snapshots/") == 1
    assert provider.calls("GET", "snapshots/") == 1


def test_create_lookup_ignores_an_older_snapshot_of_the_same_name(make) -> None:
    old = snapshot_json(700, "nightly", status="completed", created_at="2025-01-01T00:00:00Z")
    provider = Provider().on("POST", "snapshots/", httpx.Response(500))
    provider.on("GET", "snapshots/", listing(old))
    vps, _ = make(provider)
    with pytest.raises(VpsUnavailable) as caught:
        vps.create_snapshot(12345, "nightly")
    assert caught.value.nothing_changed is False
    assert caught.value.status is None and caught.value.detail == "HTTP 500"


def test_create_whose_lookup_also_fails_is_an_unknown_outcome(make) -> None:
    provider = Provider().on("POST", "snapshots/", httpx.WriteTimeout)
    provider.on("GET", "snapshots/", UNAVAILABLE)
    vps, _ = make(provider, retries=1)
    with pytest.raises(VpsUnavailable) as caught:
        vps.create_snapshot(12345, "nightly")
    assert caught.value.nothing_changed is False
    assert "could not be read" in str(caught.value)
    assert provider.calls("POST", "snapshots/") == 1


def test_create_with_an_unreadable_201_is_looked_up(make) -> None:
    provider = Provider().on("POST", "snapshots/", httpx.Response(201, text="Created"))
    provider.on("GET", "snapshots/", listing(snapshot_json(802, "nightly")))
    vps, _ = make(provider)
    assert vps.create_snapshot(12345, "nightly").id == 802
    assert provider.calls("POST", "snapshots/") == 1


def test_create_is_retried_after_a_429_which_applied_nothing(make) -> None:
    provider = Provider().on(
        "POST", "snapshots/", httpx.Response(429), httpx.Response(201, json=snapshot_json())
    )
    vps, _ = make(provider)
    assert vps.create_snapshot(12345, "snap").id == 802
    assert provider.calls("POST", "snapshots/") == 2


def test_a_redirect_is_not_followed_and_names_the_setting(make) -> None:
    moved = httpx.Response(301, headers={"Location": "https://elsewhere.test/"})
    vps, provider = make(Provider().on("POST", "snapshots/", moved))
    with pytest.raises(VpsUnavailable) as caught:
        vps.create_snapshot(12345, "snap")
    assert "VPS_API_URL" in str(caught.value)
    assert caught.value.nothing_changed is True
    assert len(provider.requests) == 1


def test_create_is_retried_when_the_connection_was_never_made(make) -> None:
    provider = Provider().on(
        "POST", "snapshots/", httpx.ConnectError, httpx.ConnectTimeout,
        httpx.Response(201, json=snapshot_json()),
    )  # fmt: skip
    vps, _ = make(provider)
    assert vps.create_snapshot(12345, "snap").id == 802
    assert provider.calls("POST", "snapshots/") == 3
    assert provider.calls("GET", "snapshots/") == 0


@pytest.mark.parametrize(
    "failure", [httpx.ReadTimeout, httpx.Response(502)], ids=["timeout", "502"]
)
def test_restore_is_never_resent_once_it_may_have_arrived(make, failure: Answer) -> None:
    vps, provider = make(
        Provider().on("POST", "snapshots/801/restore/", failure, httpx.Response(200, json={}))
    )
    with pytest.raises(VpsUnavailable) as caught:
        vps.restore_snapshot(801)
    assert caught.value.nothing_changed is False
    assert "the outcome is unknown" in str(caught.value)
    assert len(provider.requests) == 1


def test_restore_is_retried_when_the_connection_was_never_made(make) -> None:
    answer = httpx.Response(200, json={"status": "success", "server": {"id": 12345}})
    vps, provider = make(
        Provider().on("POST", "snapshots/801/restore/", httpx.ConnectError, answer)
    )
    assert vps.restore_snapshot(801).server == ServerState(id=12345)
    assert len(provider.requests) == 2


def test_restore_accepted_with_an_odd_body_is_still_a_success(make) -> None:
    vps, _ = make(Provider().on("POST", "snapshots/801/restore/", httpx.Response(200, text="OK")))
    result = vps.restore_snapshot(801)
    assert result.status == "success" and result.server is None


def test_delete_is_retried_and_a_404_after_a_lost_answer_is_success(make) -> None:
    vps, provider = make(
        Provider().on("DELETE", "snapshots/801/", httpx.ReadTimeout, httpx.Response(404))
    )
    assert vps.delete_snapshot(801) is None
    assert provider.calls("DELETE", "snapshots/801/") == 2


def test_delete_404_when_nothing_was_sent_before_is_not_found(make) -> None:
    vps, provider = make(
        Provider().on("DELETE", "snapshots/801/", httpx.ConnectError, httpx.Response(404))
    )
    with pytest.raises(VpsNotFound):
        vps.delete_snapshot(801)
    assert provider.calls("DELETE", "snapshots/801/") == 2


def test_delete_that_keeps_failing_may_or_may_not_have_happened(make) -> None:
    vps, provider = make(Provider().on("DELETE", "snapshots/801/", UNAVAILABLE), retries=2)
    with pytest.raises(VpsUnavailable) as caught:
        vps.delete_snapshot(801)
    assert caught.value.nothing_changed is False
    assert "may or may not be gone" in str(caught.value)
    assert provider.calls("DELETE", "snapshots/801/") == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(400, json={"message": "m", "detail": "d"}), "m"),
        (httpx.Response(400, json={"detail": "Server is busy."}), "Server is busy."),
        (httpx.Response(400, json={"error": "e"}), "e"),
        (httpx.Response(400, json={"name": ["Only letters."]}), "name: Only letters."),
        (httpx.Response(400, json=[["deep"]]), "deep"),
        (httpx.Response(400, text="plain words\n"), "plain words"),
        (httpx.Response(400), "HTTP 400"),
        (httpx.Response(409, json={"detail": "Conflict."}), "Conflict."),
    ],
)
def test_bad_request_reason_is_the_providers_own_words(
    make, answer: httpx.Response, reason: str
) -> None:
    vps, _ = make(Provider().on("POST", "snapshots/", answer))
    with pytest.raises(VpsBadRequest) as caught:
        vps.create_snapshot(12345, "x")
    assert caught.value.reason == reason
    assert caught.value.status == answer.status_code


def test_on_call_reports_every_attempt(make) -> None:
    seen: list[tuple[str, str, int | None, float]] = []
    provider = Provider().on("GET", "snapshots/", httpx.ConnectError, UNAVAILABLE, OK_LIST)
    vps, _ = make(provider, on_call=lambda *call: seen.append(call))
    vps.list_snapshots()
    assert [(m, p, s) for m, p, s, _ in seen] == [
        ("GET", "snapshots/", None),
        ("GET", "snapshots/", 503),
        ("GET", "snapshots/", 200),
    ]
    assert all(seconds >= 0 for *_, seconds in seen)


def test_a_failing_on_call_hook_does_not_break_the_call(make) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("metrics down")

    vps, _ = make(Provider().on("GET", "snapshots/", OK_LIST), on_call=broken)
    assert len(vps.list_snapshots()) == 1


# ---- the token stays secret ------------------------------------------------------------------


def test_the_token_never_shows_in_repr_str_or_logs(make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = httpx.Response(400, json={"detail": f"Bad header Bearer {TOKEN}"})
    provider = Provider()
    provider.on("GET", "snapshots/", httpx.Response(401, json={"detail": "Invalid token."}))
    provider.on("POST", "snapshots/", echo)
    provider.on("DELETE", "snapshots/1/", UNAVAILABLE)
    provider.on("POST", "snapshots/1/restore/", httpx.ReadTimeout)
    provider.on("GET", "servers/1/", httpx.Response(404))
    vps, _ = make(provider, retries=1)
    errors: list[BaseException] = []
    for call in (
        vps.list_snapshots,
        lambda: vps.create_snapshot(1, "x"),
        lambda: vps.delete_snapshot(1),
        lambda: vps.restore_snapshot(1),
        lambda: vps.resolve_server("nope"),
    ):
        with pytest.raises(VpsError) as caught:
            call()
        errors.append(caught.value)
    assert vps.get_server(1) is None
    texts = [repr(vps), str(vps), caplog.text]
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [repr(vars(e)) for e in errors]
    for text in texts:
        assert TOKEN not in text
    assert "[redacted]" in errors[1].reason


def test_client_repr_shows_only_the_base_url() -> None:
    with VpsClient("http://127.0.0.1:9/api/v1", TOKEN) as vps:
        assert repr(vps) == "VpsClient(base_url='http://127.0.0.1:9/api/v1/')"


# ---- tolerant models -------------------------------------------------------------------------


def test_snapshot_tolerates_extra_and_missing_optional_fields() -> None:
    snapshot = Snapshot.model_validate(
        {"id": 5, "server": {"id": 1, "name": None, "region": "eu"}, "name": "n",
         "status": "completed", "checksum": "abc", "tags": ["x"]}
    )  # fmt: skip
    assert snapshot.size_mb is None and snapshot.created_at is None
    assert snapshot.description is None and snapshot.server == Server(id=1)


def test_snapshot_accepts_server_id_instead_of_a_server_object() -> None:
    snapshot = Snapshot.model_validate({"id": 5, "server_id": 7, "name": "n", "status": "x"})
    assert snapshot.server == Server(id=7)
    assert (
        Snapshot.model_validate({"id": 5, "server": 7, "name": "n", "status": "x"}).server.id == 7
    )


def test_snapshot_times_are_utc_aware_and_garbage_becomes_none() -> None:
    def parse(created_at: object) -> datetime | None:
        data = {"id": 1, "server": {"id": 1}, "name": "n", "status": "completed"}
        return Snapshot.model_validate({**data, "created_at": created_at}).created_at

    assert parse("2025-01-15T18:30:00Z") == datetime(2025, 1, 15, 18, 30, tzinfo=UTC)
    assert parse("2025-01-15T18:30:00") == datetime(2025, 1, 15, 18, 30, tzinfo=UTC)
    plus_two = parse("2025-01-15T20:30:00+02:00")
    assert plus_two == datetime(2025, 1, 15, 18, 30, tzinfo=UTC)
    assert plus_two.utcoffset() == timedelta(0)
    assert parse("yesterday") is None


@pytest.mark.parametrize(
    ("status", "terminal", "completed", "failed"),
    [
        ("in_progress", False, False, False),
        ("completed", True, True, False),
        ("failed", True, False, True),
        ("error", True, False, True),
        ("some-new-status", True, False, True),
    ],
)
def test_snapshot_status_helpers(
    status: str, terminal: bool, completed: bool, failed: bool
) -> None:
    snap = Snapshot(id=1, server=Server(id=1), name="n", status=status)
    assert (snap.is_terminal, snap.is_completed, snap.is_failed) == (terminal, completed, failed)


def test_a_garbled_entry_does_not_hide_the_rest_of_the_list(make) -> None:
    answer = listing({"name": "no id"}, snapshot_json(801, "fine", size_mb="lots"))
    vps, _ = make(Provider().on("GET", "snapshots/", answer))
    [snapshot] = vps.list_snapshots()
    assert snapshot.id == 801 and snapshot.size_mb is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=5))
def test_any_extra_fields_are_ignored(extra: dict[str, Any]) -> None:
    known = {"id", "server", "server_id", "name", "status", "size_mb", "created_at",
             "description", "message"}  # fmt: skip
    extra = {k: v for k, v in extra.items() if k not in known}
    base = {"id": 801, "server": {"id": 12345, "name": "web"}, "name": "n", "status": "completed"}
    assert Snapshot.model_validate({**extra, **base}) == Snapshot.model_validate(base)


# ---- an untrusted provider's answers: the token in every form, odd restore answers -----

SLASHED_TOKEN = "tok/en+with=odd/chars"


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"message": f"bad token {SLASHED_TOKEN}"}).encode(),
        json.dumps({"message": f"bad token {quote(SLASHED_TOKEN, safe='')}"}).encode(),
        json.dumps({"message": f"bad token {quote(SLASHED_TOKEN)}"}).encode(),
        # the token's first letter as a JSON unicode escape, and slashes escaped
        ('{"message": "bad token \\u0074' + SLASHED_TOKEN[1:].replace("/", "\\/") + '"}').encode(),
        json.dumps({"message": f"bad token {SLASHED_TOKEN}"}).encode("utf-16"),
        f"plain text naming {SLASHED_TOKEN}".encode("latin-1"),
    ],
    ids=["raw", "percent-all", "percent", "json-escaped", "utf-16", "text"],
)
def test_a_token_echoed_in_any_encoding_never_reaches_the_reason(body) -> None:
    provider = Provider().on("GET", "snapshots/", httpx.Response(400, content=body))
    with (
        VpsClient(BASE, SLASHED_TOKEN, transport=httpx.MockTransport(provider)) as vps,
        pytest.raises(VpsBadRequest) as raised,
    ):
        vps.list_snapshots()
    reason = raised.value.reason
    assert "bad token" in reason or "plain text" in reason
    for form in (SLASHED_TOKEN, quote(SLASHED_TOKEN, safe=""), quote(SLASHED_TOKEN), "en+with"):
        assert form not in reason, reason


@pytest.mark.parametrize(
    "answer",
    [{"status": False}, {"status": 0}, {"success": False, "error": "no capacity"}],
)
def test_a_restore_answer_that_says_no_in_its_own_words_is_never_a_start(make, answer) -> None:
    vps, provider = make(
        Provider().on("POST", "snapshots/801/restore/", httpx.Response(200, json=answer))
    )
    with pytest.raises(VpsUnavailable) as raised:
        vps.restore_snapshot(801)
    assert raised.value.nothing_changed is False  # the server's state decides, never a resend
    assert provider.calls("POST", "snapshots/801/restore/") == 1


def test_a_provider_reason_is_clipped_before_it_is_shown_or_stored(make) -> None:
    vps, _ = make(
        Provider().on("GET", "snapshots/", httpx.Response(400, json={"message": "x" * 100_000}))
    )
    with pytest.raises(VpsBadRequest) as raised:
        vps.list_snapshots()
    assert 0 < len(raised.value.reason) <= 500


def test_the_provider_is_reached_through_the_environments_proxy(monkeypatch) -> None:
    """An egress proxy named by HTTP(S)_PROXY is used, as httpx would use it, and the
    answer still goes through the one reader (the token redacted)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)  # a proxy is sent the absolute URL
            body = json.dumps({"count": 0, "results": [], "note": TOKEN}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_port}")
    try:
        with VpsClient("http://provider.invalid/api/v1/", TOKEN) as vps:
            assert vps.list_snapshots() == []
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["http://provider.invalid/api/v1/snapshots/"]


def test_a_provider_on_this_machine_is_never_sent_through_a_proxy(monkeypatch) -> None:
    from bot.vps.client import _environment_proxy

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _environment_proxy("http://127.0.0.1:8000/api/v1/") is None
    assert _environment_proxy("http://localhost:8000/api/v1/") is None
    assert _environment_proxy("https://admin.vps.org/api/v1/") == "http://proxy.example:3128"
    monkeypatch.setenv("NO_PROXY", "admin.vps.org")
    assert _environment_proxy("https://admin.vps.org/api/v1/") is None


def test_outside_test_mode_stamina_waits_what_the_policy_chose(make, sleeps) -> None:
    waited: list[float] = []

    def record(details: RetryDetails) -> None:
        waited.append(details.wait_for)

    vps, provider = make(
        Provider().on("GET", "snapshots/", UNAVAILABLE, UNAVAILABLE, OK_LIST),
        backoff_base=0.02,
        backoff_cap=0.03,
    )
    set_on_retry_hooks([record])
    try:
        with stamina.set_testing(False):
            assert [s.id for s in vps.list_snapshots()] == [801]
    finally:
        set_on_retry_hooks(None)
    assert provider.calls("GET", "snapshots/") == 3
    assert waited == pytest.approx(sleeps) and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.02 and 0 <= sleeps[1] <= 0.03


def test_a_write_that_may_have_been_applied_is_not_retried_and_no_wait_is_chosen(
    make, sleeps
) -> None:
    vps, provider = make(Provider().on("POST", "snapshots/801/restore/", UNAVAILABLE))
    with pytest.raises(VpsUnavailable) as caught:
        vps.restore_snapshot(801)
    assert provider.calls("POST", "snapshots/801/restore/") == 1
    assert caught.value.nothing_changed is False and sleeps == []
