-- wrk script for POST /payments.  Arguments (after --):
--   write  <tag>               every request a fresh key: <tag>-<thread>-<n>
--   replay <prefix> <nkeys>    keys <prefix>1 .. <prefix><nkeys>, completed
--                              before the run, cycled through (each thread
--                              starts at its own offset)
-- The body is always the same.  done() prints one line for run.sh:
--   WRK requests=.. duration_us=.. status_errors=.. socket_errors=.. p50_us=.. ...
-- (status_errors: responses with a status >= 400; every request of both paths
-- expects 201.)

local threads = {}
local body = '{"amount": 500, "to": "acct_42"}'
local headers = { ["Content-Type"] = "application/json" }

function setup(thread)
	table.insert(threads, thread)
	thread:set("tid", #threads)
end

function init(args)
	mode = args[1] or "write"
	tag = args[2] or "w"
	nkeys = tonumber(args[3] or "1")
	counter = 0
	if mode == "replay" then
		-- spread the threads over the key set
		counter = ((tid - 1) * 7919) % nkeys
	end
end

function request()
	counter = counter + 1
	local key
	if mode == "replay" then
		key = tag .. ((counter % nkeys) + 1)
	else
		key = tag .. "-" .. tid .. "-" .. counter
	end
	headers["Idempotency-Key"] = key
	return wrk.format("POST", "/payments", headers, body)
end

function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		"WRK requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
		summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
		latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
