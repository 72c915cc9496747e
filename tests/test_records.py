"""``records.apply``: the one place a record changes, and only from its own server."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyctl.records import (
    CANCELLED,
    ERROR,
    FINAL,
    INTERRUPTED,
    LOST,
    PENDING,
    PROGRESS_HISTORY_LIMIT,
    REJECTED,
    RUNNING,
    SUBMITTING,
    SUCCESS,
    Observation,
    apply,
    flatten_outputs,
    new_record,
    view_url,
)

A = "http://gpu1.test:8188"
B = "http://gpu2.test:8188"
PID = "3f2c9a1e-0000-4000-8000-000000000001"
AT = "2026-11-30T12:00:00.000+00:00"

IMAGES = {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}


def record(url: str = A, server: str = "gpu1", status: str = SUBMITTING) -> dict[str, Any]:
    rec = new_record(PID, server, url, "comfyctl-c", "sha256:00")
    rec["status"] = status
    return rec


def every_kind(url: str, prompt_id: str = PID) -> list[Observation]:
    """One observation of each kind, all about ``prompt_id`` as told by ``url``."""
    return [
        Observation("queued", prompt_id, url, at=AT, number=7, position=0),
        Observation("running", prompt_id, url, at=AT),
        Observation("executing", prompt_id, url, at=AT, node="4"),
        Observation("progress", prompt_id, url, at=AT, value=3, max=10, node="4"),
        Observation("output", prompt_id, url, at=AT, node="9", outputs=IMAGES["9"]),
        Observation("finished", prompt_id, url, at=AT, outcome=SUCCESS, outputs=IMAGES),
        Observation(
            "finished",
            prompt_id,
            url,
            at=AT,
            outcome=ERROR,
            error={"type": "RuntimeError", "message": "x", "node_id": "4", "node_type": "K"},
        ),
        Observation("finished", prompt_id, url, at=AT, outcome=INTERRUPTED),
        Observation("cancelled", prompt_id, url, at=AT),
        Observation("lost", prompt_id, url, at=AT),
        Observation("unknown", prompt_id, url, at=AT),
        Observation("done", prompt_id, url, at=AT),
    ]


# -- the binding ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [SUBMITTING, PENDING, RUNNING, LOST])
@pytest.mark.parametrize("obs", every_kind(B), ids=lambda o: f"{o.kind}-{o.outcome}")
def test_observation_from_another_server_never_changes_a_record(
    status: str, obs: Observation
) -> None:
    rec = record(status=status)
    before = copy.deepcopy(rec)
    assert apply(rec, obs) is False
    assert rec == before


@pytest.mark.parametrize(
    "obs", every_kind(A, prompt_id="another-job"), ids=lambda o: f"{o.kind}-{o.outcome}"
)
def test_observation_about_another_job_never_changes_a_record(obs: Observation) -> None:
    rec = record(status=RUNNING)
    before = copy.deepcopy(rec)
    assert apply(rec, obs) is False
    assert rec == before


def test_same_host_other_prefix_is_another_server() -> None:
    rec = record(url="http://gpu1.test/comfy-a")
    obs = Observation("running", PID, "http://gpu1.test/comfy-b", at=AT)
    assert apply(rec, obs) is False and rec["status"] == SUBMITTING


STEPS = st.lists(
    st.tuples(st.sampled_from([A, B]), st.integers(0, len(every_kind(A)) - 1)), max_size=25
)


@settings(max_examples=200, deadline=None, database=None)
@given(steps=STEPS)
def test_foreign_observations_interleaved_anywhere_change_nothing(
    steps: list[tuple[str, int]],
) -> None:
    """Folding a mixed stream equals folding only the bound server's part of it."""
    mixed = record()
    own_only = copy.deepcopy(mixed)
    for url, index in steps:
        obs = every_kind(url)[index]
        apply(mixed, obs)
        if url == A:
            apply(own_only, copy.deepcopy(obs))
    for rec in (mixed, own_only):
        rec.pop("updated_at")
    assert mixed == own_only


# -- final is final ------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(FINAL))
@pytest.mark.parametrize("obs", every_kind(A), ids=lambda o: f"{o.kind}-{o.outcome}")
def test_final_statuses_are_final(status: str, obs: Observation) -> None:
    rec = record(status=status)
    before = copy.deepcopy(rec)
    assert apply(rec, obs) is False
    assert rec == before


def test_final_set_is_what_the_server_decided() -> None:
    assert {SUCCESS, ERROR, INTERRUPTED, CANCELLED, REJECTED} == FINAL
    assert LOST not in FINAL


def test_lost_is_not_final_a_returning_server_is_believed() -> None:
    rec = record()
    assert apply(rec, Observation("lost", PID, A, at=AT)) is True
    assert rec["status"] == LOST and rec["error"]["type"] == "lost"
    assert apply(rec, Observation("lost", PID, A, at=AT)) is False
    assert apply(rec, Observation("queued", PID, A, at=AT, number=3)) is True
    assert rec["status"] == PENDING


def test_unknown_is_a_fact_not_a_verdict() -> None:
    rec = record(status=RUNNING)
    before = copy.deepcopy(rec)
    assert apply(rec, Observation("unknown", PID, A, at=AT)) is False
    assert rec == before


def test_lifecycle_to_success() -> None:
    rec = record()
    assert apply(rec, Observation("queued", PID, A, at=AT, number=12)) is True
    assert (rec["status"], rec["number"]) == (PENDING, 12)
    assert apply(rec, Observation("running", PID, A, at="2026-11-30T12:00:01.000+00:00"))
    assert rec["status"] == RUNNING and rec["started_at"] == "2026-11-30T12:00:01.000+00:00"
    apply(rec, Observation("progress", PID, A, at=AT, value=5, max=10, node="2"))
    assert (
        apply(
            rec,
            Observation(
                "finished",
                PID,
                A,
                at="2026-11-30T12:00:09.000+00:00",
                outcome=SUCCESS,
                outputs=IMAGES,
            ),
        )
        is True
    )
    assert rec["status"] == SUCCESS
    assert rec["finished_at"] == "2026-11-30T12:00:09.000+00:00"
    assert rec["started_at"] == "2026-11-30T12:00:01.000+00:00"
    assert rec["progress"]["percent"] == 100.0 and rec["progress"]["value"] == 10
    assert apply(rec, Observation("running", PID, A, at=AT)) is False


def test_error_outcome_keeps_the_error() -> None:
    rec = record(status=RUNNING)
    err = {"type": "RuntimeError", "message": "boom", "node_id": "2", "node_type": "FailAtStep"}
    apply(rec, Observation("progress", PID, A, at=AT, value=2, max=5, node="2"))
    apply(rec, Observation("finished", PID, A, at=AT, outcome=ERROR, error=err))
    assert rec["status"] == ERROR and rec["error"] == err
    assert rec["progress"]["percent"] == 40.0  # not forced to 100 on failure


# -- progress ------------------------------------------------------------------------------


def test_progress_percent_and_history_with_server_name() -> None:
    rec = record(status=PENDING)
    assert (
        apply(
            rec,
            Observation("progress", PID, A, at=AT, value=209, max=400, node="3"),
            server_name="gpu-one",
        )
        is True
    )
    assert rec["status"] == RUNNING
    assert rec["progress"] == {
        "value": 209,
        "max": 400,
        "percent": 52.25,
        "node": "3",
        "updated_at": AT,
    }
    assert rec["progress_history"] == [
        {"at": AT, "value": 209, "max": 400, "node": "3", "server": "gpu-one"}
    ]
    apply(rec, Observation("progress", PID, A, at=AT, value=1, max=3, node="3"))
    assert rec["progress"]["percent"] == 33.33
    assert rec["progress_history"][-1]["server"] == "gpu1"  # the record's own server name


def test_progress_history_is_bounded_and_keeps_the_latest() -> None:
    rec = record(status=RUNNING)
    for step in range(1, 3 * PROGRESS_HISTORY_LIMIT + 1):
        apply(rec, Observation("progress", PID, A, at=f"t{step}", value=step, max=100, node="2"))
    history = rec["progress_history"]
    assert len(history) == PROGRESS_HISTORY_LIMIT == 20
    assert [h["value"] for h in history] == list(range(41, 61))
    assert rec["progress"]["value"] == 60


def test_executing_updates_the_node_without_inventing_progress() -> None:
    rec = record(status=PENDING)
    apply(rec, Observation("executing", PID, A, at=AT, node="7"))
    assert rec["status"] == RUNNING
    assert rec["progress"]["node"] == "7" and rec["progress"]["percent"] == 0.0
    assert rec["progress_history"] == []


@pytest.mark.parametrize("value, maximum", [(1, 0), (None, 10)])
def test_progress_without_a_usable_max_is_no_progress(value: Any, maximum: Any) -> None:
    rec = record(status=RUNNING)
    apply(rec, Observation("progress", PID, A, at=AT, value=value, max=maximum, node="2"))
    assert rec["progress_history"] == []


# -- outputs -------------------------------------------------------------------------------

MIXED_OUTPUTS = {
    "9": {
        "images": [{"filename": "img 1&2.png", "subfolder": "run/ä", "type": "output"}],
        "animated": [False],
    },
    "12": {
        "gifs": [
            {"filename": "clip.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}
        ],
        "text": ["not a file"],
    },
    "15": {"audio": [{"filename": "voice.flac", "subfolder": "a", "type": "temp"}]},
    "20": {"images": [{"filename": "b.png", "subfolder": None, "type": None}]},
}


def test_outputs_are_flattened_from_every_list_key() -> None:
    files = flatten_outputs(A, MIXED_OUTPUTS)
    assert [(f["node"], f["key"], f["filename"]) for f in files] == [
        ("9", "images", "img 1&2.png"),
        ("12", "gifs", "clip.mp4"),
        ("15", "audio", "voice.flac"),
        ("20", "images", "b.png"),
    ]
    assert files[3]["subfolder"] == "" and files[3]["type"] == "output"


def test_output_urls_are_on_the_records_own_server_and_url_encoded() -> None:
    rec = record(url="https://gpu1.test/comfy", status=RUNNING)
    apply(
        rec,
        Observation(
            "finished",
            PID,
            "https://gpu1.test/comfy",
            at=AT,
            outcome=SUCCESS,
            outputs=MIXED_OUTPUTS,
        ),
    )
    assert len(rec["outputs"]) == 4
    for out in rec["outputs"]:
        parts = urlsplit(out["url"])
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://gpu1.test/comfy/view"
        assert parse_qs(parts.query, keep_blank_values=True) == {
            "filename": [out["filename"]],
            "subfolder": [out["subfolder"]],
            "type": [out["type"]],
        }
    first = rec["outputs"][0]["url"]
    assert " " not in first and "&2" not in first and "/ä" not in first
    assert first == (
        "https://gpu1.test/comfy/view?filename=img+1%262.png&subfolder=run%2F%C3%A4&type=output"
    )


def test_view_url() -> None:
    assert view_url(B, "x.png", "", "output") == f"{B}/view?filename=x.png&subfolder=&type=output"


@given(st.text(), st.text(), st.text())
def test_view_url_reads_back_as_the_file_it_names(filename, subfolder, kind) -> None:
    url = view_url(B, filename, subfolder, kind)
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    assert query == {"filename": [filename], "subfolder": [subfolder], "type": [kind]}
    assert url == f"{B}/view?" + urlencode(
        {"filename": filename, "subfolder": subfolder, "type": kind}
    )


def test_outputs_from_websocket_and_history_are_not_duplicated() -> None:
    rec = record(status=RUNNING)
    assert apply(rec, Observation("output", PID, A, at=AT, node="9", outputs=IMAGES["9"]))
    assert apply(rec, Observation("output", PID, A, at=AT, node="9", outputs=IMAGES["9"])) is False
    apply(rec, Observation("finished", PID, A, at=AT, outcome=SUCCESS, outputs=IMAGES))
    assert [o["filename"] for o in rec["outputs"]] == ["a.png"]
    assert rec["outputs"][0]["url"].startswith(f"{A}/view?")


def test_flatten_outputs_tolerates_junk() -> None:
    assert flatten_outputs(A, None) == []  # type: ignore[arg-type]
    assert flatten_outputs(A, {"1": "x", "2": {"images": "y"}, "3": {"images": [1, None]}}) == []


def test_repeating_the_same_progress_does_not_make_it_fresh() -> None:
    """A re-attached watcher hears the current node and step again; a stall must stay old."""
    url = "http://gpu1:8188"
    rec = new_record("p", "gpu1", url, "c", None)
    apply(
        rec,
        Observation(
            "progress", "p", url, value=4, max=20, node="2", at="2026-01-01T00:00:00.000+00:00"
        ),
    )
    stamp = rec["progress"]["updated_at"]
    assert not apply(rec, Observation("progress", "p", url, value=4, max=20, node="2"))
    assert not apply(rec, Observation("executing", "p", url, node="2"))
    assert rec["progress"]["updated_at"] == stamp and len(rec["progress_history"]) == 1
    assert apply(rec, Observation("progress", "p", url, value=5, max=20, node="2"))
    assert rec["progress"]["updated_at"] != stamp


def test_a_lost_job_the_server_knows_again_drops_the_lost_error() -> None:
    """One consistent state: never 'success' beside a 'lost' error and a lost end time."""
    from comfyctl.records import LOST, SUCCESS, Observation, apply, new_record

    record = new_record("p", "a", "http://a", "c", None)
    assert apply(record, Observation("lost", "p", "http://a"))
    assert record["status"] == LOST and record["error"]["type"] == "lost"
    assert apply(record, Observation("finished", "p", "http://a", outcome=SUCCESS, outputs={}))
    assert record["status"] == SUCCESS and record["error"] is None
    assert record["finished_at"] is not None


def test_a_superseded_job_is_settled_only_by_settle_superseded() -> None:
    from comfyctl.records import (
        CANCELLED,
        LOST,
        Observation,
        apply,
        new_record,
        settle_superseded,
        superseded_unsettled,
    )

    record = new_record("p", "b", "http://b", "c", None)
    apply(record, Observation("lost", "p", "http://b"))
    record["superseded_by"] = "q"
    assert not apply(record, Observation("running", "p", "http://b"))  # not revived
    assert not settle_superseded(record, Observation("running", "p", "http://b"))
    assert record["status"] == LOST and superseded_unsettled(record)
    assert not settle_superseded(record, Observation("cancelled", "p", "http://other"))
    assert settle_superseded(record, Observation("cancelled", "p", "http://b"))
    assert record["status"] == CANCELLED and "q" in record["error"]["message"]
    assert not superseded_unsettled(record)


_STEP = st.builds(
    Observation,
    kind=st.sampled_from(["progress", "progress", "progress", "executing", "running", "queued"]),
    prompt_id=st.just(PID),
    server_url=st.just(A),
    at=st.sampled_from([AT, "2026-11-30T12:00:01.000+00:00"]),
    node=st.sampled_from([None, "3", "4"]),
    value=st.sampled_from([None, 0, 1, 2, 20]),
    max=st.sampled_from([None, 0, 20]),
    number=st.sampled_from([None, 7]),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([SUBMITTING, PENDING, RUNNING, LOST]), st.lists(_STEP, max_size=12))
def test_apply_says_whether_it_changed_the_record(status: str, steps: list[Observation]) -> None:
    """What a watch does with apply's answer (write the record, print a line) holds only
    if True means changed and False means untouched, on every path through it."""
    rec = record(status=status)
    for obs in steps:
        before = copy.deepcopy(rec)
        changed = apply(rec, obs, "gpu1")
        if changed:
            assert rec != before and rec["updated_at"] == obs.at
        else:
            assert rec == before
