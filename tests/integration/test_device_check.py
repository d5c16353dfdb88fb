"""The fast CUDA check: a profile or flag that needs CUDA on a machine without it stops before
any work, in one line that says what to run instead, at every entry point (the core check, the
`minillm` commands, the pipeline that scripts/run.sh runs, the Dagster assets)."""

from __future__ import annotations

import dagster as dg
import pytest
import torch

from minillm_core import devices
from minillm_core.errors import ConfigError, DeviceUnavailableError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_core_check_names_the_profile_and_what_to_run_instead(no_cuda):
    assert "cuda" in devices.profile_devices("gpu")
    with pytest.raises(DeviceUnavailableError) as err:
        devices.require_profile("gpu")
    msg = str(err.value)
    assert msg.startswith("the gpu profile needs CUDA; no CUDA device here")
    assert "torch.cuda.is_available() is False" in msg and "--profile cpu" in msg
    assert "\n" not in msg and isinstance(err.value, ConfigError)
    devices.require_profile("smoke")  # cpu only: nothing to say
    devices.require_device("cpu")
    devices.require_device("auto")


def test_core_check_refuses_a_cuda_index_beyond_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    devices.require_device("cuda:0")
    with pytest.raises(
        DeviceUnavailableError, match=r"no CUDA device 3 here .*device_count\(\) is 1"
    ):
        devices.require_device("cuda:3")


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["--device", "cuda"], "minillm pretrain: --device cuda needs CUDA"),
        (["--profile", "gpu"], "minillm pretrain: --profile gpu (device cuda) needs CUDA"),
    ],
)
def test_train_command_stops_before_reading_data(no_cuda, tmp_path, capsys, argv, start):
    from minillm_cli.train import main_pretrain

    missing = tmp_path / "nothing_here"  # the check comes first: no data error
    rc = main_pretrain([*argv, "--data_path", str(missing), "--out_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith(start), err
    assert "Use --device cpu" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_train_command_with_cpu_over_the_gpu_profile_is_not_refused(no_cuda):
    from minillm_cli.train import check_device, parse_train_args

    argv = ["--profile", "gpu", "--device", "cpu"]
    cfg, _ = parse_train_args("pretrain", argv)
    check_device(cfg, argv)  # no error


def test_eval_command_stops_with_one_line(no_cuda, tmp_path, capsys):
    from minillm_cli.eval import main

    rc = main(["--stage", "pretrain", "--device", "cuda", "--checkpoint", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("minillm eval: --device cuda needs CUDA"), err


def test_pipeline_stops_before_dagster_starts(no_cuda, tmp_path, monkeypatch, capsys):
    import subprocess

    from minillm_assets import pipeline

    def never(*a, **k):
        raise AssertionError("dagster was started")

    monkeypatch.setattr(subprocess, "call", never)
    rc = pipeline.main(["--profile", "gpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: the gpu profile needs CUDA"), err
    assert "scripts/run.sh --profile cpu" in err and len(err.splitlines()) == 1


def test_dagster_run_fails_at_the_first_asset_with_the_line(no_cuda, tmp_path):
    from minillm_assets.definitions import all_assets
    from minillm_assets.resources import MiniLLMResource

    (tmp_path / "sources").mkdir()
    res = MiniLLMResource(
        profile="gpu",
        sources_dir=str(tmp_path / "sources"),
        processed_dir=str(tmp_path / "processed"),
        out_dir=str(tmp_path / "out"),
        tf_dir=str(tmp_path / "tf_dir"),
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            all_assets,
            resources={"minillm": res},
            instance=instance,
            selection="pretrain_mix",
            raise_on_error=False,
        )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    info = failures[0].step_failure_data.error
    assert "pretrain_mix: the gpu profile needs CUDA; no CUDA device here" in info.message
    assert info.cause is None  # no traceback under the line
    assert not (tmp_path / "processed").exists()


def test_training_asset_run_on_k8s_skips_the_local_check(no_cuda):
    from minillm_assets.resources import MiniLLMResource

    res = MiniLLMResource(profile="gpu")
    k8s = {"ops": {"pretrain_checkpoint": {"config": {"distributed": {"launcher": "k8s"}}}}}
    res.require_devices("pretrain_mix", k8s)  # pods bring their GPUs
    with pytest.raises(dg.Failure, match="the gpu profile needs CUDA"):
        res.require_devices("pretrain_mix", {})
