-- v6: generations are also keyed by what changes the output alone (base, adapter, scale, rendered
-- prompt, generation settings, dtype): gen_key. A result's cache_key adds the answer key and the
-- scorers, so a scorer change misses the result cache; the output is then found by gen_key and
-- re-scored without any model work, and the new scores are stored beside the old.
ALTER TABLE generations ADD COLUMN gen_key VARCHAR;
CREATE INDEX generations_gen_key ON generations (gen_key);
