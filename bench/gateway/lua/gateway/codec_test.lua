-- Test hook for the Lua A6 codec (location = /__gw/codec): the tests POST a
-- JSON command and compare the answer with the Python side.
--
--   {"op": "encode", "msg": "<encoder name in gateway.a6>", "args": {...}}
--       -> {"payload_b64": "..."}
--   {"op": "decode", "msg": "<decoder name>", "payload_b64": "..."}
--       -> the decoded message, or {"error": "..."} for a malformed payload
--   {"op": "header", "type": n, "len": n} -> {"header_b64": "...", "type": n, "len": n}
--
-- In JSON, byte strings travel as base64 and text entries as [name, value|null].

local cjson = require("cjson")
local a6 = require("gateway.a6")

local ngx = ngx
local null = cjson.null
local b64, unb64 = ngx.encode_base64, ngx.decode_base64

local _M = {}

local function entries_in(list)
    if list == nil or list == null then
        return nil
    end
    local out = {}
    for i, e in ipairs(list) do
        out[i] = { e[1], e[2] ~= null and e[2] or nil }
    end
    return out
end

local function entries_out(list)
    local out = {}
    for i, e in ipairs(list) do
        out[i] = { e[1], e[2] == nil and null or e[2] }
    end
    return out
end

local function bytes_out(s)
    return s == nil and null or b64(s)
end

local encoders = {
    prepare_conf_req = function(a)
        return a6.prepare_conf_req(a.key, entries_in(a.conf))
    end,
    req_call_req = function(a)
        return a6.req_call_req({
            id = a.id, conf_token = a.conf_token, method = a.method, path = a.path,
            src_ip = unb64(a.src_ip_b64), args = entries_in(a.args),
            headers = entries_in(a.headers),
        })
    end,
    resp_call_req = function(a)
        return a6.resp_call_req({
            id = a.id, status = a.status, headers = entries_in(a.headers),
            conf_token = a.conf_token,
        })
    end,
    extra_info_resp = function(a)
        return a6.extra_info_resp(a.result_b64 ~= null and unb64(a.result_b64) or nil)
    end,
}

local decoders = {
    err_code = function(p)
        return { code = a6.err_code(p) }
    end,
    prepare_conf_resp = function(p)
        return { conf_token = a6.prepare_conf_resp(p) }
    end,
    req_call_resp = function(p)
        local r = a6.req_call_resp(p)
        local out = { id = r.id, action = r.action or null }
        if r.stop then
            out.stop = {
                status = r.stop.status, headers = entries_out(r.stop.headers),
                body_b64 = bytes_out(r.stop.body),
            }
        elseif r.rewrite then
            local rw = r.rewrite
            out.rewrite = {
                path = rw.path or null, headers = entries_out(rw.headers),
                args = entries_out(rw.args), resp_headers = entries_out(rw.resp_headers),
                body_b64 = bytes_out(rw.body),
            }
        end
        return out
    end,
    resp_call_resp = function(p)
        local r = a6.resp_call_resp(p)
        return {
            id = r.id, status = r.status, headers = entries_out(r.headers),
            body_b64 = bytes_out(r.body),
        }
    end,
    extra_info_req = function(p)
        local kind, name = a6.extra_info_req(p)
        return { kind = kind, name = name or null }
    end,
}

local function run(cmd)
    if cmd.op == "encode" then
        local payload, err = encoders[cmd.msg](cmd.args)
        if not payload then
            return { error = err }
        end
        return { payload_b64 = b64(payload) }
    elseif cmd.op == "decode" then
        local ok, out = pcall(decoders[cmd.msg], unb64(cmd.payload_b64))
        if not ok then
            return { error = tostring(out) }
        end
        return out
    elseif cmd.op == "header" then
        local hdr = a6.frame_header(cmd.type, cmd.len)
        local ty, len = a6.parse_header(hdr)
        return { header_b64 = b64(hdr), type = ty, len = len }
    end
    return { error = "unknown op" }
end

function _M.handle()
    ngx.req.read_body()
    local cmd = cjson.decode(ngx.req.get_body_data())
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(run(cmd)))
end

return _M
