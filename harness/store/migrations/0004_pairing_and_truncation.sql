-- v4: adapters are paired with their base on what identifies an example in the suite being evaluated
-- (suite name + example id, within one run), not on suite_id: a cached base row keeps the suite_id of
-- the suite version that produced it, so after a suite edit pairing on suite_id dropped most pairs.
-- Means and deltas are over the pairs where both sides were scored.
-- Truncation is recorded: an input field cut to the suite's max_chars, an output cut by max_new_tokens.
ALTER TABLE examples ADD COLUMN truncated VARCHAR;
ALTER TABLE generations ADD COLUMN truncated BOOLEAN;
CREATE OR REPLACE VIEW v_scores AS
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
CREATE OR REPLACE VIEW v_suite_summary AS
SELECT run_id, base_model_name, adapter_id, adapter_name, scale, suite_name, metric,
       count(*) AS n, count(value) AS n_scored, avg(value) AS mean,
       count(*) FILTER (WHERE output_truncated) AS n_truncated
FROM v_scores
GROUP BY run_id, base_model_name, adapter_id, adapter_name, scale, suite_name, metric;
CREATE OR REPLACE VIEW v_adapter_vs_base AS
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
