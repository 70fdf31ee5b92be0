-- zipscribe: Amazon Athena (Trino engine) tables over the Parquet outputs, and the queries of
-- docs/queries.sql in Trino SQL.
--
-- Replace s3://BUCKET/OUTPUT (the --output of jobs/transcribe.py / jobs/evaluate.py) and
-- s3://BUCKET/HISTORY (the --history of jobs/evaluate.py). Every table is a folder of run_id=<id>/
-- partitions; run_id is a partition key only (never a column of the files) and a string (run ids
-- start with a letter). No column name is a reserved word of Athena's DDL or DML.
--
-- Partitions: the run tables use partition projection of type 'injected': no crawler, no MSCK;
-- a query names its run (WHERE run_id = '...'), which is how these tables are queried. The history
-- is queried across runs, so it is a plain partitioned table: after each evaluation,
--   MSCK REPAIR TABLE zipscribe.wer_history;
-- (or ALTER TABLE zipscribe.wer_history ADD PARTITION (run_id = '...')).
-- Schemas change only by adding columns (each file says its version in the metadata key
-- zipscribe.schema_version): add them with ALTER TABLE ... ADD COLUMNS; older files read them as null.
-- Compacted runs (jobs/compact.py) read the same.

CREATE DATABASE IF NOT EXISTS zipscribe;

-- ddl: transcripts
CREATE EXTERNAL TABLE zipscribe.transcripts (
  cut_id string,
  recording_id string,
  source string,
  channel int,
  start_s double,
  duration double,
  text string,
  token_ids array<int>,
  token_times array<double>,
  token_confidences array<double>,
  ctc_score double,
  attention_score double,
  lm_score double,
  hotword_score double,
  hotwords_matched array<string>,
  biased_ref_words int,
  biased_errors int,
  unbiased_ref_words int,
  unbiased_errors int,
  confidence double,
  reference string,
  ref_words int,
  errors int,
  substitutions int,
  deletions int,
  insertions int,
  ref_norm string,
  hyp_norm string,
  word_edits array<struct<op:string,ref:string,hyp:string>>,
  speaker string,
  language string,
  dataset string,
  status string,
  error string,
  model_id string,
  model_sha256 string,
  decoding string,
  shard_id string,
  worker string,
  processed_at timestamp
)
PARTITIONED BY (run_id string)
STORED AS PARQUET
LOCATION 's3://BUCKET/OUTPUT/transcripts/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.run_id.type' = 'injected',
  'storage.location.template' = 's3://BUCKET/OUTPUT/transcripts/run_id=${run_id}/'
);

-- ddl: words
CREATE EXTERNAL TABLE zipscribe.words (
  cut_id string,
  recording_id string,
  channel int,
  speaker string,
  word_index int,
  word string,
  start_s double,
  end_s double,
  confidence double,
  decoding string
)
PARTITIONED BY (run_id string)
STORED AS PARQUET
LOCATION 's3://BUCKET/OUTPUT/words/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.run_id.type' = 'injected',
  'storage.location.template' = 's3://BUCKET/OUTPUT/words/run_id=${run_id}/'
);

-- ddl: wer_groups
CREATE EXTERNAL TABLE zipscribe.wer_groups (
  dataset string,
  decoding string,
  group_by string,
  group_value string,
  utterances bigint,
  scored bigint,
  failed bigint,
  no_reference bigint,
  empty_reference bigint,
  ref_words bigint,
  substitutions bigint,
  deletions bigint,
  insertions bigint,
  errors bigint,
  wer double,
  audio_seconds double,
  biased_ref_words bigint,
  biased_errors bigint,
  unbiased_ref_words bigint,
  unbiased_errors bigint,
  b_wer double,
  u_wer double,
  model_id string,
  model_sha256 string,
  normalizer string,
  created_at timestamp
)
PARTITIONED BY (run_id string)
STORED AS PARQUET
LOCATION 's3://BUCKET/OUTPUT/wer_groups/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.run_id.type' = 'injected',
  'storage.location.template' = 's3://BUCKET/OUTPUT/wer_groups/run_id=${run_id}/'
);

-- ddl: wer_errors
CREATE EXTERNAL TABLE zipscribe.wer_errors (
  dataset string,
  decoding string,
  kind string,
  ref_word string,
  hyp_word string,
  count bigint,
  correct bigint,
  ref_count bigint,
  hyp_count bigint,
  substituted bigint,
  substituted_in bigint,
  deleted bigint,
  inserted bigint
)
PARTITIONED BY (run_id string)
STORED AS PARQUET
LOCATION 's3://BUCKET/OUTPUT/wer_errors/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.run_id.type' = 'injected',
  'storage.location.template' = 's3://BUCKET/OUTPUT/wer_errors/run_id=${run_id}/'
);

-- ddl: wer_history
CREATE EXTERNAL TABLE zipscribe.wer_history (
  day date,
  created_at timestamp,
  transcripts_run_id string,
  dataset string,
  decoding string,
  normalizer string,
  model_id string,
  model_uri string,
  model_sha256 string,
  git_revision string,
  utterances bigint,
  scored bigint,
  failed bigint,
  no_reference bigint,
  empty_reference bigint,
  ref_words bigint,
  substitutions bigint,
  deletions bigint,
  insertions bigint,
  errors bigint,
  wer double,
  audio_seconds double,
  wall_seconds double,
  rtfx double,
  gate string,
  baseline_run_id string,
  delta_points double,
  gpu_hours double,
  node_hours double,
  cpu_core_hours double,
  cost_usd double,
  cost_per_audio_hour_usd double,
  rtfx_delta_pct double,
  b_wer double,
  u_wer double
)
PARTITIONED BY (run_id string)
STORED AS PARQUET
LOCATION 's3://BUCKET/HISTORY/wer_history/';

-- The queries (Trino SQL; :run_id, :pattern and :phrase are parameters of a prepared statement, or
-- write the values in place).

-- name: wer_per_dataset_over_time
SELECT day, created_at, run_id, dataset, decoding, round(100 * wer, 2) AS wer_pct, ref_words, failed, gate,
       delta_points, model_id, substr(model_sha256, 1, 12) AS model, git_revision, round(rtfx, 1) AS rtfx,
       round(gpu_hours, 4) AS gpu_hours, round(cost_per_audio_hour_usd, 4) AS usd_per_audio_hour
FROM zipscribe.wer_history
ORDER BY dataset, decoding, created_at;

-- name: latest_regressions
SELECT dataset, decoding, run_id, wer_pct, delta_points, baseline_run_id
FROM (SELECT dataset, decoding, run_id, round(100 * wer, 2) AS wer_pct, delta_points, baseline_run_id, gate,
             row_number() OVER (PARTITION BY dataset, decoding ORDER BY created_at DESC) AS latest
      FROM zipscribe.wer_history)
WHERE latest = 1 AND gate = 'fail'
ORDER BY dataset, decoding;

-- name: worst_speakers
SELECT dataset, decoding, group_value AS speaker, scored AS utterances, ref_words, substitutions, deletions,
       insertions, round(100 * wer, 2) AS wer_pct
FROM zipscribe.wer_groups
WHERE run_id = :run_id AND group_by = 'speaker' AND scored > 0 AND wer IS NOT NULL
ORDER BY wer DESC, ref_words DESC, group_value
LIMIT 20;

-- name: wer_by_duration
SELECT dataset, decoding, group_value AS duration_bucket, scored, ref_words, round(100 * wer, 2) AS wer_pct
FROM zipscribe.wer_groups
WHERE run_id = :run_id AND group_by = 'duration_bucket'
ORDER BY dataset, decoding, group_value;

-- name: transcripts_search
SELECT run_id, dataset, cut_id, speaker, reference, text, ref_norm, hyp_norm, ref_words, errors
FROM zipscribe.transcripts
WHERE run_id = :run_id AND (lower(text) LIKE lower(:pattern) OR lower(reference) LIKE lower(:pattern))
ORDER BY dataset, cut_id;

-- name: most_frequent_substitutions
SELECT dataset, decoding, ref_word, hyp_word, count
FROM zipscribe.wer_errors
WHERE run_id = :run_id AND kind = 'substitution'
ORDER BY dataset, decoding, count DESC, ref_word, hyp_word
LIMIT 50;

-- name: words_per_minute_per_speaker
WITH w AS (SELECT * FROM zipscribe.words WHERE run_id = :run_id),
     one AS (SELECT min(decoding) AS decoding FROM w),
     per_cut AS (SELECT speaker, cut_id, count(*) AS words, max(end_s) - min(start_s) AS seconds
                 FROM w WHERE decoding = (SELECT decoding FROM one) GROUP BY speaker, cut_id)
SELECT coalesce(speaker, '(none)') AS speaker, count(*) AS cuts, sum(words) AS words,
       round(sum(seconds), 2) AS speech_seconds, round(60 * sum(words) / nullif(sum(seconds), 0), 1) AS words_per_minute
FROM per_cut GROUP BY speaker
ORDER BY words_per_minute DESC NULLS LAST, speaker;
