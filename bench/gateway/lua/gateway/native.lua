-- Native Lua twins of the bundled Python plugins, for the "Lua plugin" side of
-- the wrk comparison. Each does the same work as its Python twin (plugins/*.py),
-- in the same phase (rewrite, where ext-plugin-pre-req runs); the config is
-- parsed once, when the routes are loaded, as the runner does at PrepareConf.
--
-- A plugin is {conf = parsed config, run = function(conf, ctx)}; run returns
-- nothing to continue, or status, body to answer the client.

local cjson = require("cjson.safe")
local ffi = require("ffi")

local ngx = ngx
local req = ngx.req
local str_lower, str_sub, str_find, str_gsub, str_rep = string.lower, string.sub, string.find, string.gsub, string.rep
local decode_base64 = ngx.decode_base64
local type, pairs, ipairs, tonumber = type, pairs, ipairs, tonumber

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
]]

local _M = {}
local plugins = {}

-- ------------------------------------------------------------------ stop

plugins["stop"] = {
    parse = function(c)
        return { status = c.status or 200, headers = c.headers or {}, body = c.body or "" }
    end,
    run = function(conf)
        for name, value in pairs(conf.headers) do
            ngx.header[name] = value
        end
        return conf.status, conf.body ~= "" and conf.body or nil
    end,
}

-- ------------------------------------------------------------------ header-rewrite

plugins["header-rewrite"] = {
    parse = function(c)
        local add = {}
        for name, value in pairs(c.add_headers or {}) do
            add[#add + 1] = { name, value }
        end
        return { add = add, remove = c.remove_headers or {} }
    end,
    run = function(conf)
        for _, name in ipairs(conf.remove) do
            req.clear_header(name)
        end
        for _, h in ipairs(conf.add) do
            req.set_header(h[1], h[2])
        end
    end,
}

-- ------------------------------------------------------------------ jwt-auth (HS256)

local md = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")
local sha256 = ffi.C.EVP_sha256()

local function hmac_sha256(key, data)
    ffi.C.HMAC(sha256, key, #key, data, #data, md, md_len)
    return ffi.string(md, md_len[0])
end

local function b64url_decode(s)
    s = str_gsub(str_gsub(s, "-", "+"), "_", "/")
    local pad = #s % 4
    if pad == 1 then
        return nil
    end
    if pad > 0 then
        s = s .. str_rep("=", 4 - pad)
    end
    return decode_base64(s)
end

local function deny(body, challenge)
    ngx.header["Content-Type"] = "application/json"
    ngx.header["WWW-Authenticate"] = challenge
    return 401, body
end

local MISSING = '{"error":"missing token"}'
local MALFORMED_HEADER = '{"error":"invalid token","reason":"malformed bearer token"}'
local function invalid(reason)
    return deny('{"error":"invalid token","reason":"' .. reason .. '"}', 'Bearer error="invalid_token"')
end

-- The token's claims, or nil and the reason it is refused (as PyJWT words it).
local function verify(conf, token)
    local d1 = str_find(token, ".", 1, true)
    local d2 = d1 and str_find(token, ".", d1 + 1, true)
    if not d2 or str_find(token, ".", d2 + 1, true) then
        return nil, "malformed token"
    end
    local header = cjson.decode(b64url_decode(str_sub(token, 1, d1 - 1)) or "")
    local claims = cjson.decode(b64url_decode(str_sub(token, d1 + 1, d2 - 1)) or "")
    local sig = b64url_decode(str_sub(token, d2 + 1))
    if type(header) ~= "table" or type(claims) ~= "table" or not sig then
        return nil, "malformed token"
    end
    if header.alg ~= "HS256" then
        return nil, "algorithm not allowed"
    end
    if hmac_sha256(conf.secret, str_sub(token, 1, d2 - 1)) ~= sig then
        return nil, "signature verification failed"
    end
    local now = ngx.time()
    local exp, nbf, iat = claims.exp, claims.nbf, claims.iat
    if exp ~= nil and (type(exp) ~= "number" or exp <= now - conf.leeway) then
        return nil, "token expired"
    end
    if nbf ~= nil and (type(nbf) ~= "number" or nbf > now + conf.leeway) then
        return nil, "token not yet valid"
    end
    if iat ~= nil and type(iat) ~= "number" then
        return nil, "invalid iat claim"
    end
    return claims
end

plugins["jwt-auth"] = {
    parse = function(c)
        assert(c.algorithm == "HS256", "the Lua jwt-auth twin does HS256 only")
        return {
            secret = c.secret,
            header = c.header or "Authorization",
            claims_to_headers = c.claims_to_headers ~= false,
            leeway = c.leeway or 0,
        }
    end,
    run = function(conf)
        local headers = req.get_headers(0)
        for name in pairs(headers) do
            if str_sub(name, 1, 6) == "x-jwt-" then
                req.clear_header(name)
            end
        end
        local value = headers[str_lower(conf.header)]
        if type(value) == "table" then
            value = value[1]
        end
        if not value or value == "" then
            return deny(MISSING, "Bearer")
        end
        local scheme, token = value:match("^%s*(%S+) +(%S+)%s*$")
        if not scheme or str_lower(scheme) ~= "bearer" then
            return deny(MALFORMED_HEADER, 'Bearer error="invalid_token"')
        end
        local claims, reason = verify(conf, token)
        if not claims then
            return invalid(reason)
        end
        if conf.claims_to_headers then
            for name, v in pairs(claims) do
                if type(name) == "string" and name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
                    req.set_header("X-JWT-" .. name, type(v) == "string" and v or cjson.encode(v))
                end
            end
        end
    end,
}

-- ------------------------------------------------------------------ loading

-- name, value (the JSON config string) -> a ready plugin; errors on a bad config.
function _M.load(name, value)
    local p = plugins[name]
    if not p then
        error("no native Lua plugin named " .. tostring(name))
    end
    local c = value
    if type(value) == "string" then
        local err
        c, err = cjson.decode(value)
        if type(c) ~= "table" then
            error("bad config for Lua plugin " .. name .. ": " .. tostring(err))
        end
    end
    return { name = name, conf = p.parse(c), run = p.run }
end

return _M
