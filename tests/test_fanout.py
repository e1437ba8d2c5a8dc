"""How the parent flow tells a slow shard run from a lost one (`flows.fanout.wait`), against a
scripted stand-in for Prefect's client: the states a run passes through, on a clock."""

import time
from contextlib import contextmanager
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.states import Completed, Pending, Running

from flows import fanout
from flows.fanout import Shard
from flows.shard import shard_dir
from manifests.storage import join, write_bytes

LOST_AFTER_S = 1.0


class ScriptedRuns:
    """Each run's state by the seconds since the client opened: [(from_s, state)], and the
    heartbeats its shard writes at given seconds (the shard's own writes, stood in for)."""

    def __init__(self, output_uri: str, scripts: dict[int, list], beats: dict[int, list[float]]):
        self.output_uri, self.scripts, self.beats = output_uri, scripts, beats
        self.ids = {index: uuid4() for index in scripts}
        self.crashed: dict[int, str] = {}
        self.start = time.monotonic()

    def _index(self, run_id) -> int:
        return next(i for i, known in self.ids.items() if known == run_id)

    def read_flow_run(self, run_id):
        index, now = self._index(run_id), time.monotonic() - self.start
        state = [s for from_s, s in self.scripts[index] if from_s <= now][-1]
        written = [at for at in self.beats.get(index, []) if at <= now]
        if written:
            uri = join(shard_dir(self.output_uri, index), "heartbeat.json")
            write_bytes(uri, str(len(written)).encode())
        return SimpleNamespace(id=run_id, name=f"shard-{index}", state=state)

    def set_flow_run_state(self, run_id, state, force=False):
        self.crashed[self._index(run_id)] = state.message


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    def make(scripts, beats):
        runs = ScriptedRuns(str(tmp_path), scripts, beats)

        @contextmanager
        def client(sync_client=True):
            yield runs

        monkeypatch.setattr(fanout, "get_client", client)
        monkeypatch.setattr(fanout, "POLL_S", 0.05)
        shards = [Shard(i, "plan", [f"item-{i}"], SimpleNamespace(id=runs.ids[i])) for i in scripts]
        return runs, shards
    return make


def test_a_run_slow_to_start_and_to_beat_is_not_lost_while_it_moves_on(scripted, tmp_path):
    # Pending (its process importing), Running, then beating: from claimed to the first beat
    # takes longer than LOST_AFTER_S, but no phase is silent that long (with room to spare for
    # a slow poll on a busy machine)
    step = 0.6 * LOST_AFTER_S
    runs, shards = scripted({0: [(0, Pending()), (step, Running()), (4 * step, Completed())]},
                            {0: [2 * step, 3 * step]})
    fanout.wait(shards, str(tmp_path), LOST_AFTER_S)
    assert shards[0].lost is None and not runs.crashed


def test_a_run_claimed_by_a_worker_that_died_is_lost_though_it_never_beat(scripted, tmp_path):
    runs, shards = scripted({0: [(0, Pending())]}, {})
    started = time.monotonic()
    fanout.wait(shards, str(tmp_path), LOST_AFTER_S)
    assert LOST_AFTER_S <= time.monotonic() - started < 10 * LOST_AFTER_S
    assert "shard-0" in shards[0].lost and "has not beaten or left PENDING" in shards[0].lost
    assert runs.crashed[0] == shards[0].lost


def test_a_running_shard_that_stops_beating_is_lost_and_the_others_finish(scripted, tmp_path):
    runs, shards = scripted({0: [(0, Running())], 1: [(0, Running()), (1.5, Completed())]},
                            {0: [0.0, 0.2], 1: [0.0, 0.4, 0.8, 1.2]})
    fanout.wait(shards, str(tmp_path), LOST_AFTER_S)
    assert "has not beaten or left RUNNING" in shards[0].lost and 0 in runs.crashed
    assert shards[1].lost is None and 1 not in runs.crashed
