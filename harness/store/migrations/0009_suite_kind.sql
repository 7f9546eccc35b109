-- v9: a suite stores its kind: generate (answers scored as text), multiple_choice or loglikelihood (scored by
-- log-likelihood, no decoding). Retention of knowledge (likelihood) and of behaviour (generation) are told
-- apart by it. NULL (a suite stored before v9) reads as generate.
ALTER TABLE suites ADD COLUMN kind VARCHAR;
