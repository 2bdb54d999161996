-- wrk script: POST pre-generated, pre-signed webhook bodies, each once, in file order.
-- Usage: wrk -tT ... -s wrk_webhook.lua http://127.0.0.1:PORT/ -- BODIES_FILE PATH T
-- BODIES_FILE holds one request per line: "<sha256 hex signature>\t<json body>".
-- Thread k of T sends lines k+1, k+1+T, ... so no two threads send the same line.
-- done() prints one line "BENCHJSON {...}" that bench/loadgen.py parses.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   -- wrk calls setup() then init() thread by thread, so the thread count comes as an argument.
   local file, path, nthreads = args[1], args[2] or "/", tonumber(args[3] or "1")
   reqs = {}
   local i, n = 0, 0
   for line in io.lines(file) do
      if i % nthreads == tid then
         local tab = line:find("\t", 1, true)
         local sig, body = line:sub(1, tab - 1), line:sub(tab + 1)
         n = n + 1
         reqs[n] = wrk.format("POST", path, {
            ["Content-Type"] = "application/json",
            ["X-Hub-Signature-256"] = "sha256=" .. sig,
         }, body)
      end
      i = i + 1
   end
   nreqs = n
   issued = 0
   wrapped = 0
   s2xx, s4xx, s5xx, sother = 0, 0, 0, 0
end

function request()
   issued = issued + 1
   local k = issued
   if k > nreqs then
      wrapped = wrapped + 1
      k = ((k - 1) % nreqs) + 1
   end
   return reqs[k]
end

function response(status, headers, body)
   if status >= 200 and status < 300 then s2xx = s2xx + 1
   elseif status >= 400 and status < 500 then s4xx = s4xx + 1
   elseif status >= 500 and status < 600 then s5xx = s5xx + 1
   else sother = sother + 1 end
end

function done(summary, latency, requests)
   local per = {}
   for _, t in ipairs(threads) do
      table.insert(per, string.format(
         '{"tid":%d,"issued":%d,"wrapped":%d,"nreqs":%d,"s2xx":%d,"s4xx":%d,"s5xx":%d,"sother":%d}',
         t:get("tid"), t:get("issued"), t:get("wrapped"), t:get("nreqs"),
         t:get("s2xx"), t:get("s4xx"), t:get("s5xx"), t:get("sother")))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},"threads":[%s]}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, table.concat(per, ",")))
end
