-- The gateway: routes from a JSON file (written by bench/gateway/rig.py from
-- the routes YAML), the three ext-plugin phases placed where APISIX runs them,
-- and native Lua plugins for the "Lua twin" routes.
--
--   rewrite phase: match the route, native Lua plugins, ext-plugin-pre-req
--   access phase:  ext-plugin-post-req, then either proxy_pass (nginx.conf) or,
--                  with ext-plugin-post-resp, request the upstream here and
--                  send the runner's version of its response (docs/protocol.md §7)

local cjson = require("cjson.safe")
local ext = require("gateway.ext")
local httpc = require("gateway.httpc")
local native = require("gateway.native")

local ngx = ngx
local ngx_var = ngx.var
local log, ERR = ngx.log, ngx.ERR
local escape_uri = ngx.escape_uri
local str_lower, str_sub = string.lower, string.sub

local _M = {}

local exact = {}     -- uri -> route
local prefixes = {}  -- {prefix, route}, longest first

local PHASES = { "ext-plugin-pre-req", "ext-plugin-post-req", "ext-plugin-post-resp" }

-- Request headers never forwarded as-is by the post-resp upstream request.
local HOP_BY_HOP = {
    ["connection"] = true, ["keep-alive"] = true, ["transfer-encoding"] = true,
    ["te"] = true, ["upgrade"] = true, ["content-length"] = true, ["host"] = true,
    ["proxy-connection"] = true, ["trailer"] = true,
}

local function read_file(path)
    local f, err = io.open(path, "rb")
    if not f then
        error("cannot read " .. path .. ": " .. err)
    end
    local data = f:read("*a")
    f:close()
    return data
end

local function load_route(r)
    local route = {
        id = r.id,
        upstream = r.upstream,            -- nginx upstream block name
        upstream_addr = r.upstream_addr,  -- host:port or unix:path (post-resp)
        key_prefix = "route#" .. r.id .. "#",
        lua = {},
    }
    for _, phase in ipairs(PHASES) do
        local p = r.plugins and r.plugins[phase]
        if p then
            local entries
            if type(p.conf) == "table" then
                entries = {}
                for i, c in ipairs(p.conf) do
                    entries[i] = { c.name, c.value }
                end
            end
            route[phase] = { entries = entries, allow_degradation = p.allow_degradation == true }
        end
    end
    for i, p in ipairs(r.lua or {}) do
        route.lua[i] = native.load(p.name, p.value)
    end
    return route
end

-- Called from init_by_lua with {routes = path, socket = runner socket}.
function _M.init(opts)
    local doc, err = cjson.decode(read_file(opts.routes))
    if not doc then
        error("bad routes file " .. opts.routes .. ": " .. err)
    end
    for _, r in ipairs(doc.routes) do
        local route = load_route(r)
        if str_sub(r.uri, -1) == "*" then
            prefixes[#prefixes + 1] = { str_sub(r.uri, 1, -2), route }
        else
            exact[r.uri] = route
        end
    end
    table.sort(prefixes, function(a, b) return #a[1] > #b[1] end)
    ext.configure({ socket = opts.socket, version = doc.version })
end

local function match(uri)
    local route = exact[uri]
    if route then
        return route
    end
    for _, p in ipairs(prefixes) do
        if str_sub(uri, 1, #p[1]) == p[1] then
            return p[2]
        end
    end
end

-- core.response.exit(code, body)
local function exit(code, body)
    ngx.status = code
    if body then
        ngx.print(body)
    end
    return ngx.exit(code)
end
_M.exit = exit

local function run_phase(ctx, phase, rpc_type)
    local conf = ctx.route[phase]
    if not conf then
        return
    end
    local code, body = ext.communicate(conf, ctx, phase, rpc_type)
    if code then
        return exit(code, body)
    end
end

function _M.rewrite()
    local route = match(ngx_var.uri)
    if not route then
        return exit(404, "no route\n")
    end
    local ctx = { route = route, vars = { route_id = route.id } }
    ngx.ctx.gw = ctx
    ngx_var.gw_upstream = route.upstream
    for _, plugin in ipairs(route.lua) do
        local code, body = plugin.run(plugin.conf, ctx)
        if code then
            return exit(code, body)
        end
    end
    return run_phase(ctx, "ext-plugin-pre-req", ext.RPC_HTTP_REQ_CALL)
end

local function post_resp(ctx, conf)
    local headers, n = {}, 0
    for name, value in pairs(ngx.req.get_headers(0, true)) do
        if not HOP_BY_HOP[str_lower(name)] then
            if type(value) == "table" then
                for _, v in ipairs(value) do
                    n = n + 1
                    headers[n] = { name, v }
                end
            else
                n = n + 1
                headers[n] = { name, value }
            end
        end
    end
    local body, err = ext.get_body()
    if err then
        log(ERR, "failed to read request body: ", err)
        return exit(502)
    end
    local res
    res, err = httpc.request(ctx.route.upstream_addr, ngx.req.get_method(), ngx_var.upstream_uri,
                             ngx_var.upstream_host, headers, body)
    if not res then
        log(ERR, "failed to request: ", err)
        return exit(502)
    end
    ctx.upstream_res = res
    local code, new_body = ext.communicate(conf, ctx, "ext-plugin-post-resp", ext.RPC_HTTP_RESP_CALL)
    if new_body then
        return exit(code, new_body)
    end
    -- the upstream's body, with the runner's status (or the upstream's)
    ngx.status = code or res.status
    ngx.print(res.body)
    return ngx.exit(ngx.HTTP_OK)
end

function _M.access()
    local ctx = ngx.ctx.gw
    run_phase(ctx, "ext-plugin-post-req", ext.RPC_HTTP_REQ_CALL)
    if ngx_var.upstream_uri == "" then
        local args = ngx_var.args
        ngx_var.upstream_uri = escape_uri(ngx_var.uri, 0) .. ((args and args ~= "") and "?" .. args or "")
    end
    local conf = ctx.route["ext-plugin-post-resp"]
    if conf then
        return post_resp(ctx, conf)
    end
end

return _M
