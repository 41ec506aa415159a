-- A minimal FlatBuffers builder and reader: just what the A6 messages need
-- (tables of u8/u16/u32 scalars, strings, byte vectors, vectors of tables,
-- union table offsets). No Lua flatbuffers library is packaged in Debian.
--
-- Wire format reminders (all little-endian):
--
--   buffer:  [u32 root uoffset] ...
--   table:   [i32 soffset to vtable: vtable = table - soffset] [fields...]
--   vtable:  [u16 vtable size] [u16 table size] [u16 field offset]*  (0 = absent)
--   string:  [u32 len] [bytes] [0]        vector: [u32 count] [elements]
--   uoffset: a u32 at position p points to p + value (always forward).
--
-- The builder writes back to front like the official ones: an "offset" is the
-- distance from the end of the buffer, so it stays valid while the buffer grows
-- at the front. Fields equal to their default are left out (as flatc does).

local ffi = require("ffi")
local bit = require("bit")

local band, rshift = bit.band, bit.rshift
local ffi_new, ffi_copy, ffi_string, ffi_cast = ffi.new, ffi.copy, ffi.string, ffi.cast
local error, setmetatable = error, setmetatable

assert(ffi.abi("le"), "gateway.fb assumes a little-endian host")

local u16p = ffi.typeof("uint16_t *")
local u32p = ffi.typeof("uint32_t *")
local cu8p = ffi.typeof("const uint8_t *")
local cu16p = ffi.typeof("const uint16_t *")
local cu32p = ffi.typeof("const uint32_t *")
local ci32p = ffi.typeof("const int32_t *")

local _M = {}

-- ------------------------------------------------------------------ builder

local Builder = {}
Builder.__index = Builder

function _M.builder(capacity)
    local cap = capacity or 1024
    return setmetatable({
        buf = ffi_new("uint8_t[?]", cap),
        cap = cap,
        head = cap,       -- data lives in buf[head .. cap-1]
        minalign = 1,
        vt = {},          -- slot -> offset of the field (0 = absent)
        nfields = 0,
        obj_end = 0,
    }, Builder)
end

function Builder:clear()
    self.head = self.cap
    self.minalign = 1
end

function Builder:offset()
    return self.cap - self.head
end

local function grow(self, needed)
    local used = self.cap - self.head
    local ncap = self.cap * 2
    while ncap - used < needed do
        ncap = ncap * 2
    end
    local nbuf = ffi_new("uint8_t[?]", ncap)
    ffi_copy(nbuf + (ncap - used), self.buf + self.head, used)
    self.buf, self.cap, self.head = nbuf, ncap, ncap - used
end

-- Make room for `additional` bytes followed by a value of `size` bytes so
-- that the value ends up aligned to `size`.
function Builder:prep(size, additional)
    if size > self.minalign then
        self.minalign = size
    end
    local pad = band(-(self.cap - self.head + additional), size - 1)
    if self.head < pad + size + additional then
        grow(self, pad + size + additional)
    end
    for _ = 1, pad do
        self.head = self.head - 1
        self.buf[self.head] = 0
    end
end

local function place_u8(self, v)
    self.head = self.head - 1
    self.buf[self.head] = v
end

local function place_u16(self, v)
    self.head = self.head - 2
    ffi_cast(u16p, self.buf + self.head)[0] = v
end

local function place_u32(self, v)
    self.head = self.head - 4
    ffi_cast(u32p, self.buf + self.head)[0] = v
end

function Builder:prepend_uoffset(off)
    self:prep(4, 0)
    place_u32(self, self.cap - self.head - off + 4)
end

-- A string: length-prefixed bytes plus a terminating NUL.
function Builder:create_string(s)
    local n = #s
    self:prep(4, n + 1)
    place_u8(self, 0)
    self.head = self.head - n
    ffi_copy(self.buf + self.head, s, n)
    place_u32(self, n)
    return self:offset()
end

-- A [ubyte] vector (no NUL).
function Builder:create_bytes(s)
    local n = #s
    self:prep(4, n)
    self.head = self.head - n
    ffi_copy(self.buf + self.head, s, n)
    place_u32(self, n)
    return self:offset()
end

-- A vector of offsets (tables or strings); offs[1..n] in order.
function Builder:create_offset_vector(offs, n)
    n = n or #offs
    self:prep(4, 4 * n)
    for i = n, 1, -1 do
        self:prepend_uoffset(offs[i])
    end
    place_u32(self, n)
    return self:offset()
end

function Builder:start_table(nfields)
    local vt = self.vt
    for i = 0, nfields - 1 do
        vt[i] = 0
    end
    self.nfields = nfields
    self.obj_end = self:offset()
end

function Builder:add_u8(slot, v, default)
    if v ~= nil and v ~= (default or 0) then
        self:prep(1, 0)
        place_u8(self, v)
        self.vt[slot] = self:offset()
    end
end

function Builder:add_u16(slot, v, default)
    if v ~= nil and v ~= (default or 0) then
        self:prep(2, 0)
        place_u16(self, v)
        self.vt[slot] = self:offset()
    end
end

function Builder:add_u32(slot, v, default)
    if v ~= nil and v ~= (default or 0) then
        self:prep(4, 0)
        place_u32(self, v)
        self.vt[slot] = self:offset()
    end
end

function Builder:add_offset(slot, off)
    if off then
        self:prepend_uoffset(off)
        self.vt[slot] = self:offset()
    end
end

function Builder:end_table()
    self:prep(4, 0)
    place_u32(self, 0)                      -- soffset, patched below
    local obj = self:offset()
    local vt = self.vt
    local n = self.nfields
    while n > 0 and vt[n - 1] == 0 do       -- trailing absent fields: no slot
        n = n - 1
    end
    self:prep(2, 2 * (n + 2))
    for i = n - 1, 0, -1 do
        local o = vt[i]
        place_u16(self, o ~= 0 and obj - o or 0)
    end
    place_u16(self, obj - self.obj_end)     -- table size
    place_u16(self, 2 * (n + 2))            -- vtable size
    ffi_cast(u32p, self.buf + (self.cap - obj))[0] = self:offset() - obj
    return obj
end

-- Finish with `root` as the root table and return the buffer as a string.
function Builder:finish(root)
    self:prep(self.minalign, 4)
    self:prepend_uoffset(root)
    return ffi_string(self.buf + self.head, self.cap - self.head)
end

-- ------------------------------------------------------------------ reader
--
-- Positions are 0-based byte offsets into the payload string. Every read is
-- bounds-checked, so a malformed payload raises a Lua error (callers pcall)
-- instead of reading outside the string.

local Reader = {}
Reader.__index = Reader

function _M.reader(s)
    return setmetatable({ s = s, p = ffi_cast(cu8p, s), n = #s }, Reader)
end

local function check(self, pos, size)
    if pos < 0 or pos + size > self.n then
        error("flatbuffer: read of " .. size .. " bytes at " .. pos
              .. " is outside the " .. self.n .. "-byte payload", 0)
    end
end

function Reader:u8(pos)
    check(self, pos, 1)
    return self.p[pos]
end

function Reader:u16(pos)
    check(self, pos, 2)
    return ffi_cast(cu16p, self.p + pos)[0]
end

function Reader:u32(pos)
    check(self, pos, 4)
    return ffi_cast(cu32p, self.p + pos)[0]
end

function Reader:i32(pos)
    check(self, pos, 4)
    return ffi_cast(ci32p, self.p + pos)[0]
end

function Reader:root()
    return self:u32(0)
end

-- Position of a table's field, or nil when the field is absent.
function Reader:field(tab, slot)
    local vt = tab - self:i32(tab)
    local vo = 4 + 2 * slot
    if vo >= self:u16(vt) then
        return nil
    end
    local o = self:u16(vt + vo)
    if o == 0 then
        return nil
    end
    return tab + o
end

function Reader:get_u8(tab, slot, default)
    local p = self:field(tab, slot)
    if p then return self:u8(p) end
    return default or 0
end

function Reader:get_u16(tab, slot, default)
    local p = self:field(tab, slot)
    if p then return self:u16(p) end
    return default or 0
end

function Reader:get_u32(tab, slot, default)
    local p = self:field(tab, slot)
    if p then return tonumber(self:u32(p)) end
    return default or 0
end

-- Follow a uoffset stored at position p.
function Reader:deref(p)
    return p + self:u32(p)
end

-- A string or [ubyte] field as a Lua string; nil when absent.
function Reader:get_string(tab, slot)
    local p = self:field(tab, slot)
    if not p then
        return nil
    end
    local s = self:deref(p)
    local len = self:u32(s)
    check(self, s + 4, len)
    return ffi_string(self.p + s + 4, len)
end

-- A table field (or union value): its position, nil when absent.
function Reader:get_table(tab, slot)
    local p = self:field(tab, slot)
    return p and self:deref(p)
end

-- A vector field: position of the first element and the count (nil, 0 when absent).
function Reader:get_vector(tab, slot)
    local p = self:field(tab, slot)
    if not p then
        return nil, 0
    end
    local v = self:deref(p)
    local n = self:u32(v)
    check(self, v + 4, 4 * n)
    return v + 4, n
end

return _M
