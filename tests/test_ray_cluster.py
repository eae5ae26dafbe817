"""A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, one CPU a node): a Ray worker killed
mid-job has its batch retried and the values equal an uninterrupted run; early stopping and a cancel leave no
Ray actor running."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from sklearn.datasets import make_classification

from app.methods.montecarlo import StopRequested
from app.valuation.shapley.estimators import tmc_shapley
from app.valuation.shapley.executors import RayExecutor
from app.valuation.shapley.stopping import MaxPermutations
from app.valuation.shapley.utilities import ModelConfig, ModelUtility

if os.environ.get("CI") == "true":
    import ray  # .ci/run installs the extra: never skipped in CI
else:
    ray = pytest.importorskip("ray", reason="the ray extra (pip install 'appraise[ray]'); CI installs it")

from ray.cluster_utils import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


class KillOnce(ModelUtility):
    """A model utility whose Ray worker kills itself (SIGKILL) at its ``at``-th evaluation, once per marker file:
    a Ray worker dying mid-batch. Never in the test process itself."""

    def __init__(self, *args, marker: Path, at: int = 3, driver: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.marker, self.at, self.driver, self.calls = marker, at, driver, 0

    def ragged_prefix_values(self, permutations, starts, stops):
        self.calls += 1
        if os.getpid() != self.driver and self.calls == self.at and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().ragged_prefix_values(permutations, starts, stops)


class Slow(ModelUtility):
    """Each prefix evaluation takes ``delay`` seconds more: batches stay in flight long enough to be cancelled."""

    def __init__(self, *args, delay: float, **kw) -> None:
        super().__init__(*args, **kw)
        self.delay = delay

    def ragged_prefix_values(self, permutations, starts, stops):
        time.sleep(self.delay)
        return super().ragged_prefix_values(permutations, starts, stops)


def data():
    x, y = make_classification(n_samples=120, n_features=4, n_informative=3, n_redundant=0, random_state=5)
    return x[:16], y[:16], x[16:], y[16:]


CONFIG = ModelConfig(model="logistic", threads=1)


def no_task_running(timeout: float = 30.0) -> bool:
    """Every CPU of the cluster free again within ``timeout`` seconds: a running task holds one CPU (the state API,
    ``ray.util.state``, needs the dashboard, which these nodes do not run)."""
    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) == total:
            return True
        time.sleep(0.2)
    return False


class BusyCPUs:
    """Samples the cluster's free CPUs while a job runs: the lowest count shows tasks did hold CPUs (so the check
    that every CPU is free afterwards could fail)."""

    def __init__(self) -> None:
        self.total = ray.cluster_resources().get("CPU", 0)
        self.lowest = self.total
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.lowest = min(self.lowest, ray.available_resources().get("CPU", 0))
            time.sleep(0.05)

    def __enter__(self) -> BusyCPUs:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def test_a_killed_worker_has_its_batch_retried_and_the_values_are_unchanged(cluster, tmp_path):
    torch.set_num_threads(1)
    marker = tmp_path / "killed"
    killing = KillOnce(*data(), config=CONFIG, marker=marker, driver=os.getpid())
    with_kill = tmc_shapley(killing, seed=4, batch_size=4, stop=MaxPermutations(32), executor=RayExecutor(2))
    assert marker.exists(), "no Ray worker was killed: the test did not test anything"
    assert int(marker.read_text()) != os.getpid()
    plain = tmc_shapley(ModelUtility(*data(), config=CONFIG), seed=4, batch_size=4, stop=MaxPermutations(32))
    assert with_kill.batches == plain.batches == set(range(8))
    torch.testing.assert_close(with_kill.values, plain.values, rtol=0, atol=1e-12)
    torch.testing.assert_close(with_kill.standard_errors, plain.standard_errors, rtol=0, atol=1e-12)


def test_early_stopping_leaves_no_ray_task_running(cluster):
    slow = Slow(*data(), config=CONFIG, delay=0.3)
    with BusyCPUs() as busy:
        result = tmc_shapley(slow, seed=4, batch_size=2, stop=MaxPermutations(4), executor=RayExecutor(2))
    assert result.permutations_done == 4 and result.batches == {0, 1}  # batches 2, 3 were in flight: cancelled
    assert busy.lowest < busy.total
    assert no_task_running()


def test_cancel_stops_outstanding_batches(cluster):
    slow = Slow(*data(), config=CONFIG, delay=0.5)
    cancelled = threading.Event()
    threading.Timer(3.0, cancelled.set).start()
    t0 = time.monotonic()
    with BusyCPUs() as busy:
        result = tmc_shapley(slow, seed=4, batch_size=2, executor=RayExecutor(2),
                             stop=MaxPermutations(10_000) | StopRequested(lambda: "cancelled" if cancelled.is_set()
                                                                         else None))
    assert "cancelled" in result.stop_reason
    assert result.permutations_done < 10_000 and time.monotonic() - t0 < 60
    assert busy.lowest < busy.total
    assert no_task_running()
