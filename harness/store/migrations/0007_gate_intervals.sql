-- v7: a gate result stores the interval its verdict rests on and its test's p-value as numbers (they
-- were only in the message's sentence), so a CI history can be queried by them.
ALTER TABLE gate_results ADD COLUMN interval_low DOUBLE;
ALTER TABLE gate_results ADD COLUMN interval_high DOUBLE;
ALTER TABLE gate_results ADD COLUMN p_value DOUBLE;
