-- Migration 0001: the walking-skeleton schema (runs, models, suites, examples, generations, scores, logs).
-- Long format: one row per (generation) and one per (generation, metric) for scores.

CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp);

CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR, command VARCHAR, seed BIGINT, config JSON,
    git_commit VARCHAR, git_dirty BOOLEAN, packages JSON, device VARCHAR, python VARCHAR,
    started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR
);
CREATE TABLE base_models (base_model_id VARCHAR PRIMARY KEY, name VARCHAR, path VARCHAR);
CREATE TABLE adapters (
    adapter_id VARCHAR PRIMARY KEY, base_model_id VARCHAR, path VARCHAR, config JSON,
    parent_adapter_id VARCHAR, harness JSON, name VARCHAR
);
CREATE TABLE suites (suite_id VARCHAR PRIMARY KEY, name VARCHAR, version VARCHAR, path VARCHAR, n_examples INTEGER);
CREATE TABLE examples (
    suite_id VARCHAR, example_id VARCHAR, input VARCHAR, target VARCHAR, category VARCHAR,
    PRIMARY KEY (suite_id, example_id)
);
-- One row per cache key: the output of (base, adapter, scale, prompt, settings, dtype, scorers).
CREATE TABLE generations (
    cache_key VARCHAR PRIMARY KEY, run_id VARCHAR, base_model_id VARCHAR, adapter_id VARCHAR, scale DOUBLE,
    suite_id VARCHAR, example_id VARCHAR, prompt VARCHAR, output VARCHAR, settings JSON,
    n_prompt_tokens INTEGER, n_new_tokens INTEGER, error VARCHAR, seconds DOUBLE
);
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
    learning_rate DOUBLE, eval_loss DOUBLE
);
CREATE TABLE findings (run_id VARCHAR, adapter_id VARCHAR, kind VARCHAR, severity VARCHAR, step INTEGER, message VARCHAR);
CREATE TABLE gate_results (
    run_id VARCHAR, gate VARCHAR, metric VARCHAR, observed DOUBLE, threshold DOUBLE, baseline DOUBLE,
    passed BOOLEAN, message VARCHAR
);

-- v_scores: one row per run × model (adapter, scale) × suite × example × metric, names joined in.
CREATE VIEW v_scores AS
SELECT rr.run_id, g.base_model_id, b.name AS base_model_name, g.adapter_id, a.name AS adapter_name, g.scale,
       s.name AS suite_name, g.suite_id, g.example_id, e.input, e.target, e.category, g.output, g.error,
       sc.metric, sc.value, sc.reason, sc.scorer, sc.scorer_version
FROM run_results rr
JOIN generations g USING (cache_key)
JOIN scores sc USING (cache_key)
LEFT JOIN base_models b ON b.base_model_id = g.base_model_id
LEFT JOIN adapters a ON a.adapter_id = g.adapter_id
LEFT JOIN suites s ON s.suite_id = g.suite_id
LEFT JOIN examples e ON e.suite_id = g.suite_id AND e.example_id = g.example_id;
