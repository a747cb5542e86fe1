"""The whole pipeline on the realistic scenario: customers like a real retailer's, whose
behaviours overlap, with no planted groups. What a marketer needs of the segments there:
a k in the business range chosen for a stated reason, names that tell segments apart and
follow their value, and segments that do not depend on the seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.cli import run_stage
from custseg.insights import naming
from tests.conftest import build_once


@pytest.fixture(scope="module")
def realistic_lake(spark, realistic_config, realistic_raw):
    """One run of the pipeline on the realistic sources, by whichever worker asks first."""

    def build() -> None:
        for stage in ("ingest", "features", "value", "segment", "profile"):
            run_stage(stage, spark, realistic_config, "realistic-run")

    build_once(Path(realistic_config.storage.root).with_name("lake.done"), build)
    return realistic_config


def table(spark, cfg, name: str):
    return io.read(spark, io.table_ref(cfg.storage, getattr(cfg.tables, name)))


def test_realistic_features_are_retail_shaped(spark, realistic_lake, report):
    feats = table(spark, realistic_lake, "features").where(F.col(c.FREQUENCY) >= 1)
    row = feats.agg(
        F.avg((F.col(c.FREQUENCY) == 1).cast("double")).alias("one_time"),
        F.percentile(c.FREQUENCY, [0.5, 0.9, 0.99]).alias("f"),
        F.percentile(c.MONETARY, [0.5, 0.8, 0.99]).alias("m"),
        F.sum(c.MONETARY).alias("revenue"),
    ).first()
    top = feats.where(F.col(c.MONETARY) >= row["m"][1]).agg(F.sum(c.MONETARY)).first()[0]
    report.append(f"realistic features: one-time {row['one_time']:.3f}, top 20% revenue {top / row['revenue']:.3f}, "
                  f"frequency p50/p90/p99 {row['f']}, spend p99/median {row['m'][2] / row['m'][0]:.1f}")  # fmt: skip
    assert 0.35 <= row["one_time"] <= 0.51 and 0.68 <= top / row["revenue"] <= 0.74
    assert 1 <= row["f"][0] <= 2 and 6 <= row["f"][1] <= 9 and 19 <= row["f"][2] <= 30
    assert 20 <= row["m"][2] / row["m"][0] <= 26


def test_realistic_k_is_in_the_business_range_for_a_stated_reason(spark, realistic_lake, report):
    sweep = table(spark, realistic_lake, "k_sweep").where(F.col(c.RUN_ID) == "realistic-run").collect()  # k rows
    chosen = next(r for r in sweep if r["chosen"])
    lo, hi = realistic_lake.segment.business_k
    report.append(f"realistic: k={chosen['k']}: {chosen['reason']}")
    assert lo <= chosen["k"] <= hi
    # no k stands out on overlapping behaviours, and the rule says so rather than taking k = 2
    assert chosen["structure"] == "none" and chosen["reason"].startswith("no clear cluster structure")
    assert max(r["silhouette"] for r in sweep) < realistic_lake.segment.structure_silhouette
    assert chosen["smallest_share"] >= realistic_lake.segment.min_segment_share
    assert chosen["stability"] >= realistic_lake.stability.threshold
    # every larger k of the range was measured and rejected, with its reason
    for r in sweep:
        if chosen["k"] < r["k"] <= hi:
            assert r["reason"].startswith("rejected: "), r
    model = table(spark, realistic_lake, "models").where(F.col(c.RUN_ID) == "realistic-run").first()
    assert model["selection_reason"] == chosen["reason"] and model["restarts"] == realistic_lake.segment.restarts


def test_realistic_names_are_distinct_and_follow_value(spark, realistic_lake, report):
    profiles = table(spark, realistic_lake, "segment_profiles").where("segment_id >= 0").collect()  # k rows
    for r in sorted(profiles, key=lambda r: r[c.SEGMENT_ID]):
        report.append(f"realistic segment {r['segment_id']}: {r['segment_name']}: {r['description']}")
    names = [r["segment_name"] for r in profiles]
    assert len(set(names)) == len(names) and not any("#" in name for name in names)
    assert all(r["description"] for r in profiles)
    tiers = [naming.TIERS.index(r["value_tier"]) for r in sorted(profiles, key=lambda r: r["median_monetary"])]
    assert tiers == sorted(tiers)  # tiers never fall as median spend rises
    top_spend = max(profiles, key=lambda r: r["median_monetary"])
    assert top_spend["value_tier"] == naming.HIGH_VALUE and top_spend["segment_name"].startswith(naming.HIGH_VALUE)
    top_revenue = max(profiles, key=lambda r: r["revenue_share"])
    assert top_revenue["value_tier"] == naming.HIGH_VALUE
    assert not any(r["segment_name"].startswith(naming.MID_VALUE) for r in profiles if r["revenue_share"] > 0.5)


def test_realistic_seed_refits_agree_with_restarts(spark, realistic_lake, report):
    runs = table(spark, realistic_lake, "stability").where(F.col(c.RUN_ID) == "realistic-run")
    seeds = [r["ari"] for r in runs.where("kind = 'seed'").collect()]  # one row per seed
    report.append(f"realistic: seed refits ARI {', '.join(f'{a:.3f}' for a in seeds)}")
    assert len(seeds) == len(realistic_lake.stability.seeds) and min(seeds) >= 0.9


def test_realistic_profiles_show_clv_and_p_alive_per_segment(spark, realistic_lake, report):
    values = table(spark, realistic_lake, "customer_value")
    buyers = table(spark, realistic_lake, "features").where(F.col(c.FREQUENCY) >= 1)
    assert values.count() == buyers.count()  # every customer with a purchase has a value
    assert values.select(c.RUN_ID).distinct().collect()[0][0] == "realistic-run"
    profiles = table(spark, realistic_lake, "segment_profiles").where("segment_id >= 0").collect()  # k rows
    for r in sorted(profiles, key=lambda r: r[c.SEGMENT_ID]):
        report.append(f"realistic segment {r['segment_id']}: median CLV {r['median_clv']:.2f}, "
                      f"P(alive) mean {r['mean_p_alive']:.3f}, median {r['median_p_alive']:.3f}")  # fmt: skip
        assert r["median_clv"] >= 0 and 0 <= r["median_p_alive"] <= 1 and 0 <= r["mean_p_alive"] <= 1
        assert "expected CLV" in r["description"] and "P(alive)" in r["description"]
    # the segment whose median customer spent most is worth most in the future too
    assert max(profiles, key=lambda r: r["median_monetary"])["median_clv"] == max(r["median_clv"] for r in profiles)
    ranked = table(spark, realistic_lake, "feature_profiles").where(F.col("feature").isin(c.CLV, c.P_ALIVE))
    assert ranked.where("segment_id >= 0 AND percentile_rank IS NOT NULL").count() == 2 * len(profiles)
