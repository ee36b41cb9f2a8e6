-- KEYS: the channel's stream, its meta hash. ARGV: event name, JSON data, max length (0: no
-- limit), ttl in ms (0: none). Returns the new id.
return append_event(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
