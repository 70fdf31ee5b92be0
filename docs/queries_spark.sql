-- zipscribe: the queries of docs/queries.sql in Spark SQL (run by the test suite with pyspark on real outputs).
--
-- Every table is a folder of run_id=<id>/ partitions; Spark discovers the partitions itself (run ids start
-- with a letter, so run_id stays a string) and merges the schemas of files of older versions with
-- mergeSchema. Set the variables first (spark-sql, or spark.conf.set in pyspark), e.g.:
--   SET output=s3a://bucket/asr-out;          -- the --output of jobs/transcribe.py / jobs/evaluate.py
--   SET history=s3a://bucket/eval-history;    -- the --history of jobs/evaluate.py
--   SET run_id=eval-...;                      -- a run id (for evaluations: the evaluation's --run-id)
--   SET pattern=%fox%;                        -- an ILIKE pattern for the transcript search
--   SET phrase=array('quick', 'brown');       -- the words of a phrase for phrase_search
-- A table over a folder, for SQL without paths (the same for words, wer_groups, wer_errors, wer_history):
--   CREATE TABLE transcripts USING parquet OPTIONS (path '${output}/transcripts', mergeSchema 'true');
-- Each query starts with a "-- name: <name>" line.

-- name: wer_per_dataset_over_time
-- WER per dataset and decoding for every nightly evaluation, oldest first, with the gate's verdict.
SELECT day, created_at, run_id, dataset, decoding,
       round(100 * wer, 2) AS wer_pct, ref_words, failed, gate, delta_points,
       model_id, left(model_sha256, 12) AS model, git_revision, round(rtfx, 1) AS rtfx,
       round(gpu_hours, 4) AS gpu_hours, round(cost_per_audio_hour_usd, 4) AS usd_per_audio_hour
FROM parquet.`${history}/wer_history`
ORDER BY dataset, decoding, created_at;

-- name: latest_regressions
-- Datasets whose latest evaluation failed the regression gate.
SELECT dataset, decoding, run_id, wer_pct, delta_points, baseline_run_id
FROM (
    SELECT dataset, decoding, run_id, round(100 * wer, 2) AS wer_pct, delta_points, baseline_run_id, gate,
           row_number() OVER (PARTITION BY dataset, decoding ORDER BY created_at DESC) AS latest
    FROM parquet.`${history}/wer_history`
)
WHERE latest = 1 AND gate = 'fail'
ORDER BY dataset, decoding;

-- name: worst_speakers
-- The speakers with the highest WER in one run (at least 1 scored utterance), from the WER report.
SELECT dataset, decoding, group_value AS speaker, scored AS utterances, ref_words,
       substitutions, deletions, insertions, round(100 * wer, 2) AS wer_pct
FROM parquet.`${output}/wer_groups`
WHERE run_id = '${run_id}' AND group_by = 'speaker' AND scored > 0 AND wer IS NOT NULL
ORDER BY wer DESC, ref_words DESC, speaker
LIMIT 20;

-- name: wer_by_duration
-- WER per duration bucket (edges 2, 5, 10, 20 s) of one run.
SELECT dataset, decoding, group_value AS duration_bucket, scored, ref_words, round(100 * wer, 2) AS wer_pct
FROM parquet.`${output}/wer_groups`
WHERE run_id = '${run_id}' AND group_by = 'duration_bucket'
ORDER BY dataset, decoding, group_value;

-- name: transcripts_search
-- Cuts whose transcript or reference matches a pattern, with what was compared and the errors.
SELECT run_id, dataset, cut_id, speaker, reference, text, ref_norm, hyp_norm, ref_words, errors
FROM parquet.`${output}/transcripts`
WHERE text ILIKE '${pattern}' OR reference ILIKE '${pattern}'
ORDER BY run_id, dataset, cut_id;

-- name: most_frequent_substitutions
-- icefall-style top substitutions (ref -> hyp) of one run, per dataset.
SELECT dataset, decoding, ref_word, hyp_word, count
FROM parquet.`${output}/wer_errors`
WHERE run_id = '${run_id}' AND kind = 'substitution'
ORDER BY dataset, decoding, count DESC, ref_word, hyp_word
LIMIT 50;

-- name: phrase_search
-- Where a phrase was said, across a whole run (an evaluation's run id covers each of its sets'
-- transcription runs, <run id>.<set>): consecutive words of one cut (and decoding) that spell the
-- phrase (up to 17 words), with the times in the recording.
WITH w AS (
    SELECT run_id, decoding, recording_id, cut_id, word_index, start_s, end_s,
           collect_list(lower(word)) OVER (PARTITION BY run_id, decoding, cut_id ORDER BY word_index
                                           ROWS BETWEEN CURRENT ROW AND 16 FOLLOWING) AS next_words,
           collect_list(end_s) OVER (PARTITION BY run_id, decoding, cut_id ORDER BY word_index
                                     ROWS BETWEEN CURRENT ROW AND 16 FOLLOWING) AS next_ends
    FROM parquet.`${output}/words`
    WHERE run_id = '${run_id}' OR run_id LIKE '${run_id}.%'
)
SELECT run_id, decoding, recording_id, cut_id, word_index, start_s, next_ends[size(${phrase}) - 1] AS end_s
FROM w
WHERE slice(next_words, 1, size(${phrase})) = ${phrase}
ORDER BY decoding, recording_id, start_s;

-- name: words_per_minute_per_speaker
-- Speaking rate per speaker in one run: words over the seconds from each cut's first word's start
-- to its last word's end, summed over the speaker's cuts (one decoding: the first in name order).
WITH w AS (
    SELECT * FROM parquet.`${output}/words`
    WHERE run_id = '${run_id}' OR run_id LIKE '${run_id}.%'
), one AS (
    SELECT min(decoding) AS decoding FROM w
), per_cut AS (
    SELECT speaker, cut_id, count(*) AS words, max(end_s) - min(start_s) AS seconds
    FROM w WHERE decoding = (SELECT decoding FROM one) GROUP BY speaker, cut_id
)
SELECT coalesce(speaker, '(none)') AS speaker, count(*) AS cuts, sum(words) AS words,
       round(sum(seconds), 2) AS speech_seconds, round(60 * sum(words) / nullif(sum(seconds), 0), 1) AS words_per_minute
FROM per_cut GROUP BY speaker
ORDER BY words_per_minute DESC NULLS LAST, speaker;
