"""The mix assets in Dagster: their metadata carries the integrity counts, and the asset check
counts held-out overlaps (and fails on one)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import smoke_resource

pytestmark = pytest.mark.integration


def test_mix_assets_report_counts_and_the_check_fails_on_an_overlap(tmp_path):
    import dagster as dg

    from minillm_assets.data import assets, checks

    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "stray.jsonl").write_text('{"text": "没有类别"}\n', encoding="utf-8")
    resource = smoke_resource(tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*assets, *checks], resources={"minillm": resource}, instance=instance
        )
        assert result.success
        meta = result.asset_materializations_for_node("sft_mix")[0].metadata
        for key in ("duplicates_total", "contaminated_total", "dropped_total", "decontam_window"):
            assert key in meta, key
        assert meta["unmatched_files"].value == ["stray.jsonl"]
        evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
        sft = evals["sft_mix_consistent"]
        assert sft.passed and sft.metadata["overlap"].value == 0
        assert sft.metadata["eval_heldout_clean"].value > 0
        # A held-out record copied into training: the next check fails and counts it.
        mix = resource.mix_path("sft")
        twin = json.loads(resource.mix_path("sft", heldout=True).read_text().splitlines()[0])
        with open(mix, "a", encoding="utf-8") as f:
            f.write(json.dumps(twin, ensure_ascii=False) + "\n")
        again = dg.materialize(
            [*assets, *checks],
            resources={"minillm": resource},
            instance=instance,
            selection=dg.AssetSelection.checks_for_assets("sft_mix"),
            raise_on_error=False,
        )
        ev = {e.check_name: e for e in again.get_asset_check_evaluations()}["sft_mix_consistent"]
        assert not ev.passed and ev.metadata["overlap"].value >= 1
