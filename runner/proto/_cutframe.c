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

#define HEADER_SIZE 4

/* cut_payload(buf: bytearray, start: int, end: int) -> bytes | None
 *
 * The payload of the frame whose header is at buf[start], copied into a new
 * bytes object, when the whole frame lies in buf[start:end]; None when fewer
 * than its 4 header bytes or not all of its payload are there yet. */
static PyObject *
cut_payload(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "cut_payload() takes 3 arguments (%zd given)", nargs);
        return NULL;
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
    return PyBytes_FromStringAndSize((const char *)head + HEADER_SIZE, length);
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
     "cut_payload(buf, start, end) -> bytes | None: the frame's payload at buf[start], "
     "once it has all arrived."},
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
    return PyModule_Create(&module);
}
