-- v5: a suite says what it measures: its role (task, general, leakage, reference), its headline
-- metric and each metric's direction (JSON object metric -> higher_is_better). Retention, leakage,
-- reports and gates read these, never suite names.
ALTER TABLE suites ADD COLUMN role VARCHAR;
ALTER TABLE suites ADD COLUMN headline VARCHAR;
ALTER TABLE suites ADD COLUMN directions JSON;
