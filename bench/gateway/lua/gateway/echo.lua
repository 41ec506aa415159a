-- The echo upstream: answers with a JSON description of the request it got
-- (method, raw target, path, query, args, headers in wire order, body), so
-- tests see exactly what the gateway sent upstream.
--
-- Request headers that steer the answer (they are echoed too):
--   x-echo-status: 201            the response status
--   x-echo-header: Name: value    a response header (repeatable)
--   x-echo-body: text             a plain-text body instead of the JSON
--   x-echo-chunked: 1             send the body chunked (no Content-Length)

local cjson = require("cjson")
local ext = require("gateway.ext")

local ngx = ngx
local str_find, str_match, str_sub = string.find, string.match, string.sub
local unescape_uri, encode_base64 = ngx.unescape_uri, ngx.encode_base64

local _M = {}

local function parse_args(query)
    local out = {}
    if not query then
        return out
    end
    for item in query:gmatch("[^&]+") do
        local eq = str_find(item, "=", 1, true)
        if eq then
            out[#out + 1] = { unescape_uri(str_sub(item, 1, eq - 1)), unescape_uri(str_sub(item, eq + 1)) }
        else
            out[#out + 1] = { unescape_uri(item), cjson.null }
        end
    end
    return out
end

local function raw_headers()
    local out = {}
    for line in ngx.req.raw_header(true):gmatch("[^\r\n]+") do
        local name, value = str_match(line, "^([^:]+):%s*(.-)%s*$")
        if name then
            out[#out + 1] = { name, value }
        end
    end
    return out
end

local function as_list(v)
    if v == nil then
        return {}
    end
    return type(v) == "table" and v or { v }
end

function _M.handle()
    local uri = ngx.var.request_uri
    local q = str_find(uri, "?", 1, true)
    local path, query = uri, nil
    if q then
        path, query = str_sub(uri, 1, q - 1), str_sub(uri, q + 1)
    end
    local body = ext.get_body()
    local ctl = ngx.req.get_headers(0)
    local out = ctl["x-echo-body"] or cjson.encode({
        method = ngx.req.get_method(),
        uri = uri,
        path = path,
        query = query or cjson.null,
        args = parse_args(query),
        headers = raw_headers(),
        body = body or cjson.null,
        body_b64 = body and encode_base64(body) or cjson.null,
    })
    ngx.status = tonumber(ctl["x-echo-status"]) or 200
    if not ctl["x-echo-body"] then
        ngx.header["Content-Type"] = "application/json"
    end
    for _, h in ipairs(as_list(ctl["x-echo-header"])) do
        local name, value = str_match(h, "^([^:]+):%s*(.*)$")
        if name then
            local cur = ngx.header[name]
            if cur == nil then
                ngx.header[name] = value
            else
                cur = type(cur) == "table" and cur or { cur }
                cur[#cur + 1] = value
                ngx.header[name] = cur
            end
        end
    end
    if not ctl["x-echo-chunked"] then
        ngx.header["Content-Length"] = #out
    end
    ngx.print(out)
end

return _M
