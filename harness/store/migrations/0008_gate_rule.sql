-- v8: a gate result stores the rule that decided it ("bound": the one-sided confidence bound cleared the
-- threshold; "point": the estimate alone; "skip": a release default the gates file opted out of, which is
-- shown but decides nothing) and the number of examples (or pairs) behind it.
ALTER TABLE gate_results ADD COLUMN rule VARCHAR;
ALTER TABLE gate_results ADD COLUMN n INTEGER;
