-- An APISIX-compatible ext-plugin client (docs/protocol.md §4-§9), written from the
-- spec: the same connection handling, token caching, retries and the same way
-- of applying Stop, Rewrite and HTTPRespCall answers as apisix/plugins/
-- ext-plugin/init.lua, so the runner can be tested and benchmarked against
-- what APISIX does with its replies.
--
-- Per request, `ctx` is the gateway's request context (gateway.lua):
--   ctx.route        the matched route (id, key prefix)
--   ctx.vars         extra variables answered to ExtraInfo Var (route_id)
--   ctx.upstream_res {status, headers, body} in the post-resp phase

local a6 = require("gateway.a6")
local lrucache = require("resty.lrucache")

local ngx = ngx
local ngx_var = ngx.var
local ngx_header = ngx.header
local req = ngx.req
local log, ERR, WARN, NOTICE = ngx.log, ngx.ERR, ngx.WARN, ngx.NOTICE
local str_find, str_lower, str_sub = string.find, string.lower, string.sub
local pairs, ipairs, pcall, tostring, type = pairs, ipairs, pcall, tostring, type
local escape_uri = ngx.escape_uri
local socket_tcp = ngx.socket.tcp

local RPC_ERROR = a6.RPC_ERROR
local RPC_PREPARE_CONF = a6.RPC_PREPARE_CONF
local RPC_HTTP_REQ_CALL = a6.RPC_HTTP_REQ_CALL
local RPC_EXTRA_INFO = a6.RPC_EXTRA_INFO
local RPC_HTTP_RESP_CALL = a6.RPC_HTTP_RESP_CALL
local MAX_DATA_SIZE = a6.MAX_DATA_SIZE

-- docs/protocol.md §4.2: token cache time 3600 s; shdict entries expire at 90 % of it.
local TOKEN_TTL = 3600
local LRU_ITEMS = 8                  -- APISIX's PLUGIN_ITEMS_COUNT
local LOCK_KEY = "lock:prepare_conf" -- the single global PrepareConf lock
local LOCK_WAIT, LOCK_EXPTIME = 5, 30

-- docs/protocol.md §5.4: resp_headers never touch these (init.lua L72-83).
local EXCLUDED_RESP_HEADERS = {
    ["connection"] = true, ["content-length"] = true,
    ["transfer-encoding"] = true, ["location"] = true, ["server"] = true,
    ["www-authenticate"] = true, ["content-encoding"] = true,
    ["content-type"] = true, ["content-location"] = true,
    ["content-language"] = true,
}

local _M = { EXCLUDED_RESP_HEADERS = EXCLUDED_RESP_HEADERS }

local sock_path      -- "unix:/path/to/runner.sock"
local conf_version   -- the routes file's version: part of every token key
local dict = ngx.shared["ext-plugin"]
local lru = lrucache.new(LRU_ITEMS)

function _M.configure(opts)
    sock_path = "unix:" .. opts.socket
    conf_version = opts.version or "1"
end

-- ------------------------------------------------------------------ framing

local function send(sock, ty, data)
    local len = #data
    if len > MAX_DATA_SIZE then
        return nil, "the max length of data is " .. MAX_DATA_SIZE .. " but got " .. len
    end
    return sock:send({ a6.frame_header(ty, len), data })
end

-- Returns type, payload; or nil, error message (type-0 frames become their
-- error text: "bad request", "service unavailable", "conf token not found").
local function receive(sock)
    local hdr, err = sock:receive(4)
    if not hdr then
        return nil, err
    end
    local ty, len = a6.parse_header(hdr)
    local payload
    if len > 0 then
        payload, err = sock:receive(len)
        if not payload then
            return nil, err == "closed" and "data truncated" or err
        end
    end
    if ty == RPC_ERROR then
        if not payload then
            return nil, "empty RPC_ERROR payload"
        end
        local ok, code = pcall(a6.err_code, payload)
        if not ok then
            return nil, "bad RPC_ERROR payload: " .. tostring(code)
        end
        return nil, a6.ERR_NAMES[code] or ("unknown err " .. code)
    end
    return ty, payload
end

-- docs/protocol.md §5.1: (worker id << 22) + a per-worker counter wrapping at 2^22.
local count = 0
local function generate_id()
    local id = (ngx.worker.id() or 0) * 4194304 + count
    count = count + 1
    if count == 4194304 then
        count = 0
    end
    return id
end

-- ------------------------------------------------------------------ helpers

-- core.request.get_body(): the whole body, from memory or the temp file; nil if none.
function _M.get_body()
    req.read_body()
    local body = req.get_body_data()
    if body then
        return body
    end
    local file = req.get_body_file()
    if not file then
        return nil
    end
    local f, err = io.open(file, "rb")
    if not f then
        return nil, err
    end
    body = f:read("*a")
    f:close()
    return body
end

local function get_var(ctx, name)
    local v = ctx.vars and ctx.vars[name]
    if v ~= nil then
        return v
    end
    local ok, val = pcall(function() return ngx_var[name] end)
    if ok then
        return val
    end
    return nil
end

-- Response headers: the first entry of a name replaces, later ones append
-- (core.response.set_header / add_header); a nil value removes.
local function apply_resp_headers(entries, lower, excluded)
    local seen = {}
    for i = 1, #entries do
        local name, value = entries[i][1], entries[i][2]
        if lower then
            name = str_lower(name)
        end
        local key = str_lower(name)
        if not (excluded and excluded[key]) then
            if not seen[key] or value == nil then
                ngx_header[name] = value
            else
                local cur = ngx_header[name]
                if type(cur) == "table" then
                    cur[#cur + 1] = value
                    ngx_header[name] = cur
                elseif cur ~= nil then
                    ngx_header[name] = { cur, value }
                else
                    ngx_header[name] = value
                end
            end
            seen[key] = true
        end
    end
end
_M.apply_resp_headers = apply_resp_headers

-- ------------------------------------------------------------------ token cache

local function flush_tokens()
    log(WARN, "flush conf token in shared dict")
    dict:flush_all()
end

local function recreate_lrucache()
    flush_tokens()
    log(WARN, "flush conf token lrucache")
    lru = lrucache.new(LRU_ITEMS)
end

local function lock()
    local wait, waited = 0.001, 0
    while true do
        local ok, err = dict:add(LOCK_KEY, true, LOCK_EXPTIME)
        if ok then
            return true
        end
        if err ~= "exists" then
            return nil, err
        end
        if waited >= LOCK_WAIT then
            return nil, "timeout"
        end
        ngx.sleep(wait)
        waited = waited + wait
        wait = wait * 2 < 0.1 and wait * 2 or 0.1
    end
end

local rpc_call

-- The second connection (docs/protocol.md §8.3): shdict, then the global lock, then PrepareConf.
local function prepare_conf(conf, ctx, sock, unique_key)
    local token = dict:get(unique_key)
    if token then
        return token
    end
    local ok, err = lock()
    if not ok then
        return nil, "failed to acquire the lock: " .. err
    end
    token = dict:get(unique_key)
    if not token then
        token, err = (function()
            local sent, serr = send(sock, RPC_PREPARE_CONF, a6.prepare_conf_req(unique_key, conf.entries))
            if not sent then
                return nil, "failed to send RPC_PREPARE_CONF: " .. serr
            end
            local ty, payload = receive(sock)
            if not ty then
                return nil, "failed to receive RPC_PREPARE_CONF: " .. payload
            end
            if ty ~= RPC_PREPARE_CONF then
                return nil, "failed to receive RPC_PREPARE_CONF: unexpected type " .. ty
            end
            local pok, t = pcall(a6.prepare_conf_resp, payload or "")
            if not pok then
                return nil, "failed to decode RPC_PREPARE_CONF: " .. tostring(t)
            end
            return t
        end)()
        if token then
            log(NOTICE, "successfully obtained conf token.")
            local sok, serr = dict:set(unique_key, token, TOKEN_TTL * 0.9)
            if not sok then
                log(ERR, "ext-plugin:failed to set conf token, err: ", serr)
            end
        end
    end
    dict:delete(LOCK_KEY)
    return token, err
end

-- Level 1 (per-worker LRU keyed by route and phase, versioned), then level 2.
local function get_token(conf, ctx, plugin_name)
    local key = ctx.route.key_prefix .. plugin_name
    local hit = lru:get(key)
    if hit and hit.version == conf_version then
        return hit.token
    end
    local token, err = rpc_call(RPC_PREPARE_CONF, conf, ctx, key .. "#" .. conf_version)
    if not token then
        return nil, err
    end
    lru:set(key, { token = token, version = conf_version }, TOKEN_TTL)
    return token
end

-- ------------------------------------------------------------------ ExtraInfo

local function handle_extra_info(ctx, payload)
    local ok, kind, name = pcall(a6.extra_info_req, payload or "")
    if not ok then
        return nil, "bad ExtraInfo request: " .. tostring(kind)
    end
    local res, err
    if kind == "var" then
        res = get_var(ctx, name)
    elseif kind == "req_body" then
        res, err = _M.get_body()
        if err then
            log(ERR, "failed to read request body: ", err)
        end
    elseif kind == "resp_body" then
        if ctx.upstream_res then
            res = ctx.upstream_res.body
        else
            log(ERR, "failed to read response body: not exits")
        end
    else
        return nil, "unsupported info type: " .. tostring(kind)
    end
    if res ~= nil then
        res = tostring(res)
    end
    return a6.extra_info_resp(res)
end

-- Send one call and serve ExtraInfo until the final frame; returns its payload.
local function exchange(ctx, sock, ty, name, payload)
    local ok, err = send(sock, ty, payload)
    if not ok then
        return nil, "failed to send " .. name .. ": " .. err
    end
    while true do
        local rty, resp = receive(sock)
        if not rty then
            return nil, "failed to receive " .. name .. ": " .. resp
        end
        if rty ~= RPC_EXTRA_INFO then
            if rty ~= ty then
                return nil, "failed to receive " .. name .. ": unexpected type " .. rty
            end
            return resp or ""
        end
        local out, herr = handle_extra_info(ctx, resp)
        if not out then
            return nil, "failed to handle RPC_EXTRA_INFO: " .. herr
        end
        ok, err = send(sock, RPC_EXTRA_INFO, out)
        if not ok then
            return nil, "failed to reply RPC_EXTRA_INFO: " .. err
        end
    end
end

-- ------------------------------------------------------------------ HTTPReqCall

-- docs/protocol.md §5.1: what APISIX puts into HTTPReqCall.Req.
local function build_req_call(token)
    local var = ngx_var
    local uri = var.upstream_uri
    if uri == "" then
        uri = var.uri
    else
        local idx = str_find(uri, "?", 1, true)
        if idx then
            req.set_uri_args(str_sub(uri, idx + 1))
            uri = str_sub(uri, 1, idx - 1)
        end
    end
    local args, n = {}, 0
    for k, v in pairs(req.get_uri_args(0)) do
        if type(v) == "table" then
            for _, item in ipairs(v) do
                n = n + 1
                args[n] = { k, item ~= true and item or nil }
            end
        else
            n = n + 1
            args[n] = { k, v ~= true and v or nil }
        end
    end
    local headers, upstream_host = {}, var.upstream_host
    n = 0
    -- APISIX reads them with core.request.headers(): ngx.req.get_headers() with
    -- its default cap of 100, dropping the rest unseen (docs/protocol.md §5.2).
    for k, v in pairs(req.get_headers()) do
        if type(v) == "table" then
            for _, item in ipairs(v) do
                n = n + 1
                headers[n] = { k, k == "host" and upstream_host or item }
            end
        else
            n = n + 1
            headers[n] = { k, k == "host" and upstream_host or v }
        end
    end
    return a6.req_call_req({
        id = generate_id(),
        src_ip = var.binary_remote_addr,
        method = req.get_method(),
        path = uri,
        args = args,
        headers = headers,
        conf_token = token,
    })
end

local function apply_stop(stop)
    apply_resp_headers(stop.headers, true, nil)
    local body = stop.body
    if body == "" then
        body = nil -- an empty body cannot be expressed (TODO in APISIX)
    end
    local code = stop.status
    if code == 0 then
        code = 200
    end
    return true, nil, code, body
end

-- docs/protocol.md §5.4, in APISIX's order: path, headers, body, resp_headers, args, upstream_uri.
local function apply_rewrite(ctx, rw)
    local var = ngx_var
    local path = rw.path
    if path then
        path = escape_uri(path, 0)
        var.upstream_uri = path
    end
    for _, e in ipairs(rw.headers) do
        local name, value = e[1], e[2]
        req.set_header(name, value)
        if str_lower(name) == "host" then
            var.upstream_host = value
        end
    end
    if rw.body and #rw.body > 0 then
        req.read_body()
        req.set_body_data(rw.body)
    end
    if #rw.resp_headers > 0 then
        apply_resp_headers(rw.resp_headers, true, EXCLUDED_RESP_HEADERS)
    end
    if #rw.args > 0 then
        local args, changed = req.get_uri_args(0), {}
        for _, e in ipairs(rw.args) do
            local name, value = e[1], e[2]
            if value == nil then
                args[name] = nil
            elseif changed[name] then
                local cur = args[name]
                if type(cur) == "table" then
                    cur[#cur + 1] = value
                else
                    args[name] = { cur, value }
                end
            else
                args[name] = value
                changed[name] = true
            end
        end
        req.set_uri_args(args)
    end
    if path then
        var.upstream_uri = path .. var.is_args .. (var.args or "")
    end
    return true
end

local function req_call(conf, ctx, sock, plugin_name)
    local token, err = get_token(conf, ctx, plugin_name)
    if not token then
        return nil, err
    end
    local payload
    payload, err = build_req_call(token)
    if not payload then
        return nil, "failed to build RPC_HTTP_REQ_CALL: " .. err
    end
    local resp
    resp, err = exchange(ctx, sock, RPC_HTTP_REQ_CALL, "RPC_HTTP_REQ_CALL", payload)
    if not resp then
        return nil, err
    end
    local ok, call = pcall(a6.req_call_resp, resp)
    if not ok then
        return nil, "failed to decode RPC_HTTP_REQ_CALL: " .. tostring(call)
    end
    if call.action == "stop" then
        return apply_stop(call.stop)
    elseif call.action == "rewrite" then
        ctx.rewritten = true
        return apply_rewrite(ctx, call.rewrite)
    end
    return true
end

-- ------------------------------------------------------------------ HTTPRespCall

-- docs/protocol.md §7.3: the runner's headers replace all of the upstream's when it sends any;
-- otherwise the upstream's are copied minus the excluded ones.
local function resp_call(conf, ctx, sock, plugin_name)
    local token, err = get_token(conf, ctx, plugin_name)
    if not token then
        return nil, err
    end
    local up = ctx.upstream_res
    local payload = a6.resp_call_req({
        id = generate_id(),
        status = up.status,
        headers = up.headers,
        conf_token = token,
    })
    local resp
    resp, err = exchange(ctx, sock, RPC_HTTP_RESP_CALL, "RPC_HTTP_RESP_CALL", payload)
    if not resp then
        return nil, err
    end
    local ok, call = pcall(a6.resp_call_resp, resp)
    if not ok then
        return nil, "failed to decode RPC_HTTP_RESP_CALL: " .. tostring(call)
    end
    if #call.headers > 0 then
        apply_resp_headers(call.headers, false, nil)
    else
        apply_resp_headers(up.headers, false, EXCLUDED_RESP_HEADERS)
    end
    local code = call.status ~= 0 and call.status or nil
    if call.body and #call.body > 0 then
        return true, nil, code or up.status, call.body
    end
    return true, nil, code
end

-- ------------------------------------------------------------------ calls

local handlers = {
    [RPC_PREPARE_CONF] = prepare_conf,
    [RPC_HTTP_REQ_CALL] = req_call,
    [RPC_HTTP_RESP_CALL] = resp_call,
}

-- docs/protocol.md §8.1-§8.2: a fresh cosocket per RPC (pooled by path), kept alive on success.
rpc_call = function(ty, conf, ctx, ...)
    local sock = socket_tcp()
    sock:settimeouts(1000, 60000, 60000)
    local ok, err = sock:connect(sock_path)
    if not ok then
        return nil, "failed to connect to the unix socket " .. sock_path .. ": " .. err
    end
    local res, code, body
    res, err, code, body = handlers[ty](conf, ctx, sock, ...)
    if not res then
        sock:close()
        return nil, err
    end
    ok, err = sock:setkeepalive(180 * 1000, 32)
    if not ok then
        log(ngx.INFO, "failed to setkeepalive: ", err)
    end
    return res, nil, code, body
end

-- docs/protocol.md §4.4, §9.2: up to 3 attempts; only "conf token not found" refreshes and retries.
-- Returns nothing (continue), or status[, body] to answer the client with.
function _M.communicate(conf, ctx, plugin_name, rpc_type)
    local ok, err, code, body
    for _ = 1, 3 do
        ok, err, code, body = rpc_call(rpc_type, conf, ctx, plugin_name)
        if ok then
            return code, body
        end
        if not str_find(err, "conf token not found", 1, true) then
            break
        end
        log(WARN, "refresh cache and try again")
        recreate_lrucache()
    end
    log(ERR, err)
    if conf.allow_degradation then
        log(WARN, "Plugin Runner is wrong, allow degradation")
        return
    end
    return 503
end

_M.RPC_HTTP_REQ_CALL = RPC_HTTP_REQ_CALL
_M.RPC_HTTP_RESP_CALL = RPC_HTTP_RESP_CALL

return _M
