-- wrk script for duration-bound runs: prints wrk's own figures as one JSON line.
--   wrk ... -s summary.lua URL
function done(summary, latency, requests)
  io.write(string.format(
    'KITE_WRK {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"status_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"statuses":{}}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0), latency.max))
end
