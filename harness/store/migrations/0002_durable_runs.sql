-- Migration 0002: runs carry their process and expected row count (incomplete runs are visible);
-- every run-owned row has a key so replaying a shard twice cannot duplicate it; shards ingested are
-- recorded; views for the common comparisons.

ALTER TABLE runs ADD COLUMN pid INTEGER;
ALTER TABLE runs ADD COLUMN host VARCHAR;
ALTER TABLE runs ADD COLUMN n_expected INTEGER;

-- Run-owned log rows get a per-run sequence number and a key (tables rebuilt: DuckDB cannot add a
-- key to a table updated in the same transaction).
CREATE TABLE step_logs_v2 (
    run_id VARCHAR, adapter_id VARCHAR, step INTEGER, epoch DOUBLE, loss DOUBLE, grad_norm DOUBLE,
    learning_rate DOUBLE, eval_loss DOUBLE, seq INTEGER,
    PRIMARY KEY (run_id, seq)
);
INSERT INTO step_logs_v2 SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY step) FROM step_logs;
DROP TABLE step_logs;
ALTER TABLE step_logs_v2 RENAME TO step_logs;

CREATE TABLE findings_v2 (
    run_id VARCHAR, adapter_id VARCHAR, kind VARCHAR, severity VARCHAR, step INTEGER, message VARCHAR, seq INTEGER,
    PRIMARY KEY (run_id, seq)
);
INSERT INTO findings_v2 SELECT *, row_number() OVER (PARTITION BY run_id) FROM findings;
DROP TABLE findings;
ALTER TABLE findings_v2 RENAME TO findings;

CREATE TABLE gate_results_v2 (
    run_id VARCHAR, gate VARCHAR, metric VARCHAR, observed DOUBLE, threshold DOUBLE, baseline DOUBLE,
    passed BOOLEAN, message VARCHAR, seq INTEGER,
    PRIMARY KEY (run_id, seq)
);
INSERT INTO gate_results_v2 SELECT *, row_number() OVER (PARTITION BY run_id) FROM gate_results;
DROP TABLE gate_results;
ALTER TABLE gate_results_v2 RENAME TO gate_results;

CREATE TABLE ingested_shards (shard VARCHAR PRIMARY KEY, run_id VARCHAR, n_rows BIGINT, ingested_at TIMESTAMP);

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
       count(*) AS n, count(value) AS n_scored, avg(value) AS mean
FROM v_scores
GROUP BY run_id, base_model_name, adapter_id, adapter_name, scale, suite_name, metric;

-- v_adapter_vs_base: adapter X vs its base model on suite Y, per scale, paired on the same examples
-- of the same run: SELECT * FROM v_adapter_vs_base WHERE adapter_name = 'X' AND suite_name = 'Y' ORDER BY scale
CREATE VIEW v_adapter_vs_base AS
SELECT a.run_id, a.adapter_id, a.adapter_name, a.scale, a.suite_name, a.metric,
       count(*) AS n_pairs, avg(a.value) AS adapter_mean, avg(b.value) AS base_mean,
       avg(a.value - b.value) AS mean_delta
FROM v_scores a
JOIN v_scores b ON b.run_id = a.run_id AND b.base_model_id = a.base_model_id AND b.adapter_id IS NULL
               AND b.suite_id = a.suite_id AND b.example_id = a.example_id AND b.metric = a.metric
WHERE a.adapter_id IS NOT NULL
GROUP BY a.run_id, a.adapter_id, a.adapter_name, a.scale, a.suite_name, a.metric;
