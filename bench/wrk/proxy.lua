-- wrk -t1 -c16 -d10s -s bench/wrk/proxy.lua http://127.0.0.1:PORT/py/proxy   (or /lua/...)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")
common.setup()
done = common.done
