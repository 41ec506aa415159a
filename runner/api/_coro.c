/* The compiled build's side of stepping a call's coroutine (runner/api/calltask.py).
 *
 * runner/api/stepping.py has the same things in Python, which the pure
 * build runs; tests/api/test_stepping.py runs both side by side.
 *
 * step_in(context, coro, value, loop, task): one step of the coroutine, in
 *     its context, with `task` as the loop's current task (what
 *     asyncio.current_task() returns). Returns what the coroutine yielded, or
 *     a Returned holding what it returned (BUSY, and nothing stepped, where
 *     the loop runs another task). Python's own `context.run(coro.send, value)` reports the end
 *     of the coroutine as a StopIteration; caught in the compiled CallTask,
 *     that exception cost ~4,000 instructions per call (a traceback entry,
 *     the catch, the re-raise through a `finally`). PyIter_Send reports it as
 *     a return value: mypyc's coroutines and CPython's both end without
 *     raising anything.
 *
 * Question: what a call's own coroutine awaits while APISIX answers an
 *     ExtraInfo question. An asyncio Future does the same job for ~2,000
 *     instructions more (`loop.create_future()` asks the loop for its debug
 *     flag, the await makes an iterator, done-callbacks are a list): nobody
 *     but the call waits on a question, and the connection resumes the call
 *     itself once the answer is in. Awaiting one yields the question itself
 *     (once: the call's task recognises it) and then returns its answer, or
 *     raises its error. Only the call's own task may await one; a child task
 *     (gather, create_task, wait_for) is given a real Future instead, since
 *     asyncio's tasks accept nothing else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* -- Returned */

typedef struct {
    PyObject_HEAD
    PyObject *value;
} ReturnedObject;

static PyTypeObject ReturnedType;

static PyObject *
returned_new(PyObject *value) /* steals `value` */
{
    ReturnedObject *self = PyObject_New(ReturnedObject, &ReturnedType);
    if (self == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    self->value = value;
    return (PyObject *)self;
}

static PyObject *
returned_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *value;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Returned() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Returned", 1, 1, &value)) {
        return NULL;
    }
    Py_INCREF(value);
    return returned_new(value);
}

static void
returned_dealloc(ReturnedObject *self)
{
    Py_XDECREF(self->value);
    PyObject_Free(self);
}

/* returned_value(returned) -> its value: compiled, `returned.value` is a
 * generic attribute lookup (~160 instructions), this a call (~40). */
static PyObject *
returned_value(PyObject *module, PyObject *returned)
{
    if (!Py_IS_TYPE(returned, &ReturnedType)) {
        PyErr_Format(PyExc_TypeError, "returned_value() takes a Returned, not %.100s",
                     Py_TYPE(returned)->tp_name);
        return NULL;
    }
    return Py_NewRef(((ReturnedObject *)returned)->value);
}

static PyMemberDef returned_members[] = {
    {"value", T_OBJECT, offsetof(ReturnedObject, value), READONLY,
     "what the coroutine returned"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReturnedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runner.api._coro.Returned",
    .tp_doc = "The end of a coroutine, from step_in: `value` is what it returned.",
    .tp_basicsize = sizeof(ReturnedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = returned_tp_new,
    .tp_dealloc = (destructor)returned_dealloc,
    .tp_members = returned_members,
};

/* -- step_in */

static PyObject *current_tasks; /* asyncio's loop -> its running task */

static PyObject *BUSY; /* what step_in returns when the loop runs another task */

/* asyncio's _enter_task and _leave_task, on the same dict; entering returns 1
 * (and changes nothing) where the loop runs another task. One dict lookup
 * each, where asyncio's make two (a get, then a set or a delete): the task
 * is entered if setdefault() added it, and left by a pop() that puts back
 * whatever else it took out. */
static int
enter_task(PyObject *loop, PyObject *task)
{
    Py_ssize_t before = PyDict_GET_SIZE(current_tasks);
    if (PyDict_SetDefault(current_tasks, loop, task) == NULL) {
        return -1;
    }
    return PyDict_GET_SIZE(current_tasks) > before ? 0 : 1;
}

/* current_tasks.pop(loop, missing): a new reference, NULL on an error. */
static PyObject *
pop_current(PyObject *loop, PyObject *missing)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *found;
    int got = PyDict_Pop(current_tasks, loop, &found);
    if (got < 0) {
        return NULL;
    }
    return got ? found : Py_NewRef(missing);
#else
    return _PyDict_Pop(current_tasks, loop, missing);
#endif
}

static int
leave_task(PyObject *loop, PyObject *task)
{
    PyObject *running = pop_current(loop, BUSY); /* BUSY: no task was current */
    if (running == NULL) {
        return -1;
    }
    if (running == task) {
        Py_DECREF(running);
        return 0;
    }
    if (running != BUSY && PyDict_SetItem(current_tasks, loop, running) < 0) {
        Py_DECREF(running);
        return -1;
    }
    PyErr_Format(PyExc_RuntimeError, "Leaving task %R does not match the current task %R.",
                 task, running == BUSY ? Py_None : running);
    Py_DECREF(running);
    return -1;
}

static PyObject *
step_in(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "step_in(context, coro, value, loop, task) takes 5 arguments");
        return NULL;
    }
    PyObject *context = args[0], *loop = args[3], *task = args[4];
    if (!PyContext_CheckExact(context)) {
        PyErr_Format(PyExc_TypeError, "step_in: a contextvars.Context, not %.100s",
                     Py_TYPE(context)->tp_name);
        return NULL;
    }
    int entered = enter_task(loop, task);
    if (entered != 0) {
        /* Driven from inside another task (asyncio allows one at a time):
         * nothing stepped, and the caller steps it a loop round later. */
        return entered < 0 ? NULL : Py_NewRef(BUSY);
    }
    if (PyContext_Enter(context) < 0) {
        leave_task(loop, task);
        return NULL;
    }
    PyObject *result = NULL;
    PySendResult status = PyIter_Send(args[1], args[2], &result);
    /* What a `finally` does: leave the context and the task whatever happened;
     * a failure to leave replaces the step's own error. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyContext_Exit(context) < 0 || leave_task(loop, task) < 0) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        Py_XDECREF(result);
        return NULL;
    }
    PyErr_Restore(type, value, tb);
    switch (status) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        return returned_new(result);
    default:
        return NULL;
    }
}

/* -- Question */

static PyObject *CancelledError; /* asyncio.CancelledError */

typedef struct {
    PyObject_HEAD
    PyObject *result; /* the answer, once there is one */
    PyObject *error;  /* or the exception the await raises */
    char done;
    char cancelled;
} QuestionObject;

static PyTypeObject QuestionType;

static PyObject *
question_alloc(PyTypeObject *type)
{
    QuestionObject *self = PyObject_GC_New(QuestionObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->result = NULL;
    self->error = NULL;
    self->done = 0;
    self->cancelled = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
question_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Question() takes no arguments");
        return NULL;
    }
    return question_alloc(type);
}

static PyObject *
question_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    /* Question() from compiled code: no argument tuple, no type_call. */
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Question() takes no arguments");
        return NULL;
    }
    return question_alloc((PyTypeObject *)type);
}

static int
question_traverse(QuestionObject *self, visitproc visit, void *arg)
{
    /* An error's traceback can lead back to the question. */
    Py_VISIT(self->result);
    Py_VISIT(self->error);
    return 0;
}

static int
question_clear(QuestionObject *self)
{
    Py_CLEAR(self->result);
    Py_CLEAR(self->error);
    return 0;
}

static void
question_dealloc(QuestionObject *self)
{
    PyObject_GC_UnTrack(self);
    question_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
question_await(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

static PySendResult
question_send(QuestionObject *self, PyObject *arg, PyObject **result)
{
    if (!self->done) {
        /* Not answered yet: the call's task waits on the question itself. */
        Py_INCREF(self);
        *result = (PyObject *)self;
        return PYGEN_NEXT;
    }
    if (self->error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->error), self->error);
        *result = NULL;
        return PYGEN_ERROR;
    }
    Py_INCREF(self->result);
    *result = self->result;
    return PYGEN_RETURN;
}

static PyObject *
question_next(QuestionObject *self)
{
    /* For callers that use the iterator protocol rather than am_send. */
    PyObject *result;
    switch (question_send(self, Py_None, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            /* An instance, not the answer itself: PyErr_SetObject would take a
             * tuple answer for StopIteration's arguments. */
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
        return NULL;
    default:
        return NULL;
    }
}

static int
question_settle(QuestionObject *self, PyObject *result, PyObject *error)
{
    if (self->done) {
        PyErr_SetString(PyExc_RuntimeError, "the question has its answer already");
        return -1;
    }
    Py_XINCREF(result);
    Py_XINCREF(error);
    self->result = result;
    self->error = error;
    self->done = 1;
    return 0;
}

static PyObject *
question_set_result(QuestionObject *self, PyObject *value)
{
    if (question_settle(self, value, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
question_set_exception(QuestionObject *self, PyObject *error)
{
    if (!PyExceptionInstance_Check(error)) {
        PyErr_Format(PyExc_TypeError, "set_exception: an exception instance, not %.100s",
                     Py_TYPE(error)->tp_name);
        return NULL;
    }
    if (question_settle(self, NULL, error) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
question_cancel(QuestionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "cancel(msg=None) takes at most 1 argument");
        return NULL;
    }
    if (self->done) {
        Py_RETURN_FALSE;
    }
    PyObject *error = (nargs == 0 || args[0] == Py_None)
                          ? PyObject_CallNoArgs(CancelledError)
                          : PyObject_CallOneArg(CancelledError, args[0]);
    if (error == NULL) {
        return NULL;
    }
    int settled = question_settle(self, NULL, error);
    Py_DECREF(error);
    if (settled < 0) {
        return NULL;
    }
    self->cancelled = 1;
    Py_RETURN_TRUE;
}

static PyObject *
question_done(QuestionObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->done);
}

static PyObject *
question_cancelled(QuestionObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->cancelled);
}

static PyObject *
question_repr(QuestionObject *self)
{
    if (!self->done) {
        return PyUnicode_FromString("<Question pending>");
    }
    if (self->cancelled) {
        return PyUnicode_FromString("<Question cancelled>");
    }
    if (self->error != NULL) {
        return PyUnicode_FromFormat("<Question error=%R>", self->error);
    }
    return PyUnicode_FromFormat("<Question answer=%R>", self->result);
}

static PyMethodDef question_methods[] = {
    {"set_result", (PyCFunction)question_set_result, METH_O, "Answer the question."},
    {"set_exception", (PyCFunction)question_set_exception, METH_O,
     "Make the await raise `error`."},
    {"cancel", (PyCFunction)(void (*)(void))question_cancel, METH_FASTCALL,
     "cancel(msg=None) -> bool: make the await raise CancelledError (False if answered)."},
    {"done", (PyCFunction)question_done, METH_NOARGS, "Answered, failed or cancelled."},
    {"cancelled", (PyCFunction)question_cancelled, METH_NOARGS, "Cancelled."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods question_async = {
    .am_await = (unaryfunc)question_await,
    .am_send = (sendfunc)question_send,
};

static PyTypeObject QuestionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runner.api._coro.Question",
    .tp_doc = "What a call's own coroutine awaits while APISIX answers an ExtraInfo question.",
    .tp_basicsize = sizeof(QuestionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = question_tp_new,
    .tp_vectorcall = question_vectorcall,
    .tp_dealloc = (destructor)question_dealloc,
    .tp_traverse = (traverseproc)question_traverse,
    .tp_clear = (inquiry)question_clear,
    .tp_as_async = &question_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)question_next,
    .tp_methods = question_methods,
    .tp_repr = (reprfunc)question_repr,
};

static PyObject *str_done, *str_set_result; /* method names, interned */

/* answer(question, value) -> bool: answer a Question (in place) or a Future
 * (its done() and set_result()), unless it has its answer already. */
static PyObject *
answer(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "answer(question, value) takes 2 arguments");
        return NULL;
    }
    PyObject *question = args[0];
    if (Py_IS_TYPE(question, &QuestionType)) {
        QuestionObject *q = (QuestionObject *)question;
        if (q->done) {
            Py_RETURN_FALSE;
        }
        if (question_settle(q, args[1], NULL) < 0) {
            return NULL;
        }
        Py_RETURN_TRUE;
    }
    PyObject *done = PyObject_CallMethodNoArgs(question, str_done);
    if (done == NULL) {
        return NULL;
    }
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (is_done < 0) {
        return NULL;
    }
    if (is_done) {
        Py_RETURN_FALSE;
    }
    PyObject *set = PyObject_CallMethodOneArg(question, str_set_result, args[1]);
    if (set == NULL) {
        return NULL;
    }
    Py_DECREF(set);
    Py_RETURN_TRUE;
}

/* -- HandleBase: what asyncio.current_task() returns is a TaskHandle
 * (runner/api/taskhandle.py), a Python subclass of this. The base holds the
 * call and the weak references (cleared when it is freed, which a compiled
 * class's are not), and new_handle() makes one without type_call's argument
 * handling and __init__ lookup: ~500 instructions a call, down to ~150. */

typedef struct {
    PyObject_HEAD
    PyObject *call;
    PyObject *weakreflist;
} HandleObject;

static PyTypeObject HandleBaseType;

static int
handle_traverse(HandleObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->call);
    return 0;
}

static int
handle_clear(HandleObject *self)
{
    Py_CLEAR(self->call);
    return 0;
}

static void
handle_dealloc(HandleObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    handle_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef handle_members[] = {
    {"_call", T_OBJECT, offsetof(HandleObject, call), 0, "the CallTask this handle stands for"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject HandleBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runner.api._coro.HandleBase",
    .tp_doc = "The base of runner.api.taskhandle.TaskHandle: the call, and weak references.",
    .tp_basicsize = sizeof(HandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_traverse = (traverseproc)handle_traverse,
    .tp_clear = (inquiry)handle_clear,
    .tp_weaklistoffset = offsetof(HandleObject, weakreflist),
    .tp_members = handle_members,
};

/* new_handle(cls, call): a `cls` (a subclass of HandleBase) standing for `call`. */
static PyObject *
new_handle(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "new_handle(cls, call) takes 2 arguments");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    if (!PyType_Check(args[0]) || !PyType_IsSubtype(cls, &HandleBaseType)) {
        PyErr_SetString(PyExc_TypeError, "new_handle: cls must be a subclass of HandleBase");
        return NULL;
    }
    HandleObject *self = (HandleObject *)cls->tp_alloc(cls, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(args[1]);
    self->call = args[1];
    return (PyObject *)self;
}

/* copy_context(context): a copy of `context` (Context.copy(), without the
 * method lookup). */
static PyObject *
copy_context(PyObject *module, PyObject *context)
{
    if (!PyContext_CheckExact(context)) {
        PyErr_Format(PyExc_TypeError, "copy_context: a contextvars.Context, not %.100s",
                     Py_TYPE(context)->tp_name);
        return NULL;
    }
    return PyContext_Copy(context);
}

/* -- the module */

static PyMethodDef methods[] = {
    {"returned_value", (PyCFunction)returned_value, METH_O,
     "returned_value(returned) -> the value a Returned holds."},
    {"copy_context", (PyCFunction)copy_context, METH_O,
     "copy_context(context) -> a copy of `context`."},
    {"new_handle", (PyCFunction)(void (*)(void))new_handle, METH_FASTCALL,
     "new_handle(cls, call) -> a `cls` (a subclass of HandleBase) standing for `call`."},
    {"answer", (PyCFunction)(void (*)(void))answer, METH_FASTCALL,
     "answer(question, value) -> bool: answer a Question or a Future unless it has its "
     "answer already; whether it was answered now."},
    {"step_in", (PyCFunction)(void (*)(void))step_in, METH_FASTCALL,
     "step_in(context, coro, value, loop, task) -> what the coroutine yielded, or a Returned "
     "holding what it returned: one step of `coro` run in `context`, as `task` of `loop`."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_coro", "The compiled build's coroutine stepping.", 0, methods,
};

/* `module`.`name`, imported (a new reference), or NULL with the error set. */
static PyObject *
imported(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *found = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    return found;
}

PyMODINIT_FUNC
PyInit__coro(void)
{
    if (PyType_Ready(&ReturnedType) < 0 || PyType_Ready(&QuestionType) < 0 ||
        PyType_Ready(&HandleBaseType) < 0) {
        return NULL;
    }
    CancelledError = imported("asyncio", "CancelledError");
    if (CancelledError == NULL) {
        return NULL;
    }
    BUSY = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (BUSY == NULL) {
        return NULL;
    }
    str_done = PyUnicode_InternFromString("done");
    str_set_result = PyUnicode_InternFromString("set_result");
    if (str_done == NULL || str_set_result == NULL) {
        return NULL;
    }
    current_tasks = imported("asyncio.tasks", "_current_tasks");
    if (current_tasks == NULL) {
        return NULL;
    }
    if (!PyDict_CheckExact(current_tasks)) {
        PyErr_SetString(PyExc_ImportError, "asyncio.tasks._current_tasks is not a dict");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Returned", (PyObject *)&ReturnedType) < 0 ||
        PyModule_AddObjectRef(m, "Question", (PyObject *)&QuestionType) < 0 ||
        PyModule_AddObjectRef(m, "HandleBase", (PyObject *)&HandleBaseType) < 0 ||
        PyModule_AddObjectRef(m, "BUSY", BUSY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
