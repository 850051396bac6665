-- The W3C trace context of the write that made each event (also inside the envelope), in a
-- column so the relay can continue the trace without parsing the envelope.
alter table outbox add column traceparent text;
