-- Shared by the scenario scripts (dofile'd): a realistic request and a done()
-- that prints one machine-readable line for bench/gateway/matrix.py:
--   WRK_JSON {"requests":..,"duration_us":..,"rps":..,"p50_us":..,"p99_us":..,"errors":..,"non2xx":..}
local M = {}

-- The request of bench/loadgen.py, roughly: a browser-ish header set.
M.headers = {
    ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    ["Accept"] = "application/json, text/plain, */*",
    ["Accept-Language"] = "en-US,en;q=0.9",
    ["Accept-Encoding"] = "gzip, deflate, br",
    ["Cookie"] = "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark",
    ["X-Request-Id"] = "2c1a4b1e-3f0d-4e0b-9a53-7b8e5b9a1c42",
    ["X-Forwarded-For"] = "203.0.113.7",
    ["X-Debug"] = "1",
}

function M.setup(extra)
    for k, v in pairs(M.headers) do
        wrk.headers[k] = v
    end
    for k, v in pairs(extra or {}) do
        wrk.headers[k] = v
    end
end

function M.done(summary, latency, requests)
    local e = summary.errors
    local us = summary.duration
    io.write(string.format(
        'WRK_JSON {"requests":%d,"duration_us":%d,"rps":%.1f,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\n',
        summary.requests, us, summary.requests / (us / 1e6),
        latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.timeout, e.status))
end

return M
