"""The provider simulator answers as vps-api.md documents, over real loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapbot_local import provider as simulator
from snapbot_local.provider import (
    CREATE_MESSAGE,
    FILTER_INVALID,
    INVALID_TOKEN,
    LIMIT_REACHED,
    NAME_INVALID,
    NAME_REQUIRED,
    NOT_A_JSON_OBJECT,
    NOT_RESTORABLE_SERVER,
    RESTORE_MESSAGE,
    SERVER_ID_REQUIRED,
    SimHandle,
    start_simulator,
)

TOKEN = "sim-token"
ROOT = Path(__file__).resolve().parents[3]

DOC_SNAPSHOTS = [
    {
        "id": 801,
        "server": {"id": 12345, "name": "web-server-01"},
        "name": "pre-migration-snapshot",
        "status": "completed",
        "size_mb": 5120,
        "created_at": "2025-01-15T18:30:00Z",
        "description": "Before major migration",
    },
    {
        "id": 798,
        "server": {"id": 12345, "name": "web-server-01"},
        "name": "weekly-snapshot-2025-01-08",
        "status": "completed",
        "size_mb": 4856,
        "created_at": "2025-01-08T12:00:00Z",
        "description": "Weekly snapshot",
    },
]


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with start_simulator(port=0, token=TOKEN, create_seconds=5.0, restore_seconds=5.0) as handle:
        yield handle


@pytest.fixture
def api(sim: SimHandle) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=sim.url, headers=headers, timeout=5) as client:
        yield client


@pytest.fixture
def admin(sim: SimHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.admin_url, timeout=5) as client:
        yield client


def create(
    api: httpx.Client, server_id: int = 12345, name: str = "snap", **extra
) -> httpx.Response:
    return api.post("snapshots/", json={"server_id": server_id, "name": name, **extra})


# ---- list ---------------------------------------------------------------------------------


def test_list_answers_the_documented_snapshots_newest_first(api: httpx.Client) -> None:
    response = api.get("snapshots/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"count": 2, "results": DOC_SNAPSHOTS}


def test_list_filters_by_server(api: httpx.Client) -> None:
    assert api.get("snapshots/", params={"server_id": 12345}).json()["count"] == 2
    assert api.get("snapshots/", params={"server_id": 12346}).json() == {
        "count": 0,
        "results": [],
    }


@pytest.mark.parametrize("value", ["abc", "1.5", "12345x"])
def test_list_with_a_non_integer_filter_is_a_bad_request(api: httpx.Client, value: str) -> None:
    response = api.get("snapshots/", params={"server_id": value})
    assert response.status_code == 400
    assert response.json() == {"detail": FILTER_INVALID}


def test_paths_without_trailing_slash_are_accepted(api: httpx.Client) -> None:
    assert api.get("snapshots").status_code == 200
    assert api.get("servers/12345").json()["status"] == "running"
    assert api.post("snapshots/801/restore").status_code == 200


def test_new_snapshots_list_first(api: httpx.Client) -> None:
    created = create(api, name="newest").json()
    ids = [s["id"] for s in api.get("snapshots/").json()["results"]]
    assert ids == [created["id"], 801, 798]


# ---- create -------------------------------------------------------------------------------


def test_create_answers_201_with_an_in_progress_snapshot(api: httpx.Client) -> None:
    response = create(api, name="before-update-snapshot", description="Before system update")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "id", "server", "name", "status", "size_mb", "created_at", "description", "message",
    }  # fmt: skip
    assert body["id"] == 802
    assert body["server"] == {"id": 12345, "name": "web-server-01"}
    assert body["name"] == "before-update-snapshot"
    assert body["status"] == "in_progress"
    assert body["size_mb"] is None
    assert body["description"] == "Before system update"
    assert body["message"] == CREATE_MESSAGE
    assert body["created_at"].endswith("Z")
    assert create(api, name="second").json()["id"] == 803


def test_create_stamps_created_at_from_the_injected_clock() -> None:
    with start_simulator(clock=lambda: 1_737_044_100.0) as sim:  # 2025-01-16T16:15:00Z
        sim.state.advance(60)
        with httpx.Client(base_url=sim.url, headers={"Authorization": "Bearer sim-token"}) as api:
            assert create(api).json()["created_at"] == "2025-01-16T16:16:00Z"


@pytest.mark.parametrize(
    "name", ["has space", "semi;colon", "dot.ted", "", "ünïcode", "trailing-newline\n", "a/b"]
)
def test_create_rejects_names_outside_letters_digits_hyphens_underscores(
    api: httpx.Client, name: str
) -> None:
    response = create(api, name=name)
    assert response.status_code == 400
    assert response.json() == {"detail": NAME_INVALID}


def test_create_accepts_letters_digits_hyphens_underscores(api: httpx.Client) -> None:
    assert create(api, name="Aa0_-z").status_code == 201


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, SERVER_ID_REQUIRED),
        ({"name": "x"}, SERVER_ID_REQUIRED),
        ({"server_id": "12345", "name": "x"}, SERVER_ID_REQUIRED),
        ({"server_id": True, "name": "x"}, SERVER_ID_REQUIRED),
        ({"server_id": 12345}, NAME_REQUIRED),
        ({"server_id": 12345, "name": 7}, NAME_REQUIRED),
        ([{"server_id": 12345, "name": "x"}], NOT_A_JSON_OBJECT),
    ],
)
def test_create_with_missing_or_mistyped_fields_is_a_bad_request(
    api: httpx.Client, body: object, detail: str
) -> None:
    response = api.post("snapshots/", json=body)
    assert response.status_code == 400
    assert response.json() == {"detail": detail}


def test_create_with_a_body_that_is_not_json_is_a_bad_request(api: httpx.Client) -> None:
    response = api.post("snapshots/", content=b"server_id=12345&name=x")
    assert response.status_code == 400
    assert response.json() == {"detail": NOT_A_JSON_OBJECT}


def test_create_on_an_unknown_server_is_not_found(api: httpx.Client) -> None:
    response = create(api, server_id=99999)
    assert response.status_code == 404
    assert response.json() == {"detail": "Server 99999 does not exist."}


def test_sixth_snapshot_on_a_server_is_refused_counting_in_progress_ones(
    api: httpx.Client,
) -> None:
    for n in range(3):  # 2 seeded + 3 in progress = 5
        assert create(api, name=f"s{n}").status_code == 201
    response = create(api, name="one-too-many")
    assert response.status_code == 400
    assert response.json() == {"detail": LIMIT_REACHED}
    assert create(api, server_id=12346, name="other-server").status_code == 201
    assert api.delete("snapshots/798/").status_code == 204
    assert create(api, name="room-again").status_code == 201


def test_concurrent_creates_from_16_threads_never_exceed_the_limit(sim: SimHandle) -> None:
    statuses: list[int] = []
    barrier = threading.Barrier(16)

    def worker(n: int) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=sim.url, headers=headers, timeout=5) as client:
            barrier.wait()
            statuses.append(create(client, server_id=12346, name=f"race-{n}").status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 5 + [400] * 11
    assert sim.state.list_snapshots(12346)["count"] == 5


# ---- time: snapshots complete, restores end ------------------------------------------------


def test_snapshot_completes_after_create_seconds() -> None:
    # A clock that stands still: 4.9 s is 4.9 s however slowly the requests go.
    frozen = time.time()
    with (
        start_simulator(port=0, token=TOKEN, create_seconds=5.0, clock=lambda: frozen) as sim,
        httpx.Client(
            base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as api,
    ):
        _completes_after_create_seconds(sim, api)


def _completes_after_create_seconds(sim: SimHandle, api: httpx.Client) -> None:
    snap_id = create(api).json()["id"]

    def current() -> dict:
        return next(s for s in api.get("snapshots/").json()["results"] if s["id"] == snap_id)

    sim.state.advance(4.9)
    assert current()["status"] == "in_progress"
    sim.state.advance(0.2)
    done = current()
    assert done["status"] == "completed"
    assert isinstance(done["size_mb"], int) and done["size_mb"] > 0


def test_restore_makes_the_server_restoring_until_restore_seconds_pass(
    sim: SimHandle, api: httpx.Client
) -> None:
    response = api.post("snapshots/801/restore/")
    assert response.status_code == 200
    assert response.json() == {
        "status": "success",
        "message": RESTORE_MESSAGE,
        "snapshot": {"id": 801, "name": "pre-migration-snapshot", "created_at": "2025-01-15T18:30:00Z"},
        "server": {"id": 12345, "name": "web-server-01", "status": "restoring"},
    }  # fmt: skip
    assert api.get("servers/12345/").json() == {
        "id": 12345,
        "name": "web-server-01",
        "status": "restoring",
    }
    second = api.post("snapshots/798/restore/")
    assert second.status_code == 400
    assert second.json() == {"detail": NOT_RESTORABLE_SERVER}

    sim.state.advance(5.0)
    assert api.get("servers/12345/").json()["status"] == "running"
    assert api.post("snapshots/798/restore/").status_code == 200


def test_restoring_a_snapshot_still_in_progress_is_refused(api: httpx.Client) -> None:
    snap_id = create(api).json()["id"]
    response = api.post(f"snapshots/{snap_id}/restore/")
    assert response.status_code == 400
    assert "in_progress" in response.json()["detail"]


def test_create_is_allowed_while_the_server_restores(api: httpx.Client) -> None:
    assert api.post("snapshots/801/restore/").status_code == 200
    assert create(api).status_code == 201


# ---- restore / delete / servers: not found --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "snapshots/9/restore/"), ("DELETE", "snapshots/9/")]
)
def test_unknown_snapshot_is_not_found(api: httpx.Client, method: str, path: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Snapshot 9 does not exist."}


def test_delete_answers_204_with_an_empty_body_and_removes_it(api: httpx.Client) -> None:
    response = api.delete("snapshots/801/")
    assert response.status_code == 204
    assert response.content == b""
    assert [s["id"] for s in api.get("snapshots/").json()["results"]] == [798]
    assert api.delete("snapshots/801/").status_code == 404


def test_get_server_answers_404_for_an_unknown_server(api: httpx.Client) -> None:
    response = api.get("servers/1/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Server 1 does not exist."}


def test_get_server_answers_404_for_all_when_the_endpoint_is_disabled(
    sim: SimHandle, api: httpx.Client
) -> None:
    assert api.get("servers/12347/").json()["name"] == "cache-server-01"
    sim.state.servers_endpoint_enabled = False
    assert api.get("servers/12345/").status_code == 404
    assert api.get("servers/12347/").status_code == 404


def test_unknown_paths_answer_404_json_and_wrong_methods_405(api: httpx.Client) -> None:
    response = api.get("backups/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}
    assert api.get("snapshots/801/").status_code == 405  # there is no single-snapshot GET
    assert api.put("snapshots/").status_code == 405


# ---- authentication ---------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "snapshots/"),
    ("POST", "snapshots/"),
    ("POST", "snapshots/801/restore/"),
    ("DELETE", "snapshots/801/"),
    ("GET", "servers/12345/"),
    ("GET", "no-such-endpoint/"),
    ("GET", "/elsewhere"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Token {TOKEN}"},
    ],
    ids=["missing", "wrong", "no-scheme", "other-scheme"],
)
def test_every_endpoint_answers_401_without_the_right_token(
    sim: SimHandle, method: str, path: str, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=sim.url, headers=headers) as client:
        response = client.request(method, path, json={"server_id": 12345, "name": "x"})
    assert response.status_code == 401
    assert response.json() == {"detail": INVALID_TOKEN}
    assert len(sim.state.list_snapshots()["results"]) == 2  # nothing changed


# ---- faults and admin ---------------------------------------------------------------------------


def test_fail_next_answers_that_status_then_recovers(sim: SimHandle, api: httpx.Client) -> None:
    sim.state.fail_next(2, status=502)
    assert [api.get("snapshots/").status_code for _ in range(3)] == [502, 502, 200]


def test_fail_next_after_apply_takes_effect_but_loses_the_answer(
    sim: SimHandle, api: httpx.Client
) -> None:
    sim.state.fail_next(1, after_apply=True)
    assert create(api, name="applied").status_code == 503
    names = [s["name"] for s in api.get("snapshots/").json()["results"]]
    assert "applied" in names


def test_failed_requests_do_not_apply(sim: SimHandle, api: httpx.Client) -> None:
    sim.state.fail_next(1)
    assert create(api, name="lost").status_code == 503
    assert api.get("snapshots/").json()["count"] == 2


def test_fail_rate_is_seeded_and_bounded(sim: SimHandle, api: httpx.Client) -> None:
    sim.state.fail_rate = 1.0
    assert api.get("snapshots/").status_code == 503
    sim.state.fail_rate = 0.5
    statuses = [api.get("snapshots/").status_code for _ in range(40)]
    assert 0 < statuses.count(503) < 40
    sim.state.fail_rate = 0.0
    assert api.get("snapshots/").status_code == 200


def test_latency_delays_every_answer(sim: SimHandle, api: httpx.Client) -> None:
    sim.state.latency = 0.15
    begun = time.perf_counter()
    api.get("snapshots/")
    assert time.perf_counter() - begun >= 0.15


def test_a_held_request_waits_until_released_and_then_answers(
    sim: SimHandle, api: httpx.Client
) -> None:
    answers: list[httpx.Response] = []
    with sim.state.hold("POST", "snapshots/{id}/restore/") as held:
        caller = threading.Thread(target=lambda: answers.append(api.post("snapshots/801/restore/")))
        caller.start()
        held.wait_arrived(1)
        # Counted, not applied, not answered: the server is not restoring yet.
        assert sim.state.calls["POST snapshots/{id}/restore/"] == 1
        assert api.get("servers/12345/").json()["status"] == "running"
        assert answers == []
        held.release()
        caller.join(30)
    assert [a.status_code for a in answers] == [200]
    assert api.get("servers/12345/").json()["status"] == "restoring"


def test_a_hold_released_with_a_status_answers_it_and_changes_nothing(
    sim: SimHandle, api: httpx.Client
) -> None:
    answers: list[httpx.Response] = []
    with sim.state.hold("POST", "snapshots/{id}/restore/") as held:
        caller = threading.Thread(target=lambda: answers.append(api.post("snapshots/801/restore/")))
        caller.start()
        held.wait_arrived(1)
        held.release(status=503)
        caller.join(30)
    assert [(a.status_code, a.json()) for a in answers] == [
        (503, {"detail": "Service temporarily unavailable."})
    ]
    assert api.get("servers/12345/").json()["status"] == "running"


def test_a_hold_with_a_query_holds_only_that_query(sim: SimHandle, api: httpx.Client) -> None:
    answers: list[httpx.Response] = []
    with sim.state.hold("GET", "snapshots/", query="server_id=12346") as held:
        caller = threading.Thread(
            target=lambda: answers.append(api.get("snapshots/", params={"server_id": 12346}))
        )
        caller.start()
        held.wait_arrived(1)
        # Other servers' lists and the unfiltered list go through meanwhile.
        assert api.get("snapshots/", params={"server_id": 12345}).json()["count"] == 2
        assert api.get("snapshots/").json()["count"] == 2
        assert answers == []
    caller.join(30)
    assert [a.json()["count"] for a in answers] == [0]
    assert held.arrived == 1


def test_stopping_the_simulator_releases_what_it_holds() -> None:
    handle = start_simulator(port=0, token=TOKEN)
    held = handle.state.hold("GET", "snapshots/")
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(
                httpx.get(handle.url + "snapshots/", headers={"Authorization": f"Bearer {TOKEN}"})
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    held.wait_arrived(1)
    handle.stop()
    caller.join(30)
    assert held.released and not caller.is_alive() and len(outcome) == 1


# ---- seeding ----------------------------------------------------------------------------------


def test_seeded_servers_and_snapshots_are_what_the_api_answers(
    sim: SimHandle, api: httpx.Client
) -> None:
    state = sim.state
    base = state.now()
    state.seed_server(50001, "seeded <b>server</b>")
    state.seed_snapshot(
        50001,
        "in flight",
        snapshot_id=9001,
        status="in_progress",
        size_mb=None,
        created_at=base,
        completes_at=base + 60,
    )
    done = state.seed_snapshot(50001, "done", description="seeded", size_mb=1234)
    assert done == 9002  # ids go on above every seeded one
    server = api.get("servers/50001/").json()
    assert server == {"id": 50001, "name": "seeded <b>server</b>", "status": "running"}
    listed = {
        s["id"]: s for s in api.get("snapshots/", params={"server_id": 50001}).json()["results"]
    }
    assert set(listed) == {9001, 9002}
    assert listed[9001]["status"] == "in_progress" and listed[9001]["size_mb"] is None
    assert listed[9001]["server"] == {"id": 50001, "name": "seeded <b>server</b>"}
    assert listed[9002]["status"] == "completed" and listed[9002]["size_mb"] == 1234
    assert listed[9002]["description"] == "seeded"
    state.advance(61)  # a seeded in-progress snapshot completes when it said it would
    after = api.get("snapshots/", params={"server_id": 50001}).json()["results"]
    flown = next(s for s in after if s["id"] == 9001)
    assert flown["status"] == "completed" and flown["size_mb"] > 0
    assert create(api, server_id=50001, name="next").json()["id"] == 9003


def test_seeding_a_snapshot_on_an_unknown_server_is_refused(sim: SimHandle) -> None:
    with pytest.raises(simulator.SimError):
        sim.state.seed_snapshot(424242, "orphan")


def test_fail_snapshot_ends_it_failed_and_vanish_removes_it(
    sim: SimHandle, api: httpx.Client
) -> None:
    first = create(api, name="doomed").json()["id"]
    second = create(api, name="ghost").json()["id"]
    sim.state.fail_snapshot(first)
    sim.state.vanish_snapshot(second)
    sim.state.advance(10)
    results = {s["id"]: s for s in api.get("snapshots/").json()["results"]}
    assert results[first]["status"] == "failed"
    assert results[first]["size_mb"] is None
    assert second not in results
    assert api.post(f"snapshots/{first}/restore/").status_code == 400


def test_faults_are_settable_over_http(
    sim: SimHandle, api: httpx.Client, admin: httpx.Client
) -> None:
    snap_id = create(api, name="remote").json()["id"]
    response = admin.post(
        "faults",
        json={"fail_next": 1, "fail_status": 500, "latency": 0.0, "servers_endpoint": False},
    )
    assert response.status_code == 200
    assert response.json()["fail_next"] == 1
    assert api.get("snapshots/").status_code == 500
    assert api.get("servers/12345/").status_code == 404

    assert admin.post("faults", json={"advance_seconds": 6}).status_code == 200
    status = {s["id"]: s["status"] for s in api.get("snapshots/").json()["results"]}
    assert status[snap_id] == "completed"

    assert admin.post("faults", json={"vanish_snapshot": snap_id}).status_code == 200
    assert admin.post("faults", json={"fail_snapshot": snap_id}).status_code == 404
    assert admin.post("faults", json={"fail_rate": 1}).json()["fail_rate"] == 1.0
    assert api.get("snapshots/").status_code == 503
    assert admin.post("faults", json={"bogus": 1}).status_code == 400
    assert admin.post("faults", json={"latency": "slow"}).status_code == 400


def test_reset_restores_the_seeded_state(
    sim: SimHandle, api: httpx.Client, admin: httpx.Client
) -> None:
    create(api, name="gone-after-reset")
    sim.state.fail_rate = 0.9
    assert admin.post("reset").json() == {"reset": True}
    assert api.get("snapshots/").json() == {"count": 2, "results": DOC_SNAPSHOTS}
    assert create(api).json()["id"] == 802
    assert admin.get("stats").json()["total"] == 2


def test_stats_count_requests_by_method_and_path_template(
    sim: SimHandle, api: httpx.Client, admin: httpx.Client
) -> None:
    api.get("snapshots/")
    api.get("snapshots/", params={"server_id": 12345})
    snap_id = create(api).json()["id"]
    api.post("snapshots/801/restore/")
    api.delete(f"snapshots/{snap_id}/")
    api.get("servers/12345/")
    api.get("nowhere/")
    stats = admin.get("stats").json()
    assert stats["calls"] == {
        "GET snapshots/": 2,
        "POST snapshots/": 1,
        "POST snapshots/{id}/restore/": 1,
        "DELETE snapshots/{id}/": 1,
        "GET servers/{id}/": 1,
        "GET <unknown>": 1,
    }
    assert stats["total"] == 7
    assert [(w["method"], w["path"]) for w in stats["writes"]] == [
        ("POST", "snapshots/"),
        ("POST", "snapshots/801/restore/"),
        ("DELETE", f"snapshots/{snap_id}/"),
    ]
    assert sim.state.calls["GET snapshots/"] == 2
    assert [w[1:] for w in sim.state.writes] == [(w["method"], w["path"]) for w in stats["writes"]]


def test_a_pooled_client_keeps_one_connection_alive(api: httpx.Client) -> None:
    ports = set()
    for _ in range(20):
        response = api.get("snapshots/")
        ports.add(response.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(ports) == 1


# ---- command line -------------------------------------------------------------------------------


def test_main_without_a_token_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VPS_API_TOKEN", raising=False)
    assert simulator.main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VPS_API_TOKEN" in err


def test_main_serves_until_sigterm_and_never_prints_the_token() -> None:
    secret = "very-secret-token-123"
    env = {**os.environ, "VPS_API_TOKEN": secret, "PORT": "0", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "snapbot_local.provider"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("vps-sim serving http://127.0.0.1:")
        url = line.split()[-1]
        assert url.endswith("/api/v1/")
        answer = httpx.get(url + "snapshots/", headers={"Authorization": f"Bearer {secret}"})
        assert answer.json()["count"] == 2
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert secret not in line + out + err
