-- POST a JSON body to PATH for USERS users (1: the single user "hot"), optionally with a fresh
-- Idempotency-Key per request; prints one JSON line of results when done.
-- Environment: PATH_ BODY (with {user} standing for the user id), USERS, TALLY_KEY, IDEMPOTENT,
-- DELAY_MS (pause between a connection's requests, for a fixed request rate).
local path = os.getenv("PATH_")
local template = os.getenv("BODY") or ""
local users = tonumber(os.getenv("USERS") or "1")
local idempotent = os.getenv("IDEMPOTENT") == "1"
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
local method = os.getenv("METHOD") or "POST"
local counter = 0
local salt = tostring(math.random(1, 2000000000)) .. tostring(os.time())

wrk.headers["Content-Type"] = "application/json"
if os.getenv("TALLY_KEY") then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TALLY_KEY")
end

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  counter = counter + 1
  local user = users == 1 and "hot" or ("u" .. math.random(1, users))
  local body = template:gsub("{user}", user)
  local headers = nil
  if idempotent then
    -- wrk.format uses the table given instead of wrk.headers, not on top of it.
    headers = {}
    for name, value in pairs(wrk.headers) do
      headers[name] = value
    end
    headers["Idempotency-Key"] = salt .. "-" .. counter .. "-" .. math.random(1, 2000000000)
  end
  local target = path:gsub("{user}", user)
  if method == "GET" then
    return wrk.format("GET", target, headers, nil)
  end
  return wrk.format(method, target, headers, body)
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d,'
      .. ' "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
