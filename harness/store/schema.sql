-- adapter-harness results store: the current schema (version 9), for reading.
-- The database is built by the numbered files in migrations/; a test checks that applying them to an
-- empty database gives exactly this schema. Long format: one row per generation, one per
-- (generation, metric) score. Open it yourself: duckdb harness.duckdb "SELECT * FROM v_runs"

-- Applied migrations; a database whose highest version exceeds the harness's is refused (exit 3).
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp);

-- One row per harness run (eval, demo, train), with its provenance and its expected result count.
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR, command VARCHAR, seed BIGINT, config JSON,
    git_commit VARCHAR, git_dirty BOOLEAN, packages JSON, device VARCHAR, python VARCHAR,
    started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    pid INTEGER, host VARCHAR, n_expected INTEGER
);
CREATE TABLE base_models (base_model_id VARCHAR PRIMARY KEY, name VARCHAR, path VARCHAR);
-- adapter_id is the SHA-256 of the adapter's weights and config; parent_adapter_id is its lineage.
CREATE TABLE adapters (
    adapter_id VARCHAR PRIMARY KEY, base_model_id VARCHAR, path VARCHAR, config JSON,
    parent_adapter_id VARCHAR, harness JSON, name VARCHAR
);
-- role: task | general | leakage | reference; directions: metric -> higher_is_better;
-- kind: generate | multiple_choice | loglikelihood (NULL: stored before v9, generate).
CREATE TABLE suites (
    suite_id VARCHAR PRIMARY KEY, name VARCHAR, version VARCHAR, path VARCHAR, n_examples INTEGER,
    role VARCHAR, headline VARCHAR, directions JSON, kind VARCHAR
);
CREATE TABLE examples (
    suite_id VARCHAR, example_id VARCHAR, input VARCHAR, target VARCHAR, category VARCHAR,
    truncated VARCHAR,
    PRIMARY KEY (suite_id, example_id)
);
-- One row per cache key: the output of (base, adapter, scale, prompt, settings, dtype, scorers).
CREATE TABLE generations (
    cache_key VARCHAR PRIMARY KEY, run_id VARCHAR, base_model_id VARCHAR, adapter_id VARCHAR, scale DOUBLE,
    suite_id VARCHAR, example_id VARCHAR, prompt VARCHAR, output VARCHAR, settings JSON,
    n_prompt_tokens INTEGER, n_new_tokens INTEGER, error VARCHAR, seconds DOUBLE,
    truncated BOOLEAN,
    -- what changes the output alone (no answer key, no scorers): a scorer change re-scores this output
    -- (a likelihood suite's row: output is the preferred choice, settings holds the per-choice logprobs)
    gen_key VARCHAR
);
CREATE INDEX generations_gen_key ON generations (gen_key);
-- Scores are finite or NULL with a reason: DuckDB sorts NaN above every number.
CREATE TABLE scores (
    cache_key VARCHAR, metric VARCHAR, value DOUBLE CHECK (value IS NULL OR isfinite(value)), reason VARCHAR,
    scorer VARCHAR, scorer_version VARCHAR,
    PRIMARY KEY (cache_key, metric)
);
-- Which results belong to which run (a run that reused cached rows still reports them).
CREATE TABLE run_results (run_id VARCHAR, cache_key VARCHAR, PRIMARY KEY (run_id, cache_key));
CREATE TABLE step_logs (
    run_id VARCHAR, adapter_id VARCHAR, step INTEGER, epoch DOUBLE, loss DOUBLE, grad_norm DOUBLE,
    learning_rate DOUBLE, eval_loss DOUBLE, seq INTEGER,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE findings (
    run_id VARCHAR, adapter_id VARCHAR, kind VARCHAR, severity VARCHAR, step INTEGER, message VARCHAR, seq INTEGER,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE gate_results (
    run_id VARCHAR, gate VARCHAR, metric VARCHAR, observed DOUBLE, threshold DOUBLE, baseline DOUBLE,
    passed BOOLEAN, message VARCHAR, seq INTEGER, interval_low DOUBLE, interval_high DOUBLE, p_value DOUBLE,
    rule VARCHAR, n INTEGER,
    PRIMARY KEY (run_id, seq)
);
-- Shard files already moved into the database (an ingest never happens twice).
CREATE TABLE ingested_shards (shard VARCHAR PRIMARY KEY, run_id VARCHAR, n_rows BIGINT, ingested_at TIMESTAMP);

-- v_scores: one row per run × model (adapter, scale) × suite × example × metric, names joined in.
CREATE VIEW v_scores AS
SELECT rr.run_id, g.base_model_id, b.name AS base_model_name, g.adapter_id, a.name AS adapter_name, g.scale,
       s.name AS suite_name, g.suite_id, g.example_id, e.input, e.target, e.category, g.output, g.error,
       sc.metric, sc.value, sc.reason, sc.scorer, sc.scorer_version,
       coalesce(g.truncated, false) AS output_truncated, e.truncated AS input_truncated
FROM run_results rr
JOIN generations g USING (cache_key)
JOIN scores sc USING (cache_key)
LEFT JOIN base_models b ON b.base_model_id = g.base_model_id
LEFT JOIN adapters a ON a.adapter_id = g.adapter_id
LEFT JOIN suites s ON s.suite_id = g.suite_id
LEFT JOIN examples e ON e.suite_id = g.suite_id AND e.example_id = g.example_id;

-- v_runs: one row per run with its completeness: every expected result present, or not (NULL: the
-- run declared no expected count, e.g. a training run).
CREATE VIEW v_runs AS
SELECT r.run_id, r.kind, r.status, r.command, r.started_at, r.finished_at, r.pid, r.host, r.n_expected,
       count(g.cache_key) AS n_results,
       count(g.cache_key) FILTER (WHERE g.error IS NOT NULL) AS n_errors,
       CASE WHEN r.n_expected IS NULL THEN NULL ELSE r.n_expected <> count(g.cache_key) END AS incomplete
FROM runs r
LEFT JOIN run_results rr ON rr.run_id = r.run_id
LEFT JOIN generations g ON g.cache_key = rr.cache_key
GROUP BY r.run_id, r.kind, r.status, r.command, r.started_at, r.finished_at, r.pid, r.host, r.n_expected;

-- v_suite_summary: mean of every metric per run × model (adapter, scale) × suite.
CREATE VIEW v_suite_summary AS
SELECT run_id, base_model_name, adapter_id, adapter_name, scale, suite_name, metric,
       count(*) AS n, count(value) AS n_scored, avg(value) AS mean,
       count(*) FILTER (WHERE output_truncated) AS n_truncated
FROM v_scores
GROUP BY run_id, base_model_name, adapter_id, adapter_name, scale, suite_name, metric;

-- v_adapter_vs_base: adapter X vs its base model on suite Y, per scale, paired on the same examples
-- (suite name + example id) of the same run; means and delta over the pairs where both were scored:
-- SELECT * FROM v_adapter_vs_base WHERE adapter_name = 'X' AND suite_name = 'Y' ORDER BY scale
CREATE VIEW v_adapter_vs_base AS
SELECT a.run_id, a.adapter_id, a.adapter_name, a.scale, a.suite_name, a.metric,
       count(*) FILTER (WHERE a.value IS NOT NULL AND b.value IS NOT NULL) AS n_pairs,
       avg(a.value) FILTER (WHERE b.value IS NOT NULL) AS adapter_mean,
       avg(b.value) FILTER (WHERE a.value IS NOT NULL) AS base_mean,
       avg(a.value - b.value) AS mean_delta
FROM v_scores a
JOIN v_scores b ON b.run_id = a.run_id AND b.base_model_id = a.base_model_id AND b.adapter_id IS NULL
               AND b.suite_name = a.suite_name AND b.example_id = a.example_id AND b.metric = a.metric
WHERE a.adapter_id IS NOT NULL
GROUP BY a.run_id, a.adapter_id, a.adapter_name, a.scale, a.suite_name, a.metric;
