/* The compiled build's frame cutter: one call from the receive buffer to the
 * payload's bytes. And its reader of ExtraInfo answers (root_bytes0, below).
 *
 * runner/proto/frame.py has the same function in Python (`cut_payload`), which
 * the pure build runs. Compiled with mypyc, that one costs a memoryview slice,
 * a tobytes() call and four boxed byte reads (~2,500 instructions per frame);
 * this is a bounds check, the 24-bit length and one PyBytes copy. Both return
 * the same values and raise the same errors (tests/proto/test_frame.py runs
 * them side by side).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define HEADER_SIZE 4

/* A connection's spare payload: the bytes object its last frame was copied
 * into, kept to be written over by the next one once nothing else holds it.
 * Only payloads the interpreter's small-object allocator does not serve:
 * a payload over SPARE_MAX bytes (rare) is not kept either, so an idle
 * connection holds at most that much.
 *
 * Why: a payload is over the interpreter's small-object limit (512 bytes),
 * so each one was a malloc and a free of the C library, whose code, run on
 * every call, is some 3 KiB more that the call fetches into the CPU's
 * instruction cache again each time (docs/architecture.md, build flags).
 *
 * Written over only while this object's reference is the only one: a bytes
 * object nothing else can see. Its length is set to the new payload's (at
 * most its first length, `cap`: the memory allocated), its cached hash reset
 * and its NUL terminator moved. */
#define SPARE_MAX 4096
/* The largest payload whose bytes object is a small object (512 bytes). */
#define SMALL_PAYLOAD ((Py_ssize_t)(512 - offsetof(PyBytesObject, ob_sval) - 1))

typedef struct {
    PyObject_HEAD
    PyObject *bytes; /* NULL, or a bytes object of `cap` allocated bytes */
    Py_ssize_t cap;
} Spare;

static void
spare_dealloc(Spare *self)
{
    Py_CLEAR(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject SpareType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runner.proto._cutframe.Spare",
    .tp_basicsize = sizeof(Spare),
    .tp_dealloc = (destructor)spare_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_doc = "Spare() -> a connection's spare payload for cut_payload (opaque).",
};

/* The payload's bytes: the spare, written over, where it is free and large
 * enough; else a new object, kept as the spare when small enough. */
static PyObject *
payload_copy(Spare *spare, const char *data, Py_ssize_t length)
{
    /* The interpreter's allocator serves the small ones fast (and those of
     * length 0 and 1 are shared singletons): they neither use the spare nor
     * take its place, so an ExtraInfo answer leaves it to the requests. */
    if (spare == NULL || length <= SMALL_PAYLOAD || length > SPARE_MAX) {
        return PyBytes_FromStringAndSize(data, length);
    }
    PyObject *b = spare->bytes;
    if (b != NULL && Py_REFCNT(b) == 1 && length <= spare->cap) {
        Py_SET_SIZE(b, length);
        ((PyBytesObject *)b)->ob_shash = -1;
        memcpy(PyBytes_AS_STRING(b), data, (size_t)length);
        PyBytes_AS_STRING(b)[length] = '\0';
        Py_INCREF(b);
        return b;
    }
    b = PyBytes_FromStringAndSize(data, length);
    if (b != NULL) {
        Py_XSETREF(spare->bytes, Py_NewRef(b));
        spare->cap = length;
    }
    return b;
}

/* cut_payload(buf: bytearray, start: int, end: int, spare: Spare | None = None)
 *     -> bytes | None
 *
 * The payload of the frame whose header is at buf[start], copied into a
 * bytes object (the spare's, see above, where one is given), when the whole
 * frame lies in buf[start:end]; None when fewer than its 4 header bytes or
 * not all of its payload are there yet. */
static PyObject *
cut_payload(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && nargs != 4) {
        PyErr_Format(PyExc_TypeError, "cut_payload() takes 3 or 4 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    Spare *spare = NULL;
    if (nargs == 4 && args[3] != Py_None) {
        if (!Py_IS_TYPE(args[3], &SpareType)) {
            PyErr_Format(PyExc_TypeError, "cut_payload() argument 4 must be Spare, not %.100s",
                         Py_TYPE(args[3])->tp_name);
            return NULL;
        }
        spare = (Spare *)args[3];
    }
    PyObject *buf = args[0];
    if (!PyByteArray_Check(buf)) {
        PyErr_Format(PyExc_TypeError, "cut_payload() argument 1 must be bytearray, not %.100s",
                     Py_TYPE(buf)->tp_name);
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t size = PyByteArray_GET_SIZE(buf);
    if (start < 0 || end < start || end > size) {
        PyErr_Format(PyExc_IndexError, "cut_payload(): [%zd:%zd] outside a %zd-byte buffer",
                     start, end, size);
        return NULL;
    }
    if (end - start < HEADER_SIZE) {
        Py_RETURN_NONE;
    }
    const unsigned char *head = (const unsigned char *)PyByteArray_AS_STRING(buf) + start;
    Py_ssize_t length = ((Py_ssize_t)head[1] << 16) | ((Py_ssize_t)head[2] << 8) | head[3];
    if (end - start - HEADER_SIZE < length) {
        Py_RETURN_NONE;
    }
    return payload_copy(spare, (const char *)head + HEADER_SIZE, length);
}

static inline Py_ssize_t
u32_at(const unsigned char *p)
{
    return (Py_ssize_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                        (uint32_t)p[3] << 24);
}

/* root_bytes0(data: bytes) -> bytes | None | False
 *
 * Field 0 of the root table as a [ubyte] vector (an ExtraInfo answer): its
 * bytes, or None when the field is absent, exactly as fb.root_bytes0 reads it;
 * False when any offset or size is out of bounds, for the caller to raise the
 * DecodeError with its own message (fb.Table reads it again). */
static PyObject *
root_bytes0(PyObject *module, PyObject *data)
{
    if (!PyBytes_CheckExact(data)) {
        PyErr_Format(PyExc_TypeError, "root_bytes0() takes bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < 8) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t pos = u32_at(b);
    if (pos + 4 > size) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t vt = pos - (Py_ssize_t)(int32_t)(uint32_t)u32_at(b + pos);
    if (vt < 0 || vt + 4 > size) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t vtlen = (Py_ssize_t)b[vt] | (Py_ssize_t)b[vt + 1] << 8;
    if (vtlen < 4 || (vtlen & 1) || vt + vtlen > size) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t off = vtlen >= 6 ? ((Py_ssize_t)b[vt + 4] | (Py_ssize_t)b[vt + 5] << 8) : 0;
    if (off == 0) {
        Py_RETURN_NONE;
    }
    pos += off;
    if (pos + 4 > size) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t vec = pos + u32_at(b + pos);
    if (vec + 4 > size) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t end = vec + 4 + u32_at(b + vec);
    if (end > size) {
        Py_RETURN_FALSE;
    }
    return PyBytes_FromStringAndSize((const char *)b + vec + 4, end - vec - 4);
}

static PyMethodDef methods[] = {
    {"cut_payload", (PyCFunction)(void (*)(void))cut_payload, METH_FASTCALL,
     "cut_payload(buf, start, end, spare=None) -> bytes | None: the frame's payload at "
     "buf[start], once it has all arrived (in the spare's memory where it is free)."},
    {"root_bytes0", (PyCFunction)root_bytes0, METH_O,
     "root_bytes0(data) -> bytes | None | False: field 0 of the root table as bytes, None "
     "when absent, False when the buffer is malformed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cutframe", "The compiled build's frame cutter.", 0, methods,
};

PyMODINIT_FUNC
PyInit__cutframe(void)
{
    if (PyType_Ready(&SpareType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Spare", (PyObject *)&SpareType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
