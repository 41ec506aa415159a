-- wrk -t1 -c16 -d10s -s bench/wrk/jwt_auth.lua http://127.0.0.1:PORT/py/jwt-auth [-- TOKEN]
-- The default token is HS256-signed with the secret of bench/gateway/routes.yaml
-- ({"sub": "bench-user", "role": "reader"}, no expiry).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")
local TOKEN = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaC11c2VyIiwicm9sZSI6InJlYWRlciJ9.5YrbVZ8uloffv50wZXRJmxaVu9yX3zEB031kSq4NJ0I"
common.setup({ ["Authorization"] = "Bearer " .. TOKEN })

-- wrk calls init(args) before it formats the request
function init(args)
    if args[1] then
        wrk.headers["Authorization"] = "Bearer " .. args[1]
    end
end

done = common.done
