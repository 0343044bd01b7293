"""What Redis holds for a cluster (its keys) and the Lua scripts that
change it atomically.

Per room ``<room>`` (``chatd.core.hub.DEFAULT_ROOM`` for now):

- ``chatd:stream:<room>``: the messages, a stream whose ids only
  :data:`PUBLISH` gives (``<n>-1``, ``n`` from ``chatd:seq:<room>``);
  capped with ``MAXLEN ~``, it is also the room's history.
- ``chatd:presence:<room>``: a short stream of who came and went.

For the whole cluster: ``chatd:name:<lower>`` (the node and the name as
given, ``<node>|<Name>``, set with ``NX`` and a short expiry that the
owning node's heartbeat refreshes), ``chatd:users`` (a sorted set of
lower-cased names by login sequence, from ``chatd:loginseq``).
"""

from __future__ import annotations

#: The sorted set of names by login sequence, and that sequence.
USERS_KEY = "chatd:users"
LOGIN_SEQ_KEY = "chatd:loginseq"


def stream_key(room: str) -> str:
    """The stream of ``room``'s messages (its history)."""
    return f"chatd:stream:{room}"


def seq_key(room: str) -> str:
    """The counter that gives ``room``'s message ids."""
    return f"chatd:seq:{room}"


def presence_key(room: str) -> str:
    """The stream of who came and went in ``room``."""
    return f"chatd:presence:{room}"


def name_key(lower: str) -> str:
    """The key that says which node holds a (lower-cased) name."""
    return f"chatd:name:{lower}"


# Shared by the scripts below (KEYS[1] the sequence, KEYS[2] the stream):
# entries beyond the sequence were not added by PUBLISH.  One with an id
# of PUBLISH's form (<n>-1, n of at most 15 digits) may have been
# delivered by readers already: the sequence moves past it.  Any other
# (a clock id, say) is deleted: no reader moves past it, and the
# stream's last id is set back to the sequence, so the next XADD fits.
REPAIR_FUNCTIONS = """
local function reset_last_id(stream, seq)
  if redis.call('EXISTS', stream) == 0 then return end
  local id = seq .. '-1'
  local done = redis.pcall('XSETID', stream, id)
  if type(done) == 'table' and done.err then
    redis.pcall('XSETID', stream, id, 'ENTRIESADDED', redis.call('XLEN', stream), 'MAXDELETEDID', id)
  end
end

local function repair(seq_key, stream, force)
  local seq = redis.call('GET', seq_key)
  if not seq or not string.match(seq, '^%d+$') or #seq > 15 then
    seq = '0'
    redis.call('SET', seq_key, seq)
  end
  local deleted = false
  for _ = 1, 1000 do
    local above = redis.call('XREVRANGE', stream, '+', '(' .. seq .. '-1', 'COUNT', 1)
    if #above == 0 then break end
    local id = above[1][1]
    local n = string.match(id, '^([1-9]%d*)%-1$')
    if n and #n <= 15 then
      seq = n
      redis.call('SET', seq_key, n)
    else
      redis.call('XDEL', stream, id)
      deleted = true
    end
  end
  if deleted or force then reset_last_id(stream, seq) end
  return seq
end
"""

# A batch of messages: ARGV[1] is the stream cap, then five fields per
# message (sender, text, timestamp, node, token), in order.  An XADD
# refused because something not ours lies beyond the sequence repairs
# the stream and tries once more, with the same id unless the repair
# moved the sequence; a sequence that is not a number is repaired first.
PUBLISH = REPAIR_FUNCTIONS + """
local seq = redis.call('GET', KEYS[1])
if seq and not (string.match(seq, '^%d+$') and #seq <= 15) then repair(KEYS[1], KEYS[2], true) end
local ids = {}
for i = 2, #ARGV, 5 do
  local fields = {'sender', ARGV[i], 'text', ARGV[i + 1], 'ts', ARGV[i + 2], 'node', ARGV[i + 3], 'token', ARGV[i + 4]}
  local id = redis.call('INCR', KEYS[1])
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', id), unpack(fields))
  if type(added) == 'table' and added.err then
    redis.call('SET', KEYS[1], string.format('%d', id - 1))
    repair(KEYS[1], KEYS[2], true)
    id = redis.call('INCR', KEYS[1])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', id), unpack(fields))
  end
  ids[#ids + 1] = id
end
return ids
"""

# The repair alone: returns the sequence (a string), every entry at or
# below "<sequence>-1" is final.
REPAIR = REPAIR_FUNCTIONS + """
return repair(KEYS[1], KEYS[2], false)
"""

# KEYS: the name key, the login sequence, the users set; ARGV: the value
# (<node>|<Name>), the expiry (ms), the lower-cased name.  Returns the
# login sequence, or 0 if the name is held.
CLAIM_NAME = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[3])
return seq
"""

# Refresh our names; re-take any that expired while we were away (and put
# them back in the login order, which `names` may have pruned meanwhile);
# return those another node took meanwhile.
# KEYS: the users set, then one name key per name; ARGV: the expiry, then
# (value, lower-cased name, login sequence) for each name.
REFRESH_NAMES = """
local lost = {}
for i = 2, #KEYS do
  local base = 2 + (i - 2) * 3
  local value = redis.call('GET', KEYS[i])
  if value == false or value == ARGV[base] then
    redis.call('SET', KEYS[i], ARGV[base], 'PX', ARGV[1])
    redis.call('ZADD', KEYS[1], 'NX', ARGV[base + 2], ARGV[base + 1])
  else
    table.insert(lost, ARGV[base + 1])
  end
end
return lost
"""

# KEYS: the name key, the users set; ARGV: our value, the lower-cased name.
RELEASE_NAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""
