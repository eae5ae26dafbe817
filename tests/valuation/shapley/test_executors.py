"""Executors: the same seed gives the same values (to the last bit) in this process, in 1 or 2 local worker
processes and on Ray actors on 2 CPUs, for TMC, Beta, Banzhaf (MSR) and seller-level Shapley; stopping rules
that fire mid-window give the serial run's stop point."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification

from app.valuation.errors import ValuationError
from app.valuation.shapley.estimators import SellerUtility, banzhaf_msr, beta_shapley, seller_shapley, tmc_shapley
from app.valuation.shapley.executors import LocalExecutor, RayExecutor, make_executor
from app.valuation.shapley.stopping import MaxPermutations, MaxSamples, RelativeChange
from app.valuation.shapley.utilities import ModelConfig, ModelUtility

if os.environ.get("CI") == "true":
    import ray  # .ci/run installs the extra: never skipped in CI
else:
    ray = pytest.importorskip("ray", reason="the ray extra (pip install 'appraise[ray]'); CI installs it")


@pytest.fixture(scope="module")
def ray_two_cpus():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def utility():
    x, y = make_classification(n_samples=140, n_features=5, n_informative=3, random_state=3)
    return ModelUtility(x[:20], y[:20], x[20:], y[20:], config=ModelConfig(model="logistic", threads=1))


def run(estimator: str, utility, executor):
    """One short run per estimator; the convergence rule may fire before the budget, mid-window."""
    if estimator == "tmc":
        return tmc_shapley(utility, seed=11, batch_size=4, executor=executor,
                           stop=RelativeChange(0.3, window=8) | MaxPermutations(80))
    if estimator == "beta":
        return beta_shapley(utility, 4.0, 1.0, seed=11, batch_size=4, executor=executor, stop=MaxPermutations(24))
    if estimator == "banzhaf":
        return banzhaf_msr(utility, seed=11, batch_size=32, executor=executor, stop=MaxSamples(320))
    sellers = SellerUtility(utility, np.arange(utility.n_players) % 14)  # 14 sellers: Monte Carlo, not exact
    return seller_shapley(sellers, seed=11, batch_size=4, executor=executor, stop=MaxPermutations(24))


ESTIMATORS = ("tmc", "beta", "banzhaf", "seller")


@pytest.fixture(scope="module")
def serial(utility):
    return {name: run(name, utility, None) for name in ESTIMATORS}


def assert_same(result, reference) -> None:
    assert result.batches == reference.batches
    assert result.stop_reason == reference.stop_reason
    assert result.n_draws == reference.n_draws
    assert result.utility_evaluations == reference.utility_evaluations
    assert result.utility_counts == reference.utility_counts
    torch.testing.assert_close(result.values, reference.values, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.standard_errors, reference.standard_errors, rtol=0, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("workers", [1, 2])
def test_local_workers_give_the_serial_values(utility, serial, estimator, workers):
    assert_same(run(estimator, utility, LocalExecutor(workers)), serial[estimator])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_ray_with_two_workers_gives_the_serial_values(utility, serial, estimator, ray_two_cpus):
    assert_same(run(estimator, utility, RayExecutor(2)), serial[estimator])


def test_convergence_fires_before_the_budget_and_at_the_same_batch(serial):
    tmc = serial["tmc"]
    assert "RelativeChange" in tmc.stop_reason and tmc.permutations_done < 80  # so the window ran ahead of it


def test_checkpoint_and_resume_across_executors(utility, serial):
    """A run checkpointed part-way on 2 local workers and resumed in this process ends with the serial numbers."""
    saved = []
    first = tmc_shapley(utility, seed=11, batch_size=4, executor=LocalExecutor(2), checkpoint=saved.append,
                        stop=MaxPermutations(12))
    assert first.permutations_done == 12
    resumed = tmc_shapley(utility, seed=11, batch_size=4, resume_from=saved[-1],
                          stop=RelativeChange(0.3, window=8) | MaxPermutations(80))
    torch.testing.assert_close(resumed.values, serial["tmc"].values, rtol=0, atol=1e-12)


def test_make_executor_names_bad_choices():
    assert isinstance(make_executor("local", 3), LocalExecutor)
    with pytest.raises(ValuationError, match="unknown executor 'spark'"):
        make_executor("spark")
    with pytest.raises(ValuationError, match="ray_address is for executor 'ray'"):
        make_executor("local", 2, "127.0.0.1:6379")


def _in_daemon(utility, conn) -> None:
    executor = LocalExecutor(2)
    result = tmc_shapley(utility, seed=11, batch_size=4, executor=executor, stop=MaxPermutations(8))
    conn.send((result.values.tolist(), executor.note))


def test_local_workers_in_a_daemonic_process_run_in_it_with_the_same_values(utility):
    """A service job runs in a daemonic process, which may not start processes: the run stays in it, says so,
    and gives the same values."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_in_daemon, args=(utility, send), daemon=True)
    child.start()
    values, note = receive.recv()
    child.join(timeout=60)
    serial = tmc_shapley(utility, seed=11, batch_size=4, stop=MaxPermutations(8))
    assert values == serial.values.tolist()
    assert "daemonic" in note and "ray" in note


def test_an_unreachable_ray_address_fails_fast_with_the_address_named(utility):
    with pytest.raises(ValuationError, match="no Ray cluster answers at 127.0.0.1:1"):
        tmc_shapley(utility, seed=1, batch_size=4, stop=MaxPermutations(4), executor=RayExecutor(2, "127.0.0.1:1"))
    with pytest.raises(ValuationError, match="is not host:port"):
        tmc_shapley(utility, seed=1, batch_size=4, stop=MaxPermutations(4), executor=RayExecutor(2, "nowhere"))
