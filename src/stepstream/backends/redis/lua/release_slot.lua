--!df flags=allow-undeclared-keys
-- ARGV: P, id, key, position, what a waiting step waits for, batch. Gives the slot up and wakes
-- the longest-waiting waiter of the key whose step still waits (see `release_slot` in
-- runs.lua). Returns how many runs it woke (0 or 1).
return release_slot(ARGV[3], ARGV[2] .. '|' .. ARGV[4], '"waiting_for":' .. cjson.encode(ARGV[5]),
  tonumber(ARGV[6]))
