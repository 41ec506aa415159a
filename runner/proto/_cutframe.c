/* The compiled build's frame cutter: one call from the receive buffer to the
 * payload's bytes.
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

static PyMethodDef methods[] = {
    {"cut_payload", (PyCFunction)(void (*)(void))cut_payload, METH_FASTCALL,
     "cut_payload(buf, start, end) -> bytes | None: the frame's payload at buf[start], "
     "once it has all arrived."},
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
