-- wrk script: each thread (one connection) sends requests cycling through a path list and
-- stops after a fixed number of responses, so the totals are exact (no request in flight
-- when wrk exits). A stopped thread appends a line to <marker>; wrk itself keeps sleeping
-- for its -d duration, so the caller sends SIGINT once every thread is done. done() prints
-- one JSON line with wrk's own figures.
--   wrk -t T -c T ... -s count.lua URL -- <responses per thread> <marker> <path> [<path> ...]
local threads = {}
local limit = 0
local marker = nil
local paths = {}
local sent = 0
responses = 0
statuses = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  limit = tonumber(args[1])
  marker = args[2]
  for i = 3, #args do
    paths[#paths + 1] = args[i]
  end
  if #paths == 0 then
    paths[1] = "/"
  end
end

function request()
  sent = sent + 1
  return wrk.format(nil, paths[(sent - 1) % #paths + 1])
end

function response(status, headers, body)
  responses = responses + 1
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if responses == limit then
    local f = io.open(marker, "a")
    f:write("done\n")
    f:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local parts = {}
  local total = {}
  for _, t in ipairs(threads) do
    local st = t:get("statuses")
    for k, v in pairs(st) do
      total[k] = (total[k] or 0) + v
    end
  end
  for k, v in pairs(total) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  -- Samples at or above twice wrk's coordinated-omission interval (one connection per
  -- thread): only those make wrk add corrected samples. Counted from the top, 200 at most.
  local over = 0
  if summary.requests > 0 and #threads > 0 then
    local interval = summary.duration / (summary.requests / #threads)
    for i = 1, 200 do
      local p = 100.0 - 100.0 * i / summary.requests
      if p <= 0 or latency:percentile(p) < 2 * interval then
        break
      end
      over = i
    end
  end
  io.write(string.format(
    'KITE_WRK {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"status_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"over_2x":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0), latency.max,
    over, table.concat(parts, ",")))
end
