/* The compiled build's writer of [TextEntry] vectors: header and arg changes
 * of a Rewrite, the headers of a Stop and of a post-resp answer.
 *
 * runner/proto/fb.py has the same function in Python (`text_vector`), which
 * the pure build runs. Compiled with mypyc, that one costs ~2,000 instructions
 * per entry (an encode() and a bytes object per string, boxed offsets, a
 * writer call per field); this is one pass to size the vector and one to
 * write it, reading each str's UTF-8 in place. Both return the same bytes and
 * raise the same errors (tests/proto/test_fb.py runs them side by side).
 *
 * Layout (all little-endian, as fb.text_vector documents it):
 *
 *     count | off[0..n) | entry 0 | entry 1 ...
 *     entry = soffset, name off, [value off], name string, [value string]
 *     string = length, bytes, NUL, padding to 4
 *
 * Every entry points at one of two vtables that lie earlier in the frame, at
 * `vtables` (name and value) and `vtables + 8` (name only).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A string's bytes: its UTF-8 in place, or (surrogate escapes: bytes that
 * were not UTF-8 when they arrived) a bytes object holding them again. */
typedef struct {
    const char *data;
    Py_ssize_t len;
    PyObject *owner; /* NULL, or the bytes object to release */
} text;

static inline int
text_of(PyObject *s, text *out)
{
    out->owner = NULL;
    if (PyUnicode_CheckExact(s) && PyUnicode_IS_COMPACT_ASCII(s)) {
        /* The usual name or value: its characters are its UTF-8. */
        out->data = (const char *)PyUnicode_DATA(s);
        out->len = PyUnicode_GET_LENGTH(s);
        return 0;
    }
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "header and arg names and values are str, not %.100s",
                     Py_TYPE(s)->tp_name);
        return -1;
    }
    out->data = PyUnicode_AsUTF8AndSize(s, &out->len);
    if (out->data != NULL) {
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        return -1;
    }
    PyErr_Clear();
    PyObject *raw = PyUnicode_AsEncodedString(s, "utf-8", "surrogateescape");
    if (raw == NULL) {
        return -1;
    }
    out->owner = raw;
    out->data = PyBytes_AS_STRING(raw);
    out->len = PyBytes_GET_SIZE(raw);
    return 0;
}

/* Length, bytes, NUL and padding to 4: 8 + len - len % 4 bytes. */
static inline Py_ssize_t
string_size(Py_ssize_t len)
{
    return 8 + len - (len & 3);
}

/* The (name, value) of pairs[i]; value NULL for None. */
static int
entry_of(PyObject *pair, PyObject **name, PyObject **value)
{
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_Format(PyExc_TypeError, "a text entry is a (name, value) tuple, not %.100s",
                     Py_TYPE(pair)->tp_name);
        return -1;
    }
    *name = PyTuple_GET_ITEM(pair, 0);
    *value = PyTuple_GET_ITEM(pair, 1);
    if (*value == Py_None) {
        *value = NULL;
    }
    return 0;
}

static inline void
put_u32(unsigned char *at, Py_ssize_t value)
{
    uint32_t v = (uint32_t)value;
    at[0] = (unsigned char)v;
    at[1] = (unsigned char)(v >> 8);
    at[2] = (unsigned char)(v >> 16);
    at[3] = (unsigned char)(v >> 24);
}

/* Length, bytes, NUL and padding: the last 4-byte word is zeroed first and
 * the bytes copied over its start, which leaves the NUL and the padding. */
static inline unsigned char *
put_string(unsigned char *at, const text *t)
{
    put_u32(at, t->len);
    put_u32(at + 4 + (t->len & ~(Py_ssize_t)3), 0);
    memcpy(at + 4, t->data, (size_t)t->len);
    return at + string_size(t->len);
}

/* A vector being sized (base NULL: count and size add up) or written. */
typedef struct {
    unsigned char *base;
    unsigned char *at;      /* the next entry */
    Py_ssize_t count;       /* entries so far */
    Py_ssize_t room;        /* entries the offsets have room for (writing) */
    Py_ssize_t size;        /* bytes so far (sizing) or in all (writing) */
    Py_ssize_t start;       /* where the vector starts in the frame */
    Py_ssize_t vtables;     /* where the two TextEntry vtables lie in the frame */
} vec;

/* An entry's value: none (the entry removes the name), one str (None: an
 * empty one), or the str items of a list joined with ", " (None items left
 * out: RFC 9110 §5.3's way of folding a repeated header into one). */
enum { NO_VALUE, ONE_VALUE, JOINED_VALUE };

/* An entry's value: its length in *len and, unless `at` is NULL (sizing),
 * its bytes written at `at`. One walk for both, so they cannot disagree. */
static inline int
value_text(int kind, PyObject *value, unsigned char *at, Py_ssize_t *len)
{
    *len = 0;
    Py_ssize_t n = kind == ONE_VALUE ? 1 : PyList_GET_SIZE(value), parts = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = kind == ONE_VALUE ? value : PyList_GET_ITEM(value, i);
        if (item == Py_None) {
            continue; /* one None is an empty value; in a list, it is left out */
        }
        text t;
        if (text_of(item, &t) < 0) {
            return -1;
        }
        if (parts++) {
            if (at != NULL) {
                memcpy(at + *len, ", ", 2);
            }
            *len += 2;
        }
        if (at != NULL) {
            memcpy(at + *len, t.data, (size_t)t.len);
        }
        *len += t.len;
        Py_XDECREF(t.owner);
    }
    return 0;
}

static int
changed_under_us(void)
{
    PyErr_SetString(PyExc_RuntimeError, "text vector: an entry changed while it was written");
    return -1;
}

/* One entry: sized, or written at v->at with its slot in the offsets. */
static int
emit(vec *v, PyObject *name, int kind, PyObject *value)
{
    text n;
    Py_ssize_t vlen = 0;
    if (text_of(name, &n) < 0) {
        return -1;
    }
    if (kind != NO_VALUE && value_text(kind, value, NULL, &vlen) < 0) {
        Py_XDECREF(n.owner);
        return -1;
    }
    Py_ssize_t size = kind == NO_VALUE ? 8 + string_size(n.len)
                                       : 12 + string_size(n.len) + string_size(vlen);
    if (v->base == NULL) {
        Py_XDECREF(n.owner);
        if (v->size > PY_SSIZE_T_MAX / 2 - size) {
            PyErr_NoMemory();
            return -1;
        }
        v->count++;
        v->size += size;
        return 0;
    }
    unsigned char *at = v->at;
    if (v->count >= v->room || (at - v->base) + size > v->size) {
        Py_XDECREF(n.owner);
        return changed_under_us();
    }
    unsigned char *slot = v->base + 4 + 4 * v->count++;
    put_u32(slot, at - slot);
    Py_ssize_t pos = v->start + (at - v->base); /* the entry, counted from the frame's start */
    if (kind == NO_VALUE) {
        put_u32(at, pos - (v->vtables + 8)); /* soffset: the name-only vtable lies before */
        put_u32(at + 4, 4);                  /* the name, right after this slot */
        v->at = put_string(at + 8, &n);
        Py_XDECREF(n.owner);
        return 0;
    }
    put_u32(at, pos - v->vtables);
    put_u32(at + 4, 8);                        /* the name, after this slot and the value's */
    put_u32(at + 8, 4 + string_size(n.len));   /* the value, after the name */
    at = put_string(at + 12, &n);
    Py_XDECREF(n.owner);
    put_u32(at, vlen);
    put_u32(at + 4 + (vlen & ~(Py_ssize_t)3), 0); /* NUL and padding, as put_string */
    Py_ssize_t written;
    if (value_text(kind, value, at + 4, &written) < 0) {
        return -1;
    }
    if (written != vlen) {
        return changed_under_us();
    }
    v->at = at + string_size(vlen);
    return 0;
}

/* The entries of a list of (name, value) pairs. */
static int
emit_pairs(vec *v, PyObject *pairs)
{
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(pairs); i++) {
        PyObject *name, *value;
        if (entry_of(PyList_GET_ITEM(pairs, i), &name, &value) < 0 ||
            emit(v, name, value == NULL ? NO_VALUE : ONE_VALUE, value) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The entries of a change map (name -> its values now, or None: removed):
 * one per name, its values joined (headers), or one per value (args). */
static int
emit_changes(vec *v, PyObject *changes, int join)
{
    Py_ssize_t i = 0;
    PyObject *name, *values;
    while (PyDict_Next(changes, &i, &name, &values)) {
        if (values == Py_None) {
            if (emit(v, name, NO_VALUE, NULL) < 0) {
                return -1;
            }
            continue;
        }
        if (!PyList_Check(values)) {
            PyErr_Format(PyExc_TypeError, "a change is a list of values or None, not %.100s",
                         Py_TYPE(values)->tp_name);
            return -1;
        }
        if (join) {
            if (emit(v, name, JOINED_VALUE, values) < 0) {
                return -1;
            }
            continue;
        }
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(values); k++) {
            if (emit(v, name, ONE_VALUE, PyList_GET_ITEM(values, k)) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

static int
emit_all(vec *v, PyObject *source, int join)
{
    return join < 0 ? emit_pairs(v, source) : emit_changes(v, source, join);
}

/* The size of a vector (count, offsets and entries): `source` is a list of
 * pairs (join < 0) or a change map. */
static int
vec_size(PyObject *source, int join, Py_ssize_t *count, Py_ssize_t *size)
{
    vec v = {NULL, NULL, 0, 0, 0, 0, 0};
    if (emit_all(&v, source, join) < 0) {
        return -1;
    }
    *count = v.count;
    *size = 4 + 4 * v.count + v.size;
    return 0;
}

/* Write the vector vec_size() sized into base[0:size], which lies at
 * `start` of the frame. The writing pass reads the same strs again; a str
 * keeps its UTF-8 once asked for it, so nothing is encoded twice (but
 * strings with surrogate escapes). Only code of a str subclass could change
 * what was sized, and then this fails rather than write past the end. */
static int
vec_write(PyObject *source, int join, unsigned char *base, Py_ssize_t count, Py_ssize_t size,
          Py_ssize_t start, Py_ssize_t vtables)
{
    vec v = {base, base + 4 + 4 * count, 0, count, size, start, vtables};
    put_u32(base, count);
    if (emit_all(&v, source, join) < 0) {
        return -1;
    }
    if (v.count != count || v.at - v.base != size) {
        return changed_under_us();
    }
    return 0;
}

static PyObject *
build(PyObject *source, int join, Py_ssize_t start, Py_ssize_t vtables)
{
    Py_ssize_t count, size;
    if (vec_size(source, join, &count, &size) < 0) {
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) {
        return NULL;
    }
    if (vec_write(source, join, (unsigned char *)PyBytes_AS_STRING(out), count, size, start,
                  vtables) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static int
positions(PyObject *const *args, Py_ssize_t *start, Py_ssize_t *vtables)
{
    *start = PyLong_AsSsize_t(args[0]);
    if (*start == -1 && PyErr_Occurred()) {
        return -1;
    }
    *vtables = PyLong_AsSsize_t(args[1]);
    if (*vtables == -1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

/* text_vector(pairs: list[tuple[str, str | None]], start: int, vtables: int) -> bytes
 *
 * The vector's bytes, for a frame in which it starts at `start` (4-aligned)
 * and the two TextEntry vtables lie at `vtables`. */
static PyObject *
text_vector(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start, vtables;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "text_vector() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyList_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "text_vector() argument 1 must be list, not %.100s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    if (positions(args + 1, &start, &vtables) < 0) {
        return NULL;
    }
    return build(args[0], -1, start, vtables);
}

/* changes_vector(changes: dict[str, list[str | None] | None], join: bool,
 *                start: int, vtables: int) -> bytes
 *
 * text_vector(fb.change_entries(changes, join), start, vtables), without
 * the list of pairs in between. */
static PyObject *
changes_vector(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start, vtables;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "changes_vector() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyDict_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "changes_vector() argument 1 must be dict, not %.100s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    int join = PyObject_IsTrue(args[1]);
    if (join < 0 || positions(args + 2, &start, &vtables) < 0) {
        return NULL;
    }
    return build(args[0], join, start, vtables);
}

/* A Rewrite's header or arg field: a list of pairs (-1) or a change map
 * (`join`); `*present` when it has anything to write. */
static int
field_kind(PyObject *field, int join, int *kind, int *present)
{
    if (PyList_Check(field)) {
        *kind = -1;
        *present = PyList_GET_SIZE(field) > 0;
        return 0;
    }
    if (PyDict_Check(field)) {
        *kind = join;
        *present = PyDict_GET_SIZE(field) > 0;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "a text field is a list or a dict, not %.100s",
                 Py_TYPE(field)->tp_name);
    return -1;
}

#define FIELDS 3 /* headers, args, resp_headers */

/* rewrite_frame(head: bytes, tail: bytes, vtables: bytes, rpc_type: int, req_id: int,
 *               path: str | None, headers: list | dict, args: list | dict,
 *               resp_headers: list, body: bytes | None) -> bytes
 *
 * messages.build_req_call_rewrite's whole frame in one allocation: `head`
 * (the template up to the request id), the id, `tail` (up to the Rewrite
 * table's offsets), an offset per present field, `vtables` (the two shared
 * TextEntry vtables), then the children in field order. Empty fields are
 * left out. The frame header's length is the frame's; the caller checks it
 * against the protocol's maximum. */
static PyObject *
rewrite_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "rewrite_frame() takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *head = args[0], *tail = args[1], *vts = args[2];
    if (!PyBytes_Check(head) || !PyBytes_Check(tail) || !PyBytes_Check(vts)) {
        PyErr_SetString(PyExc_TypeError, "rewrite_frame(): the template parts are bytes");
        return NULL;
    }
    long rpc_type = PyLong_AsLong(args[3]);
    if (rpc_type == -1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long req_id = PyLong_AsUnsignedLong(args[4]);
    if (req_id == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (req_id > 0xFFFFFFFFUL || rpc_type < 0 || rpc_type > 0xFF) {
        PyErr_SetString(PyExc_OverflowError, "rewrite_frame(): request id or type out of range");
        return NULL;
    }
    PyObject *path = args[5], *body = args[9];
    if (path != Py_None && !PyUnicode_Check(path)) {
        PyErr_Format(PyExc_TypeError, "a path is str, not %.100s", Py_TYPE(path)->tp_name);
        return NULL;
    }
    if (body != Py_None && !PyBytes_Check(body)) {
        PyErr_Format(PyExc_TypeError, "a body is bytes, not %.100s", Py_TYPE(body)->tp_name);
        return NULL;
    }
    PyObject *fields[FIELDS] = {args[6], args[7], args[8]};
    int kinds[FIELDS], present[FIELDS];
    const int joins[FIELDS] = {1, 0, 1};
    Py_ssize_t counts[FIELDS] = {0}, sizes[FIELDS] = {0};
    Py_ssize_t body_len = body == Py_None ? 0 : PyBytes_GET_SIZE(body);
    int k = (path != Py_None) + (body_len > 0);
    for (int f = 0; f < FIELDS; f++) {
        if (field_kind(fields[f], joins[f], &kinds[f], &present[f]) < 0) {
            return NULL;
        }
        k += present[f];
    }
    /* Sizes and places. */
    Py_ssize_t slot = PyBytes_GET_SIZE(head) + 4 + PyBytes_GET_SIZE(tail);
    Py_ssize_t vtables = slot + 4 * k;
    Py_ssize_t pos = vtables + PyBytes_GET_SIZE(vts);
    text path_text = {NULL, 0, NULL};
    if (path != Py_None && text_of(path, &path_text) < 0) {
        return NULL;
    }
    Py_ssize_t path_at = pos;
    if (path != Py_None) {
        pos += string_size(path_text.len);
    }
    Py_ssize_t at[FIELDS];
    for (int f = 0; f < FIELDS; f++) {
        at[f] = pos;
        if (present[f]) {
            if (vec_size(fields[f], kinds[f], &counts[f], &sizes[f]) < 0) {
                Py_XDECREF(path_text.owner);
                return NULL;
            }
            pos += sizes[f];
        }
    }
    Py_ssize_t body_at = pos;
    if (body_len > 0) {
        pos += 4 + body_len;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, pos);
    if (out == NULL) {
        Py_XDECREF(path_text.owner);
        return NULL;
    }
    unsigned char *base = (unsigned char *)PyBytes_AS_STRING(out);
    /* The template, the id, the table's offsets (in field order), the vtables. */
    memcpy(base, PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head));
    unsigned char *w = base + PyBytes_GET_SIZE(head);
    put_u32(w, (Py_ssize_t)req_id);
    memcpy(w + 4, PyBytes_AS_STRING(tail), (size_t)PyBytes_GET_SIZE(tail));
    if (path != Py_None) {
        put_u32(base + slot, path_at - slot);
        slot += 4;
    }
    for (int f = 0; f < FIELDS; f++) {
        if (present[f]) {
            put_u32(base + slot, at[f] - slot);
            slot += 4;
        }
    }
    if (body_len > 0) {
        put_u32(base + slot, body_at - slot);
    }
    memcpy(base + vtables, PyBytes_AS_STRING(vts), (size_t)PyBytes_GET_SIZE(vts));
    /* The children. */
    if (path != Py_None) {
        put_string(base + path_at, &path_text);
        Py_XDECREF(path_text.owner);
    }
    for (int f = 0; f < FIELDS; f++) {
        if (present[f] && vec_write(fields[f], kinds[f], base + at[f], counts[f], sizes[f],
                                    at[f], vtables) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    if (body_len > 0) {
        put_u32(base + body_at, body_len);
        memcpy(base + body_at + 4, PyBytes_AS_STRING(body), (size_t)body_len);
    }
    /* The frame header: the type, then the payload's length (24 bits). */
    Py_ssize_t length = pos - 4;
    base[0] = (unsigned char)rpc_type;
    base[1] = (unsigned char)(length >> 16);
    base[2] = (unsigned char)(length >> 8);
    base[3] = (unsigned char)length;
    return out;
}

/* One object, or two exact strs with the same characters (PEP 393: equal
 * strs share a kind). */
static inline int
same_str(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    if (!PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    int kind = PyUnicode_KIND(a);
    return n == PyUnicode_GET_LENGTH(b) && kind == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)(n * kind)) == 0;
}

/* A change's values against the kept ones: both None, or an exact list and a
 * tuple of the same None and str items. */
static int
same_values(PyObject *values, PyObject *kept)
{
    if (values == Py_None || kept == Py_None) {
        return values == kept;
    }
    if (!PyList_CheckExact(values) || !PyTuple_CheckExact(kept) ||
        PyList_GET_SIZE(values) != PyTuple_GET_SIZE(kept)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(values); i++) {
        PyObject *x = PyList_GET_ITEM(values, i), *y = PyTuple_GET_ITEM(kept, i);
        if (x == Py_None || y == Py_None ? x != y : !same_str(x, y)) {
            return 0;
        }
    }
    return 1;
}

/* Whether a change map writes the entries kept (replymemo.kept: a flat tuple,
 * name, values, name, values..., each values None or a tuple): an exact dict
 * with the same str names in the same order, each with the same values.
 * Anything else (a subclass, a name or value of another type) is "not the
 * same", so a memo is never trusted on an __eq__ of a plugin's making (one
 * object is the same as itself: a str's text cannot change). Runs no Python
 * code: the dict cannot change during the walk. */
static int
same_changes(PyObject *changes, PyObject *kept)
{
    if (!PyDict_CheckExact(changes) || !PyTuple_CheckExact(kept) ||
        2 * PyDict_GET_SIZE(changes) != PyTuple_GET_SIZE(kept)) {
        return 0;
    }
    Py_ssize_t pos = 0, k = 0;
    PyObject *name, *values;
    while (PyDict_Next(changes, &pos, &name, &values)) {
        if (!same_str(name, PyTuple_GET_ITEM(kept, k)) ||
            !same_values(values, PyTuple_GET_ITEM(kept, k + 1))) {
            return 0;
        }
        k += 2;
    }
    return 1;
}

/* reuse(frame: bytes, at: int, req_id: int, headers: dict, kept_headers: tuple,
 *       args: dict, kept_args: tuple) -> bytes | None
 *
 * runner.proto.replymemo's hit: when `headers` and `args` write the same
 * entries as the kept copies `frame` was built from, a copy of `frame` with
 * `req_id` (u32, little-endian) at `at`; otherwise None. */
static PyObject *
reuse(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "reuse() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *frame = args[0];
    if (!PyBytes_CheckExact(frame)) {
        PyErr_Format(PyExc_TypeError, "reuse(): a frame is bytes, not %.100s",
                     Py_TYPE(frame)->tp_name);
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long req_id = PyLong_AsUnsignedLong(args[2]);
    if (req_id == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(frame);
    if (at < 0 || at > n - 4 || req_id > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "reuse(): the id's place or value is out of range");
        return NULL;
    }
    if (!same_changes(args[3], args[4]) || !same_changes(args[5], args[6])) {
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(frame), n);
    if (out != NULL) {
        put_u32((unsigned char *)PyBytes_AS_STRING(out) + at, (Py_ssize_t)req_id);
    }
    return out;
}

/* stop_frame(template: bytes, id_at: int, status_at: int, req_id: int, status: int,
 *            body: bytes) -> bytes
 *
 * A Stop without headers, the usual one: `template` is such a frame up to
 * its body's bytes (runner.proto.messages._STOP_BARE: id, status and body
 * length zero); a copy with the frame's length, `req_id` (u32 at `id_at`),
 * `status` (u16 at `status_at`) and the body's length (its last 4 bytes)
 * written in, then the body. One allocation; the Python builder it stands in
 * for writes the same bytes (tests/proto/test_textvec.py). */
static PyObject *
stop_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "stop_frame() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *template = args[0];
    if (!PyBytes_CheckExact(template)) {
        PyErr_SetString(PyExc_TypeError, "stop_frame(): the template is bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(template);
    Py_ssize_t id_at = PyLong_AsSsize_t(args[1]);
    if (id_at == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t status_at = PyLong_AsSsize_t(args[2]);
    if (status_at == -1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long req_id = PyLong_AsUnsignedLong(args[3]);
    if (req_id == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    long status = PyLong_AsLong(args[4]);
    if (status == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n < 8 || id_at < 4 || id_at > n - 8 || status_at < 4 || status_at > n - 6 ||
        req_id > 0xFFFFFFFFUL || status < 0 || status > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "stop_frame(): a field's place or value is out of range");
        return NULL;
    }
    Py_buffer body;
    if (PyObject_GetBuffer(args[5], &body, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t payload = n - 4 + body.len;
    if (payload > 0xFFFFFF) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_ValueError, "stop_frame(): the frame is over 16 MiB");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n + body.len);
    if (out != NULL) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
        memcpy(p, PyBytes_AS_STRING(template), (size_t)n);
        p[1] = (unsigned char)(payload >> 16);
        p[2] = (unsigned char)(payload >> 8);
        p[3] = (unsigned char)payload;
        put_u32(p + id_at, (Py_ssize_t)req_id);
        p[status_at] = (unsigned char)status;
        p[status_at + 1] = (unsigned char)(status >> 8);
        put_u32(p + n - 4, body.len);
        memcpy(p + n, body.buf, (size_t)body.len);
    }
    PyBuffer_Release(&body);
    return out;
}

static PyMethodDef methods[] = {
    {"reuse", (PyCFunction)(void (*)(void))reuse, METH_FASTCALL,
     "reuse(frame, at, req_id, headers, kept_headers, args, kept_args) -> bytes | None: "
     "frame with req_id at `at` where the changes are the kept ones, else None."},
    {"text_vector", (PyCFunction)(void (*)(void))text_vector, METH_FASTCALL,
     "text_vector(pairs, start, vtables) -> bytes: a [TextEntry] vector starting at `start` "
     "of a frame whose TextEntry vtables lie at `vtables`."},
    {"rewrite_frame", (PyCFunction)(void (*)(void))rewrite_frame, METH_FASTCALL,
     "rewrite_frame(head, tail, vtables, rpc_type, req_id, path, headers, args, "
     "resp_headers, body) -> bytes: a whole HTTPReqCall Rewrite frame."},
    {"stop_frame", (PyCFunction)(void (*)(void))stop_frame, METH_FASTCALL,
     "stop_frame(template, id_at, status_at, req_id, status, body) -> bytes: a Stop without "
     "headers, from the template of one."},
    {"changes_vector", (PyCFunction)(void (*)(void))changes_vector, METH_FASTCALL,
     "changes_vector(changes, join, start, vtables) -> bytes: the vector of a change map's "
     "entries."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_textvec", "The compiled build's [TextEntry] vector writer.", 0,
    methods,
};

PyMODINIT_FUNC
PyInit__textvec(void)
{
    return PyModule_Create(&module);
}
