"""The training assets' retry policy retries only what can succeed on a second try."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from minillm_core.errors import NonFiniteLossError, OutOfMemoryError
from tests.conftest import smoke_resource


def _resource(smoke_graph, tmp_path):
    src = smoke_graph.root
    shutil.copytree(src / "out" / "tokenizer", tmp_path / "out" / "tokenizer")
    shutil.copytree(src / "out" / "tokens" / "pretrain", tmp_path / "out" / "tokens" / "pretrain")
    return smoke_resource(tmp_path)


def _run(monkeypatch, resource, failures):
    """Materialize pretrain with `train` raising `failures` in turn, then training for real;
    returns (result, number of attempts)."""
    import minillm_assets.training as training

    real, calls = training.train, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train", flaky)
    asset, _ = training.checkpoint_asset("pretrain", retry_policy=dg.RetryPolicy(max_retries=2))
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset], resources={"minillm": resource}, instance=instance, raise_on_error=False
        )
    return result, len(calls)


def test_a_nan_loss_is_not_retried(smoke_graph, tmp_path, monkeypatch):
    result, attempts = _run(
        monkeypatch, _resource(smoke_graph, tmp_path), [NonFiniteLossError("loss is nan at step 3")]
    )
    assert not result.success
    assert attempts == 1
    failure = result.failure_data_for_node("pretrain_checkpoint")
    assert "loss is nan at step 3" in failure.error.message


def test_out_of_memory_is_retried_and_carries_its_advice(smoke_graph, tmp_path, monkeypatch):
    oom = OutOfMemoryError("cuda out of memory", "lower --batch_size")
    assert oom.retryable and oom.advice == "lower --batch_size"
    result, attempts = _run(monkeypatch, _resource(smoke_graph, tmp_path), [oom])
    assert result.success
    assert attempts == 2


@pytest.mark.parametrize("exc", [ZeroDivisionError("a bug"), KeyError("missing")])
def test_errors_that_are_not_ours_are_not_retried(smoke_graph, tmp_path, monkeypatch, exc):
    result, attempts = _run(monkeypatch, _resource(smoke_graph, tmp_path), [exc])
    assert not result.success
    assert attempts == 1
