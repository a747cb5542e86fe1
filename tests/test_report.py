"""The report job: its small tables, the stratified sample, per-customer silhouettes, the
page, and one real report on a small demo lake."""

from __future__ import annotations

import base64
import math
import os
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from sklearn.metrics import silhouette_samples as sklearn_silhouette_samples

from custseg import io
from custseg.insights import job as insights_job
from custseg.insights import page as report_page
from custseg.insights import plots as report_plots
from custseg.insights import report
from custseg.segment import job as segment_job
from tests.conftest import DEMO_RUN_ID

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELLED = "customer_id STRING, segment_id INT, rfm_segment STRING"


def labelled(spark):
    # segment 0: 20 customers, segment 1: 5, segment 2: 1, unsegmented (-1): 2
    rows = [(f"a{i:02d}", 0, "Champions" if i < 12 else "Loyal Customers") for i in range(20)]
    rows += [(f"b{i}", 1, "Hibernating") for i in range(5)]
    rows += [("c0", 2, "At Risk"), ("x0", -1, "Other"), ("x1", -1, "Other")]
    return spark.createDataFrame(rows, LABELLED)


# --------------------------------------------------------------------------- small tables


def test_rfm_cross_table_counts_customers_per_rfm_segment_and_segment(spark):
    rows = [
        ("a", 0, "Champions"),
        ("b", 0, "Champions"),
        ("c", 0, "Loyal Customers"),
        ("d", 1, "Loyal Customers"),
        ("e", 1, "Hibernating"),
        ("f", -1, "Other"),
    ]
    actual = spark.createDataFrame(rows, LABELLED).transform(report.rfm_cross_table)
    expected = spark.createDataFrame(
        [("Champions", 0, 2), ("Loyal Customers", 0, 1), ("Loyal Customers", 1, 1), ("Hibernating", 1, 1),
         ("Other", -1, 1)],
        "rfm_segment STRING, segment_id INT, customers LONG",
    )  # fmt: skip
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_rfm_matrix_follows_rule_order_fills_zeros_and_adds_totals():
    counts = pd.DataFrame(
        {
            "rfm_segment": ["Hibernating", "Champions", "Champions", "Other"],
            "segment_id": [1, 0, 1, -1],
            "customers": [4, 2, 1, 3],
        }
    )
    actual = report.rfm_matrix(counts, ["Champions", "Loyal Customers", "Hibernating", "Other"])
    # rows in rule order (Loyal Customers absent), columns 0, 1 then -1; totals 3 + 4 + 3 = 10
    expected = pd.DataFrame(
        [[2, 1, 0, 3], [0, 4, 0, 4], [0, 0, 3, 3], [2, 5, 3, 10]],
        index=pd.Index(["Champions", "Hibernating", "Other", "Total"], name="RFM segment"),
        columns=["0", "1", "-1", "Total"],
    )
    pd.testing.assert_frame_equal(actual, expected)


def test_migration_matrix_names_new_and_gone_customers():
    moves = pd.DataFrame(
        {
            "from_segment": [0, 0, 1, None, 1],
            "to_segment": [0, 1, 1, 0, None],
            "customers": [5, 2, 7, 3, 1],
        }
    )
    actual = report.migration_matrix(moves)
    expected = pd.DataFrame(
        [[5, 2, 0, 7], [0, 7, 1, 8], [3, 0, 0, 3], [8, 9, 1, 18]],
        index=pd.Index(["0", "1", "new", "Total"], name="from \\ to"),
        columns=["0", "1", "gone", "Total"],
    )
    pd.testing.assert_frame_equal(actual, expected)


# --------------------------------------------------------------------------- the sample


def sample_sizes(df) -> dict[int, int]:
    return {r["segment_id"]: r["count"] for r in df.groupBy("segment_id").count().collect()}


def test_stratified_sample_never_exceeds_the_cap_and_keeps_every_segment(spark):
    sample = labelled(spark).transform(report.stratified_sample(3, seed=42))
    assert sample_sizes(sample) == {0: 3, 1: 3, 2: 1, -1: 2}
    assert sample.columns == ["customer_id", "segment_id", "rfm_segment"]


def test_stratified_sample_thins_a_large_segment_to_exactly_the_cap(spark):
    big = spark.range(5000).selectExpr("CONCAT('c', id) AS customer_id", "CAST(id % 2 AS INT) AS segment_id")
    assert sample_sizes(big.transform(report.stratified_sample(4, seed=42))) == {0: 4, 1: 4}


def test_stratified_sample_rejects_a_cap_below_one():
    with pytest.raises(ValueError, match="sample_per_segment"):
        report.stratified_sample(0, seed=42)


def test_stratified_sample_is_the_same_every_time_and_on_any_partitioning(spark):
    first = labelled(spark).transform(report.stratified_sample(3, seed=42))
    again = labelled(spark).transform(report.stratified_sample(3, seed=42))
    reshuffled = labelled(spark).repartition(5).transform(report.stratified_sample(3, seed=42))
    assert_df_equality(first, again, ignore_row_order=True)
    assert_df_equality(first, reshuffled, ignore_row_order=True)


def test_stratified_sample_depends_on_the_seed(spark):
    def ids(seed: int) -> set[str]:
        sample = labelled(spark).transform(report.stratified_sample(3, seed=seed))
        return {r["customer_id"] for r in sample.where("segment_id = 0").collect()}

    assert ids(1) != ids(2)  # 3 of 20: the same draw twice has a chance of 1 in 1140


# --------------------------------------------------------------------------- silhouettes and projections


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_silhouette_samples_match_scikit_learn(metric):
    rng = np.random.default_rng(7)
    vectors = np.vstack([rng.normal(loc, 1.0, size=(n, 3)) for loc, n in ((0, 15), (3, 20), (-2, 8))])
    vectors = np.vstack([vectors, [[10.0, 10.0, 10.0]]])  # a cluster of one: silhouette 0
    labels = np.array([5] * 15 + [1] * 20 + [2] * 8 + [9])
    expected = sklearn_silhouette_samples(vectors, labels, metric=metric)
    np.testing.assert_allclose(report.silhouette_samples(vectors, labels, metric), expected, rtol=0, atol=1e-9)
    assert report.silhouette_samples(vectors, labels, metric)[-1] == 0.0


def test_silhouette_samples_match_scikit_learn_across_row_blocks():
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(1200, 4))  # 2e6 / (1200 * 4): blocks of 416 rows
    labels = rng.integers(0, 4, size=1200)
    expected = sklearn_silhouette_samples(vectors, labels, metric="sqeuclidean")
    np.testing.assert_allclose(report.silhouette_samples(vectors, labels), expected, rtol=0, atol=1e-9)


def test_pca_2d_signs_are_fixed_and_shares_add_up():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(50, 3)) * [5.0, 1.0, 0.1]
    coords, shares = report.pca_2d(vectors)
    flipped, _ = report.pca_2d(-vectors)
    np.testing.assert_allclose(np.abs(coords), np.abs(flipped), atol=1e-12)
    assert coords.shape == (50, 2) and shares[0] > shares[1] and sum(shares) <= 1.0


def small_sample() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    points = [(f"c{i:02d}", i % 2, list(rng.normal(3 * (i % 2), 1.0, size=3))) for i in range(20)]
    return pd.DataFrame(points, columns=["customer_id", "segment_id", "vector"])


def test_tsne_is_skipped_with_a_note_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails as if not installed
    assert report.tsne_2d(np.zeros((10, 3)), seed=1) is None
    plots, notes = report_plots.sample_plots(small_sample(), {0: "a", 1: "b"}, None, tsne=True, seed=1)
    assert set(plots) == {"silhouette", "pca"}
    assert notes == {"tsne": "t-SNE skipped: scikit-learn not installed."}


def test_pca_scatter_is_skipped_with_a_note_for_one_dimension():
    one_dim = small_sample().assign(vector=lambda df: [v[:1] for v in df["vector"]])
    plots, notes = report_plots.sample_plots(one_dim, {}, None, tsne=False, seed=1)
    assert set(plots) == {"silhouette"}
    assert "fewer than 2" in notes["pca"] and notes["tsne"] == "t-SNE skipped: report.tsne is false."


# --------------------------------------------------------------------------- the page


class Tables(HTMLParser):
    """Every <table id=...> of a page as rows of cell texts (entities decoded)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs)["id"]
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self.tables[self._table].append(self._row)
            self._row = None


def records(page: str, table_id: str) -> list[dict[str, str]]:
    header, *rows = Tables(page).tables[table_id]
    return [dict(zip(header, row, strict=True)) for row in rows]


def tiny_content(segment_name: str, migrations: pd.DataFrame | None) -> report.ReportContent:
    info = report.RunInfo("r<1>", "kmeans-k2-r1", None, "kmeans", 2, "silhouette", ["monetary"], 3)
    segments = pd.DataFrame(
        {"segment_id": [0, 1], "segment_name": [segment_name, "Other"],
         "description": ["Bought 8 times, last 16 days ago, median spend 2,761; 99.6% of customers, 50% of revenue "
                         "(index 50) & <more>", "Bought once"],
         "customers": [1234, 5], "customer_share": [0.996, 0.004], "revenue_share": [0.5, 0.5],
         "revenue_index": [50.2, 12500.0]}
    )  # fmt: skip
    sweep = pd.DataFrame({"k": [2], "wcss": [12345.678], "silhouette": [0.5], "calinski_harabasz": [1.0],
                          "davies_bouldin": [0.25], "chosen": [True]})  # fmt: skip
    return report.ReportContent(info, segments, sweep, None, migrations, "r0", 0, 300)


def test_render_html_escapes_text_and_formats_numbers():
    page = report_page.render_html(tiny_content("<script>x</script> & co", None), {"k_sweep": PNG_SIGNATURE})
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt; &amp; co" in page
    assert "<title>Customer segments: run r&lt;1&gt;</title>" in page
    assert records(page, "segments")[0]["Customers"] == "1,234"
    assert records(page, "segments")[0]["Share of customers"] == "99.6%"
    assert records(page, "segments")[0]["Description"] == (
        "Bought 8 times, last 16 days ago, median spend 2,761; 99.6% of customers, 50% of revenue (index 50) & <more>"
    )
    assert "(index 50) &amp; &lt;more&gt;" in page
    assert [r["Revenue index"] for r in records(page, "segments")] == ["50", "12,500"]
    assert records(page, "k-sweep") == [
        {"k": "2", "WCSS": "12,345.68", "Silhouette": "0.5000", "Calinski-Harabasz": "1.00",
         "Davies-Bouldin": "0.2500", "Chosen": "✔"}
    ]  # fmt: skip
    assert f"data:image/png;base64,{base64.b64encode(PNG_SIGNATURE).decode()}" in page


def test_render_html_says_first_run_or_shows_the_migrations():
    first = report_page.render_html(tiny_content("A", None), {})
    assert "This is the first run" in first and "migrations" not in Tables(first).tables
    moves = report.migration_matrix(pd.DataFrame({"from_segment": [0], "to_segment": [1], "customers": [4]}))
    later = report_page.render_html(tiny_content("A", moves), {})
    assert "This is the first run" not in later and "since run r0" in later
    assert records(later, "migrations")[0] == {"from \\ to": "0", "1": "4", "Total": "4"}


def test_write_puts_the_page_beside_its_plots_and_removes_a_skipped_plots_old_png(tmp_path):
    (tmp_path / "tsne.png").write_bytes(PNG_SIGNATURE)  # from an earlier rendering with t-SNE
    result = insights_job.write(tmp_path, tiny_content("A", None), {"k_sweep": PNG_SIGNATURE})
    expected = report.ReportResult(str(tmp_path / "report.html"), {"k_sweep": str(tmp_path / "k_sweep.png")}, "r<1>")
    assert result == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k_sweep.png", "report.html"]


# --------------------------------------------------------------------------- a real report


@pytest.fixture(scope="module")
def lake(spark, demo_config, demo_lake):
    """The shared 300-customer demo lake (conftest), and its report rendered anew."""
    return demo_config, insights_job.run_report(spark, demo_config)


def table(spark, cfg, name: str):
    return io.read(spark, io.table_ref(cfg.storage, name))


def test_run_writes_a_valid_png_per_plot(lake):
    cfg, result = lake
    folder = Path(cfg.report.dir) / DEMO_RUN_ID
    assert result.path == str(folder / "report.html") and result.run_id == DEMO_RUN_ID
    assert set(result.plots) == {"k_sweep", "silhouette", "pca", "tsne", "feature_heatmap", "segment_sizes"}
    for name, path in result.plots.items():
        data = Path(path).read_bytes()
        assert Path(path) == folder / f"{name}.png"
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name


def test_run_embeds_every_plot_in_the_html(lake):
    _, result = lake
    page = Path(result.path).read_text(encoding="utf-8")
    for name, path in result.plots.items():
        encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        assert f'id="plot-{name}"' in page and f"data:image/png;base64,{encoded}" in page, name


def test_run_html_numbers_match_the_delta_tables(spark, lake):
    cfg, result = lake
    page = Path(result.path).read_text(encoding="utf-8")
    sweep = table(spark, cfg, cfg.tables.k_sweep).collect()  # 3 rows: k = 2..4
    chosen = next(r["k"] for r in sweep if r["chosen"])
    header = dict(Tables(page).tables["run"])
    assert header["Run"] == DEMO_RUN_ID and header["k"] == str(chosen)
    assert header["k chosen by"].startswith("guarded: ")
    model_record = table(spark, cfg, cfg.tables.models).first()
    assert header["Why this k"] == model_record["selection_reason"] == next(r["reason"] for r in sweep if r["chosen"])
    assert {r["k"]: r["WCSS"] for r in records(page, "k-sweep")} == {str(r["k"]): f"{r['wcss']:,.2f}" for r in sweep}
    assert [r["k"] for r in records(page, "k-sweep") if r["Chosen"] == "✔"] == [str(chosen)]
    shown_sweep = {r["k"]: r for r in records(page, "k-sweep")}
    assert {k: r["Verdict"] for k, r in shown_sweep.items()} == {str(r["k"]): r["reason"] for r in sweep}
    assert {k: r["Smallest segment"] for k, r in shown_sweep.items()} == {
        str(r["k"]): f"{r['smallest_share']:.1%}" for r in sweep
    }

    segments = table(spark, cfg, cfg.tables.segment_profiles).collect()  # k + 1 rows
    shown = {r["Segment"]: r for r in records(page, "segments")}
    assert {sid: (r["Name"], r["Description"], r["Customers"]) for sid, r in shown.items()} == {
        str(r["segment_id"]): (r["segment_name"], r["description"], f"{r['customers']:,}") for r in segments
    }
    assert all(r["description"] for r in segments)

    labels = table(spark, cfg, cfg.tables.labels)
    cells = (
        labels.join(table(spark, cfg, cfg.tables.features), on="customer_id", how="inner")
        .groupBy("rfm_segment", "segment_id")
        .count()
        .collect()
    )  # at most 11 x (k + 1) rows
    cross = {r["RFM segment"]: r for r in records(page, "rfm-cross")}
    for r in cells:
        assert cross[r["rfm_segment"]][str(r["segment_id"])] == str(r["count"])
    assert cross["Total"]["Total"] == str(labels.count()) == "300"
    assert "This is the first run" in page


def test_run_sample_silhouette_matches_spark_when_the_sample_is_everyone(spark, lake):
    cfg, _ = lake
    labels = table(spark, cfg, cfg.tables.labels)
    fitted, record = segment_job.latest_model(spark, cfg)
    sample = insights_job.read_sample(fitted, record["features"], labels, table(spark, cfg, cfg.tables.features), cfg)
    assert len(sample) == labels.where(F.col("segment_id") >= 0).count()  # 300 per segment: everyone
    vectors = np.array(sample["vector"].tolist())
    mean = report.silhouette_samples(vectors, sample["segment_id"].to_numpy()).mean()
    assert mean == pytest.approx(record["silhouette"], abs=1e-9)


def test_run_rejects_a_run_that_is_not_the_current_labels(spark, lake):
    cfg, _ = lake
    with pytest.raises(ValueError, match="not the run of the current labels"):
        insights_job.run_report(spark, cfg, "some-other-run")


# --------------------------------------------------------------------------- in a real browser

CHROMIUM_ARGS = [  # headless as root, on a machine with no internet: nothing phones home
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


def chromium() -> str:
    """Chromium's path: $CUSTSEG_CHROMIUM or the first on PATH. `make test` installs Debian's
    where it can (`make browser`); without it this test fails in CI and is skipped elsewhere."""
    found = os.environ.get("CUSTSEG_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if not found:
        message = "no Chromium on this machine: `make browser` installs Debian's (or set CUSTSEG_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_run_report_opens_in_chromium_with_every_plot_drawn(lake):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, result = lake
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(Path(result.path).as_uri())
            images = page.evaluate(
                """Array.from(document.images).map(i => ({id: i.id, loaded: i.complete, width: i.naturalWidth,
                   height: i.naturalHeight, shown: i.getBoundingClientRect().width}))"""
            )
            title = page.title()
            page.screenshot(path=str(Path(result.path).with_name("screenshot.png")), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert title == f"Customer segments: run {DEMO_RUN_ID}"
    assert sorted(image["id"] for image in images) == sorted(f"plot-{name}" for name in result.plots)
    for image in images:  # decoded by the browser, and drawn at a readable width inside the page
        assert image["loaded"] and image["width"] >= 600 and image["height"] >= 300, image
        assert 600 <= image["shown"] <= 1280, image
    assert Path(result.path).with_name("screenshot.png").read_bytes().startswith(PNG_SIGNATURE)


def test_rank_matrix_is_the_medians_percentile_per_segment_and_feature_in_order():
    rows = pd.DataFrame({
        "segment_id": [0, 0, 1, 1, -1],
        "feature": ["monetary", "recency_days", "monetary", "recency_days", "monetary"],
        "percentile_rank": [0.875, 0.2, 0.25, None, None],
    })  # fmt: skip
    matrix = report.rank_matrix(rows, ["recency_days"])
    assert list(matrix.columns) == ["recency_days", "monetary"] and list(matrix.index) == [0, 1]
    assert matrix.loc[0].tolist() == [20.0, 87.5]
    assert math.isnan(matrix.loc[1, "recency_days"]) and matrix.loc[1, "monetary"] == 25.0
