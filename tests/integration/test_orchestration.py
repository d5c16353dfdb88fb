"""Schedule and sensor logic, evaluated without the daemon."""

from __future__ import annotations

import os
import shutil

import dagster as dg

from minillm_assets import defs
from minillm_assets.jobs import weekly_retrain
from minillm_assets.sensors import source_data_changed
from tests.conftest import REPO, smoke_resource


def test_weekly_schedule_is_stopped_and_requests_the_full_graph():
    assert weekly_retrain.default_status == dg.DefaultScheduleStatus.STOPPED
    assert weekly_retrain.cron_schedule == "0 3 * * 1"
    assert weekly_retrain.job_name == "retrain"
    with dg.build_schedule_context() as ctx:
        requests = list(weekly_retrain.evaluate_tick(ctx).run_requests or [])
    assert len(requests) == 1


def _tick(resource, cursor):
    with dg.build_sensor_context(
        cursor=cursor, resources={"minillm": resource}, repository_def=defs.get_repository_def()
    ) as ctx:
        result = source_data_changed.evaluate_tick(ctx)
        return result, ctx.cursor if result.cursor is None else result.cursor


def test_sensor_requests_one_run_per_content_change(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    pref = sources / "preference_pairs.jsonl"
    shutil.copy(REPO / "dataset" / "preference_dpo_messages_sample.jsonl", pref)
    res = smoke_resource(tmp_path)
    assert res.sources == sources

    first, cursor = _tick(res, None)
    assert not first.run_requests and "baseline" in first.skip_message

    again, cursor = _tick(res, cursor)
    assert not again.run_requests

    # Same bytes, new mtime: nothing to do.
    os.utime(pref, ns=(1, 1))
    touched, cursor = _tick(res, cursor)
    assert not touched.run_requests

    with pref.open("a", encoding="utf-8") as f:
        f.write(
            '{"chosen": [{"role": "user", "content": "一加一等于几？"}, {"role": "assistant", '
            '"content": "等于二。"}], "rejected": [{"role": "user", "content": "一加一等于几？"}, '
            '{"role": "assistant", "content": "等于三。"}]}\n'
        )
    changed, new_cursor = _tick(res, cursor)
    (request,) = changed.run_requests
    selected = {k.to_user_string() for k in request.asset_selection}
    assert "dpo_mix" in selected and "tokenizer" in selected and "dpo_eval" in selected
    assert "pretrain_mix" not in selected and "sft_mix" not in selected
    assert request.tags["minillm/changed_outputs"] == "dpo"

    # Evaluated again from the same cursor, the change maps to the same run key: one run.
    replay, _ = _tick(res, cursor)
    assert replay.run_requests[0].run_key == request.run_key
    after, _ = _tick(res, new_cursor)
    assert not after.run_requests


def test_source_edit_marks_the_mix_stale_until_rebuilt(tmp_path):
    # Dagster's own helper for resolving stale status outside the web server (no public API).
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from minillm_assets.data import pretrain_mix, sft_mix
    from minillm_assets.sensors import chinese_sources

    sources = tmp_path / "sources"
    sources.mkdir()
    general = sources / "general_notes.jsonl"
    general.write_text(
        "".join(
            f'{{"text": "第{i}条：春天来了，公园里的花都开了，孩子们在草地上放风筝。"}}\n'
            for i in range(40)
        ),
        encoding="utf-8",
    )
    res = smoke_resource(tmp_path)
    assets = [chinese_sources, pretrain_mix, sft_mix]
    with dg.instance_for_test() as instance:

        def status(key: str) -> StaleStatus:
            return get_stale_status_resolver(instance, assets).get_status(dg.AssetKey(key))

        def observe() -> None:
            dg.materialize(
                assets, instance=instance, resources={"minillm": res}, selection=["chinese_sources"]
            )

        observe()
        dg.materialize(
            assets, instance=instance, resources={"minillm": res}, selection=["pretrain_mix"]
        )
        assert status("pretrain_mix") == StaleStatus.FRESH

        with general.open("a", encoding="utf-8") as f:
            f.write('{"text": "新加的一条：秋天的稻田一片金黄。"}\n')
        observe()
        assert status("pretrain_mix") == StaleStatus.STALE

        dg.materialize(
            assets, instance=instance, resources={"minillm": res}, selection=["pretrain_mix"]
        )
        assert status("pretrain_mix") == StaleStatus.FRESH


def test_loss_checks_flag_non_finite_as_error_and_flat_curves_as_warning():
    from minillm_assets.training import loss_problems

    assert loss_problems([7.0, 6.5, 6.0, 5.0]) == ([], [])
    errors, _ = loss_problems([7.0, float("nan"), 6.0])
    assert errors and "non-finite" in errors[0]
    errors, warnings = loss_problems([0.69, 0.69, 0.70, 0.71])
    assert not errors and "did not decrease" in warnings[0]
    assert loss_problems([])[0] == ["no losses were logged"]
