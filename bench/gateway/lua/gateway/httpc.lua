-- A small HTTP/1.1 client on a cosocket, for the post-resp phase: APISIX
-- requests the upstream itself there (with lua-resty-http, not packaged in
-- Debian) and hands the runner the upstream's status and headers as received.
--
-- request(addr, method, target, host, headers, body) ->
--   {status = n, headers = {{name, value}, ...} (wire order and case), body = s}
-- or nil, error. addr is "unix:/path" or "host:port".

local ngx = ngx
local tonumber, concat = tonumber, table.concat
local str_lower, str_match = string.lower, string.match

local _M = {}

local function connect(addr)
    local sock = ngx.socket.tcp()
    sock:settimeouts(5000, 60000, 60000)
    local ok, err
    if addr:sub(1, 5) == "unix:" then
        ok, err = sock:connect(addr)
    else
        local host, port = str_match(addr, "^(.*):(%d+)$")
        ok, err = sock:connect(host, tonumber(port))
    end
    if not ok then
        return nil, err
    end
    return sock
end

local function read_chunked(sock)
    local parts = {}
    while true do
        local line, err = sock:receive("*l")
        if not line then
            return nil, err
        end
        local size = tonumber(str_match(line, "^%s*(%x+)"), 16)
        if not size then
            return nil, "bad chunk size line"
        end
        if size == 0 then
            repeat -- trailers
                line, err = sock:receive("*l")
                if not line then
                    return nil, err
                end
            until line == ""
            return concat(parts)
        end
        local data
        data, err = sock:receive(size)
        if not data then
            return nil, err
        end
        parts[#parts + 1] = data
        line, err = sock:receive(2)
        if not line then
            return nil, err
        end
    end
end

local function read_response(sock, method)
    local line, err = sock:receive("*l")
    if not line then
        return nil, err
    end
    local status = tonumber(str_match(line, "^HTTP/%d%.%d (%d%d%d)"))
    if not status then
        return nil, "bad status line"
    end
    local headers, length, chunked = {}, nil, false
    while true do
        line, err = sock:receive("*l")
        if not line then
            return nil, err
        end
        if line == "" then
            break
        end
        local name, value = str_match(line, "^([^:]+):%s*(.-)%s*$")
        if name then
            headers[#headers + 1] = { name, value }
            local lname = str_lower(name)
            if lname == "content-length" then
                length = tonumber(value)
            elseif lname == "transfer-encoding" and str_lower(value):find("chunked", 1, true) then
                chunked = true
            end
        end
    end
    local body
    if method == "HEAD" or status < 200 or status == 204 or status == 304 then
        body = ""
    elseif chunked then
        body, err = read_chunked(sock)
    elseif length then
        body, err = sock:receive(length)
    else
        body, err = sock:receive("*a")
    end
    if not body then
        return nil, "read response failed: " .. err
    end
    return { status = status, headers = headers, body = body }
end

function _M.request(addr, method, target, host, headers, body)
    local sock, err = connect(addr)
    if not sock then
        return nil, err
    end
    local out = { method, " ", target, " HTTP/1.1\r\nHost: ", host, "\r\n" }
    for i = 1, #headers do
        local h = headers[i]
        out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n"
    end
    if body then
        out[#out + 1] = "Content-Length: " .. #body .. "\r\n"
    end
    out[#out + 1] = "Connection: close\r\n\r\n"
    out[#out + 1] = body
    local ok
    ok, err = sock:send(out)
    if not ok then
        sock:close()
        return nil, err
    end
    local res
    res, err = read_response(sock, method)
    sock:close()
    return res, err
end

return _M
