/* Put in front of the compiled group's C file (setup.py: -include).
 *
 * mypyc's C checks every fallible operation and, on failure, calls one of
 * these before leaving the function: they run only when something raised.
 * Declared cold, GCC moves each function's error blocks out of its body
 * (into .text.unlikely), so the instructions a call runs through the
 * compiled modules lie on fewer cache lines and fewer pages. Nothing else
 * changes: the declarations are mypyc's (CPy.h) and Python's own, with one
 * attribute added. */
#ifndef APISIX_RUNNER_COLD_H
#define APISIX_RUNNER_COLD_H
#include <Python.h>

#define RUNNER_COLD __attribute__((cold))

void CPy_AddTraceback(const char *filename, const char *funcname, int line,
                      PyObject *globals) RUNNER_COLD;
void CPy_TypeError(const char *expected, PyObject *value) RUNNER_COLD;
void CPy_TypeErrorTraceback(const char *filename, const char *funcname, int line,
                            PyObject *globals, const char *expected, PyObject *value) RUNNER_COLD;
void CPy_AttributeError(const char *filename, const char *funcname, const char *classname,
                        const char *attrname, int line, PyObject *globals) RUNNER_COLD;
void CPyError_OutOfMemory(void) RUNNER_COLD;
PyAPI_FUNC(void) PyErr_SetString(PyObject *exception, const char *string) RUNNER_COLD;

#endif
