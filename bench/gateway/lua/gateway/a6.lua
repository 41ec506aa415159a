-- The A6 ext-plugin messages (runner/proto/ext-plugin.fbs, docs/protocol.md §2-§3)
-- on top of gateway.fb: the frame header, encoders for what APISIX sends and
-- decoders for what the runner answers.
--
-- Frame: [u8 type][u24 big-endian payload length][payload: one flatbuffer]
--
-- Text entries are Lua arrays {name, value}; a nil value means "no value" (an
-- arg without "=", or a deletion in a Rewrite).

local fb = require("gateway.fb")
local bit = require("bit")

local band, rshift = bit.band, bit.rshift
local str_byte, str_char = string.byte, string.char

local _M = {
    RPC_ERROR = 0,
    RPC_PREPARE_CONF = 1,
    RPC_HTTP_REQ_CALL = 2,
    RPC_EXTRA_INFO = 3,
    RPC_HTTP_RESP_CALL = 4,
    MAX_DATA_SIZE = 16777215,
}

_M.METHODS = {
    GET = 0, HEAD = 1, POST = 2, PUT = 3, DELETE = 4, MKCOL = 5, COPY = 6,
    MOVE = 7, OPTIONS = 8, PROPFIND = 9, PROPPATCH = 10, LOCK = 11,
    UNLOCK = 12, PATCH = 13, TRACE = 14,
}

_M.ERR_NAMES = {
    [0] = "bad request",
    [1] = "service unavailable",
    [2] = "conf token not found",
}

local ACTION_STOP, ACTION_REWRITE = 1, 2
local INFO_KINDS = { "var", "req_body", "resp_body" }

-- One builder per nginx worker, cleared before each message (as APISIX does).
local builder = fb.builder(4096)

-- ------------------------------------------------------------------ frames

function _M.frame_header(ty, len)
    return str_char(ty, band(rshift(len, 16), 255), band(rshift(len, 8), 255), band(len, 255))
end

-- Returns type, payload length.
function _M.parse_header(hdr)
    local ty, hi, mi, lo = str_byte(hdr, 1, 4)
    return ty, (hi * 256 + mi) * 256 + lo
end

-- ------------------------------------------------------------------ encoders

local function text_entries(b, entries)
    local offs = {}
    for i = 1, #entries do
        local e = entries[i]
        local name = b:create_string(e[1])
        local value = e[2] ~= nil and b:create_string(e[2]) or nil
        b:start_table(2)
        b:add_offset(0, name)
        b:add_offset(1, value)
        offs[i] = b:end_table()
    end
    return b:create_offset_vector(offs)
end

-- PrepareConf.Req{conf (0), key (1)}; `conf` nil leaves the field absent.
function _M.prepare_conf_req(key, conf)
    local b = builder
    b:clear()
    local key_off = b:create_string(key)
    local conf_vec = conf and text_entries(b, conf)
    b:start_table(2)
    b:add_offset(0, conf_vec)
    b:add_offset(1, key_off)
    return b:finish(b:end_table())
end

-- HTTPReqCall.Req{id (0), src_ip (1), method (2), path (3), args (4),
-- headers (5), conf_token (6)}: args and headers vectors are always present.
function _M.req_call_req(r)
    local method = _M.METHODS[r.method]
    if not method then
        return nil, "method " .. tostring(r.method) .. " is not in the A6.Method enum"
    end
    local b = builder
    b:clear()
    local path = b:create_string(r.path)
    local src_ip = b:create_bytes(r.src_ip or "")
    local args = text_entries(b, r.args or {})
    local headers = text_entries(b, r.headers or {})
    b:start_table(7)
    b:add_u32(0, r.id)
    b:add_offset(1, src_ip)
    b:add_offset(3, path)
    b:add_offset(4, args)
    b:add_offset(5, headers)
    b:add_u32(6, r.conf_token)
    b:add_u8(2, method)
    return b:finish(b:end_table())
end

-- HTTPRespCall.Req{id (0), status (1), headers (2), conf_token (3)}
function _M.resp_call_req(r)
    local b = builder
    b:clear()
    local headers = text_entries(b, r.headers or {})
    b:start_table(4)
    b:add_u32(0, r.id)
    b:add_offset(2, headers)
    b:add_u32(3, r.conf_token)
    b:add_u16(1, r.status)
    return b:finish(b:end_table())
end

-- ExtraInfo.Resp{result (0)}: nil leaves the result absent.
function _M.extra_info_resp(result)
    local b = builder
    b:clear()
    local vec = result ~= nil and b:create_bytes(result) or nil
    b:start_table(1)
    b:add_offset(0, vec)
    return b:finish(b:end_table())
end

-- ------------------------------------------------------------------ decoders
--
-- Each raises a Lua error on a malformed payload; call them through pcall.

local function read_entries(r, tab, slot)
    local out = {}
    local v, n = r:get_vector(tab, slot)
    for i = 0, n - 1 do
        local e = r:deref(v + 4 * i)
        out[i + 1] = { r:get_string(e, 0) or "", r:get_string(e, 1) }
    end
    return out
end

function _M.err_code(payload)
    local r = fb.reader(payload)
    return r:get_u8(r:root(), 0)
end

function _M.prepare_conf_resp(payload)
    local r = fb.reader(payload)
    return r:get_u32(r:root(), 0)
end

local function stop_action(r, t)
    return {
        status = r:get_u16(t, 0),
        headers = read_entries(r, t, 1),
        body = r:get_string(t, 2),
    }
end

local function rewrite_action(r, t)
    return {
        path = r:get_string(t, 0),
        headers = read_entries(r, t, 1),
        args = read_entries(r, t, 2),
        resp_headers = read_entries(r, t, 3),
        body = r:get_string(t, 4),
    }
end

-- HTTPReqCall.Resp{id (0), action_type (1), action (2)} ->
-- {id, action = nil | "stop" | "rewrite", stop = {...} | rewrite = {...}}
function _M.req_call_resp(payload)
    local r = fb.reader(payload)
    local root = r:root()
    local out = { id = r:get_u32(root, 0) }
    local ty = r:get_u8(root, 1)
    if ty == 0 then
        return out
    end
    local t = r:get_table(root, 2)
    if not t then
        error("action type " .. ty .. " without an action table", 0)
    end
    if ty == ACTION_STOP then
        out.action, out.stop = "stop", stop_action(r, t)
    elseif ty == ACTION_REWRITE then
        out.action, out.rewrite = "rewrite", rewrite_action(r, t)
    else
        error("unknown action type " .. ty, 0)
    end
    return out
end

-- HTTPRespCall.Resp{id (0), status (1), headers (2), body (3)}
function _M.resp_call_resp(payload)
    local r = fb.reader(payload)
    local root = r:root()
    return {
        id = r:get_u32(root, 0),
        status = r:get_u16(root, 1),
        headers = read_entries(r, root, 2),
        body = r:get_string(root, 3),
    }
end

-- ExtraInfo.Req{info_type (0), info (1)} -> kind, var name.
-- kind is "var", "req_body", "resp_body", or the number of an unknown type.
function _M.extra_info_req(payload)
    local r = fb.reader(payload)
    local root = r:root()
    local ty = r:get_u8(root, 0)
    local kind = INFO_KINDS[ty] or ty
    if kind ~= "var" then
        return kind
    end
    local t = r:get_table(root, 1)
    return kind, t and r:get_string(t, 0) or ""
end

return _M
