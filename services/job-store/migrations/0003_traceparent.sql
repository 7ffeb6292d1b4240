-- The W3C trace context of the call that created the job: every later piece of
-- work on the job (each attempt's publish, lease, run and outcome) joins it.
ALTER TABLE jobs ADD COLUMN traceparent text;
