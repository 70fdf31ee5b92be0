"""Every analytics engine reads every table of real runs with its default reader and hive
partitioning only, and they agree (issue 34): DuckDB, pyarrow datasets, pandas, polars, DataFusion,
chDB (ClickHouse) and Spark (pyspark, local). The Spark SQL queries of docs/ give what DuckDB's give;
Athena's DDL matches the schemas; a run compacted into large files reads the same."""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from helpers import make_tiny_model_dir, named_queries

REPO = Path(__file__).resolve().parents[1]
TABLES = ("transcripts", "words", "wer_groups", "wer_errors")
RUNS = ("alpha", "beta-2026-11-25")


def corpus(root: Path, name: str, n: int, seed: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(n):
        seconds = float(rng.uniform(0.8, 2.5))
        path = root / f"{name}-{k}.wav"
        sf.write(str(path), (0.2 * np.sin(np.arange(int(seconds * 16000)) / (2 + k % 5))).astype(np.float32), 16000,
                 subtype="PCM_16")
        rec = {"id": f"{name}-r{k}", "sources": [{"type": "file", "channels": [0], "source": str(path)}],
               "sampling_rate": 16000, "num_samples": int(seconds * 16000), "duration": seconds, "channel_ids": [0]}
        sup = {"id": f"{name}-{k}", "recording_id": rec["id"], "start": 0.0, "duration": seconds, "channel": 0,
               "text": "the quick brown fox" if k % 3 else "speech recognition turns audio into text",
               "speaker": f"spk{k % 3}"}
        lines.append(json.dumps({"id": f"{name}-{k}", "start": 0.0, "duration": seconds, "channel": 0,
                                 "type": "MonoCut", "supervisions": [sup], "recording": rec}))
    manifest = root / f"{name}.jsonl.gz"
    with gzip.open(manifest, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> dict:
    """Two real runs (tiny model, two inputs each, so two datasets), their reports, a history, and
    the second run compacted into large files."""
    from pipeline.report import history as hist
    from pipeline.report.files import write_run_report
    from pipeline.run.compact import compact_run
    from pipeline.output.paths import RunPaths
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    root = tmp_path_factory.mktemp("engines")
    model = make_tiny_model_dir(root / "model")
    manifests = [corpus(root / "data", "clean", 7, 0), corpus(root / "data", "noisy", 5, 1)]
    out, history = root / "out", root / "history"
    for i, run_id in enumerate(RUNS):
        cfg = TranscribeConfig(manifest=[str(m) for m in manifests], model=str(model), output=str(out), shard_size=2,
                               decoding={"method": "ctc-greedy"})
        run_in_process(cfg, run_id)
        report, _ = write_run_report(str(out / "transcripts" / f"run_id={run_id}"), str(out), run_id, "english")
        facts = {(g["group_value"], g["decoding"]): hist.RunFacts(
            run_id, str(model), 10.0, 50.0, gpu_hours=0.25 * (i + 1), node_hours=0.5, cpu_core_hours=2.0, cost_usd=0.3,
            cost_per_audio_hour_usd=1.5 + i) for g in report.table.to_pylist() if g["group_by"] == "dataset"}
        hist.append_history(str(history), hist.history_rows(report.table, facts, run_id=run_id,
                                                             created_at=report.created_at, git_rev=None))
    parts_before = len(list((out / "transcripts" / f"run_id={RUNS[1]}").iterdir()))
    compact_run(RunPaths(str(out), RUNS[1]))
    return {"out": out, "history": history, "manifests": manifests, "parts_before": parts_before}


def paths_of(output: dict) -> dict[str, Path]:
    return {**{t: output["out"] / t for t in TABLES}, "wer_history": output["history"] / "wer_history"}


# the same aggregates in every engine: (name, SQL over the tables by name)
AGGREGATES = {
    "status": "SELECT run_id, status, count(*) AS n FROM transcripts GROUP BY run_id, status",
    "wer": "SELECT run_id, sum(errors) AS e, sum(ref_words) AS w, round(sum(duration), 6) AS seconds, "
           "round(sum(confidence), 6) AS confidence FROM transcripts GROUP BY run_id",
    "words_per_cut": "SELECT run_id, cut_id, count(*) AS n, round(sum(end_s - start_s), 6) AS spoken FROM words "
                     "GROUP BY run_id, cut_id",
    "join": "SELECT t.run_id, count(*) AS n FROM words w JOIN transcripts t ON w.run_id = t.run_id AND "
            "w.cut_id = t.cut_id AND w.decoding = t.decoding GROUP BY t.run_id",
    "groups": "SELECT run_id, group_by, count(*) AS n, sum(ref_words) AS w, sum(errors) AS e FROM wer_groups "
              "GROUP BY run_id, group_by",
    "errors": "SELECT run_id, kind, count(*) AS n, sum(count) AS c FROM wer_errors GROUP BY run_id, kind",
    "history": "SELECT run_id, count(*) AS n, sum(ref_words) AS w, round(sum(gpu_hours), 6) AS g, "
               "round(sum(cost_per_audio_hour_usd), 6) AS c FROM wer_history GROUP BY run_id",
    "datasets": "SELECT DISTINCT run_id, dataset FROM transcripts",
}


def canonical(rows) -> list[tuple]:
    """Rows as sorted tuples of plain values (numbers rounded where engines print them apart)."""
    out = []
    for r in rows:
        values = []
        for v in r:
            if isinstance(v, (np.generic,)):
                v = v.item()
            if isinstance(v, float):
                v = round(v, 6)
            if isinstance(v, datetime) and v.tzinfo is not None:  # Spark gives UTC times without a zone
                v = v.astimezone(timezone.utc).replace(tzinfo=None)
            if isinstance(v, (list, tuple)):
                v = tuple(v)
            values.append(v)
        out.append(tuple(values))
    return sorted(out, key=lambda t: tuple((x is None, str(x)) for x in t))


def duckdb_engine(tables: dict[str, Path]):
    import duckdb

    con = duckdb.connect()
    for name, path in tables.items():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning = 1)")
    types = {name: con.sql(f"SELECT DISTINCT typeof(run_id) FROM {name}").fetchall() for name in tables}
    assert all(t == [("VARCHAR",)] for t in types.values()), types
    return lambda sql: con.sql(sql).fetchall()


def arrow_engine(tables: dict[str, Path]):
    """pyarrow datasets (hive partitioning), aggregated by DuckDB over the Arrow tables."""
    import duckdb
    import pyarrow.dataset as ds

    con = duckdb.connect()
    for name, path in tables.items():
        table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table()
        assert pa.types.is_string(table.schema.field("run_id").type) or \
            pa.types.is_dictionary(table.schema.field("run_id").type), table.schema.field("run_id")
        con.register(name, table)
    return lambda sql: con.sql(sql).fetchall()


def pandas_engine(tables: dict[str, Path]):
    """``pd.read_parquet(folder)``: pandas' own reader, aggregated by DuckDB over the data frames."""
    import duckdb
    import pandas as pd

    con = duckdb.connect()
    for name, path in tables.items():
        frame = pd.read_parquet(path)
        frame["run_id"] = frame["run_id"].astype(str)
        con.register(name, frame)
    return lambda sql: con.sql(sql).fetchall()


def polars_engine(tables: dict[str, Path]):
    import polars as pl

    ctx = pl.SQLContext()
    for name, path in tables.items():
        frame = pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True)
        assert frame.collect_schema()["run_id"] == pl.String
        ctx.register(name, frame)
    return lambda sql: ctx.execute(sql).collect().rows()


def datafusion_engine(tables: dict[str, Path]):
    import datafusion

    ctx = datafusion.SessionContext()
    for name, path in tables.items():
        ctx.register_parquet(name, f"{path}/", table_partition_cols=[("run_id", pa.string())])
    return lambda sql: [tuple(r.values()) for r in ctx.sql(sql).to_arrow_table().to_pylist()]


def chdb_engine(tables: dict[str, Path]):
    import chdb

    def run(sql: str) -> list[tuple]:
        for name, path in tables.items():
            sql = re.sub(rf"\b{name}\b(?=\s|$)", f"file('{path}/**/*.parquet', Parquet)", sql)
        text = chdb.query(sql + " SETTINGS use_hive_partitioning = 1", "JSONCompact").bytes()
        return [tuple(r) for r in json.loads(text)["data"]] if text else []

    return run


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("zipscribe-test")
               .config("spark.driver.memory", "512m").config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    yield session
    session.stop()


def spark_engine(session, tables: dict[str, Path]):
    for name, path in tables.items():
        frame = session.read.parquet(str(path))
        assert dict(frame.dtypes)["run_id"] == "string"
        frame.createOrReplaceTempView(name)
    return lambda sql: [tuple(r) for r in session.sql(sql).collect()]


@pytest.mark.needs_tools("java")
def test_every_engine_reads_every_table_and_the_numbers_agree(output, spark):
    tables = paths_of(output)
    engines = {"duckdb": duckdb_engine(tables), "pyarrow": arrow_engine(tables), "pandas": pandas_engine(tables),
               "polars": polars_engine(tables), "datafusion": datafusion_engine(tables), "chdb": chdb_engine(tables),
               "spark": spark_engine(spark, tables)}
    results = {engine: {name: canonical(run(sql)) for name, sql in AGGREGATES.items()} for engine, run in engines.items()}
    for engine, got in results.items():
        for name in AGGREGATES:
            assert got[name] == results["duckdb"][name], (engine, name, got[name], results["duckdb"][name])
    ref = results["duckdb"]
    assert {r[0] for r in ref["status"]} == set(RUNS) and sum(r[2] for r in ref["status"]) == 2 * 12
    assert {r[0] for r in ref["history"]} == set(RUNS)
    # the speed and cost columns (two datasets per run): every engine reads them as written
    assert sorted((r[0], r[3], r[4]) for r in ref["history"]) == sorted(
        (run, 0.5 * (i + 1), 2 * (1.5 + i)) for i, run in enumerate(RUNS))
    assert sorted(ref["datasets"]) == sorted((run, d) for run in RUNS for d in ("clean", "noisy"))  # the inputs' names


@pytest.mark.needs_tools("java")
def test_spark_runs_the_documented_queries_as_duckdb_does(output, spark):
    import duckdb

    spark_queries = {}
    text = (REPO / "docs" / "queries_spark.sql").read_text()
    blocks = re.split(r"^-- name: (\S+)\s*$", text, flags=re.M)
    spark_queries = {name: sql.strip().rstrip(";") for name, sql in zip(blocks[1::2], blocks[2::2])}
    duck_queries = named_queries()
    assert set(spark_queries) == set(duck_queries)
    said = duckdb.connect().sql(f"SELECT list(lower(word) ORDER BY word_index) FROM read_parquet('{output['out']}/words/"
                                f"**/*.parquet', hive_partitioning = 1) WHERE run_id = '{RUNS[0]}' AND cut_id = "
                                "'clean-1'").fetchall()[0][0]
    phrase = said[:2]
    variables = {"output": str(output["out"]), "history": str(output["history"]), "run_id": RUNS[0],
                 "pattern": "%the%"}
    for key, value in variables.items():
        spark.conf.set(key, value)
    spark.conf.set("phrase", "array(" + ", ".join(f"'{w}'" for w in phrase) + ")")
    con = duckdb.connect()
    for key, value in variables.items():
        con.execute(f"SET VARIABLE {key} = $v", {"v": value})
    con.execute("SET VARIABLE phrase = $p", {"p": phrase})
    for name, sql in duck_queries.items():
        duck = canonical(con.sql(sql).fetchall())
        got = canonical(tuple(r) for r in spark.sql(spark_queries[name]).collect())
        assert got == duck, (name, got[:3], duck[:3])
        if name in ("wer_per_dataset_over_time", "transcripts_search", "phrase_search", "worst_speakers"):
            assert duck, name  # the test data exercises the query


HIVE_TYPES = {"string": pa.string(), "int": pa.int32(), "bigint": pa.int64(), "double": pa.float64(),
              "timestamp": None, "date": pa.date32()}
# Athena's reserved words, DDL (Hive) and DML (Trino), as AWS lists them ("Reserved keywords")
RESERVED = set("""all alter and array as authorization between bigint binary boolean both by case cashe cast char column
conf constraint commit create cross cube current current_date current_timestamp cursor database date dayofweek decimal
delete describe distinct double drop else end exchange exists extended external extract false fetch float floor
following for foreign from full function grant group grouping having if import in inner insert int integer intersect
interval into is join lateral left less like local macro map more none not null numeric of on only or order out outer
over partialscan partition percent preceding precision preserve primary procedure range reads reduce regexp
references revoke right rlike rollback rollup row rows select set smallint start table tablesample then time timestamp
to transform trigger true truncate unbounded union uniquejoin update user using utc_timestamp values varchar views when
where window with current_path current_role current_time current_user deallocate escape except execute first last
listagg localtime localtimestamp natural normalize prepare recursive skip uescape unnest""".split())


def hive_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{hive_type(f.type)}" for f in t) + ">"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return {pa.string(): "string", pa.int32(): "int", pa.int64(): "bigint", pa.float64(): "double",
            pa.date32(): "date"}[t]


def test_athena_ddl_matches_the_schemas_and_uses_no_reserved_word():
    from pipeline.output.records import TRANSCRIPT_SCHEMA
    from pipeline.output.words import WORDS_SCHEMA
    from pipeline.report.history import HISTORY_SCHEMA
    from pipeline.report.tables import ERRORS_SCHEMA, REPORT_SCHEMA

    text = (REPO / "docs" / "athena.sql").read_text()
    ddl = dict(re.findall(r"CREATE EXTERNAL TABLE zipscribe\.(\w+) \((.*?)\n\)\nPARTITIONED BY \(run_id string\)",
                          text, flags=re.S))
    schemas = {"transcripts": TRANSCRIPT_SCHEMA, "words": WORDS_SCHEMA, "wer_groups": REPORT_SCHEMA,
               "wer_errors": ERRORS_SCHEMA, "wer_history": HISTORY_SCHEMA}
    assert set(ddl) == set(schemas)
    for name, body in ddl.items():
        columns = [tuple(line.strip().rstrip(",").split(" ", 1)) for line in body.strip().splitlines()]
        expected = [(f.name, hive_type(f.type)) for f in schemas[name] if f.name != "run_id"]
        assert columns == expected, name
        words = {c for c, _ in columns} | {f for _, t in columns for f in re.findall(r"(\w+):", t)}
        assert not words & RESERVED, (name, words & RESERVED)


def test_run_ids_that_engines_would_read_as_dates_or_numbers_are_refused():
    from pipeline.output.paths import check_run_id

    for bad in ("2026-11-25", "0042", "-x", "a=b", "a/b"):
        with pytest.raises(ValueError, match="starting with a letter"):
            check_run_id(bad)
    assert check_run_id("nightly-2026-11-25") == "nightly-2026-11-25"


def test_a_compacted_run_reads_the_same_and_cannot_be_resumed(output):
    import duckdb

    from pipeline.output.compact import compacted_record
    from pipeline.output.paths import RunPaths
    from pipeline.report.files import build_run_report
    from pipeline.run.config import TranscribeConfig
    from pipeline.run.driver import run_in_process

    out = output["out"]
    files = sorted(p.name for p in (out / "transcripts" / f"run_id={RUNS[1]}").iterdir())
    assert output["parts_before"] > 1 and len(files) == 1 and files[0].startswith("part-compact-")
    assert sorted(p.name for p in (out / "words" / f"run_id={RUNS[1]}").iterdir())[0].startswith("part-compact-")
    con = duckdb.connect()
    runs = {r: con.sql(f"SELECT cut_id, decoding, text, errors FROM read_parquet('{out}/transcripts/run_id={r}/*.parquet')"
                       ).fetchall() for r in RUNS}
    assert sorted(runs[RUNS[0]]) == sorted(runs[RUNS[1]])  # the same cuts (same model, inputs), each once
    a = build_run_report([str(out / "transcripts" / f"run_id={RUNS[0]}")], run_id="a", normalizer="english")
    b = build_run_report([str(out / "transcripts" / f"run_id={RUNS[1]}")], run_id="b", normalizer="english")
    assert a.table.drop_columns(["created_at"]).equals(b.table.drop_columns(["created_at"]))
    assert json.loads(Path(compacted_record(RunPaths(str(out), RUNS[1]))).read_text())["replaced"]
    cfg = TranscribeConfig(manifest=[str(m) for m in output["manifests"]], model=str(out.parent / "model"),
                           output=str(out))
    with pytest.raises(ValueError, match="was compacted"):
        run_in_process(cfg, RUNS[1])


def test_parts_of_an_older_schema_read_with_their_new_columns_null(tmp_path):
    """Schemas change only by adding columns: a part without a column added since (lm_score came in
    schema 4) reads beside new ones with the column null (DuckDB union_by_name; polars
    missing_columns='insert'), and every file says its schema version."""
    import duckdb
    import polars as pl

    from pipeline.output import parquet
    from pipeline.output.records import TranscriptRow, rows_to_table

    folder = tmp_path / "transcripts" / "run_id=mixed"
    new = rows_to_table([TranscriptRow(run_id="mixed", cut_id="new", status="ok", text="a", lm_score=-1.5)])
    parquet.write_part(str(folder / "part-a.parquet"), new, "fp")  # polars takes the first file's schema
    pq.write_table(new.drop_columns(["lm_score"]), folder / "part-b.parquet")
    assert pq.read_schema(folder / "part-a.parquet").metadata[b"zipscribe.schema_version"] == b"6"
    got = duckdb.connect().sql(f"SELECT cut_id, lm_score FROM read_parquet('{tmp_path}/transcripts/**/*.parquet', "
                               "hive_partitioning = 1, union_by_name = true) ORDER BY cut_id").fetchall()
    assert got == [("new", -1.5), ("new", None)] or got == [("new", None), ("new", -1.5)]
    frame = pl.scan_parquet(f"{tmp_path}/transcripts/**/*.parquet", hive_partitioning=True,
                            missing_columns="insert").select("cut_id", "lm_score").collect()
    assert sorted(frame["lm_score"].to_list(), key=lambda v: v is None) == [-1.5, None]
