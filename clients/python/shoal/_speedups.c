/* shoal._speedups: plain calls, compiled: the client's conversion of a hand-built dask graph
 * of them, and the executor's runs of them.
 *
 * A graph whose every node is a plain legacy call, (func, arg, ...) with each argument a key of
 * the graph or a literal a literal payload carries (docs/protocol.md §3.1), is what
 * shoal._dask converts node by node into DirectCalls and update_graph tasks. In Python that is
 * about 7 µs of the client's CPU per node (docs/performance.md, "A million-task dask graph");
 * here it is well under one:
 *
 *   plain_graph(dsk) -> PlainGraph | None
 *       one pass that checks the graph (None: not every node is a call sent as written, and
 *       shoal._dask takes its Python path), numbers its keys, resolves every argument that
 *       names a key to its number, counts the nodes naming each key, and orders the keys as
 *       shoal._dask.node_order does (depth-first from the keys nothing names);
 *   PlainGraph.plain_wire(limit, max_bytes, func_name, group, ann_wire, ann_n)
 *       -> (tasks_wire, keys, func_names, payload_bytes, frontier, last)
 *       the next update_graph chunk, cut as shoal._dask.task_chunks cuts it, its tasks written
 *       as the msgpack bytes msgpack-python would write for the task dicts task_chunks makes
 *       from DirectCalls (no dict is made, and the client sends the bytes as they are).
 *
 * A PlainGraph holds the graph's keys and nodes as plain_graph found them, so a change to the
 * dict afterwards (from another thread) changes nothing here. Keys are hashed and compared by
 * Python's own protocol while the graph is checked, so a key type with a Python __eq__ or
 * __hash__ may run code then; nothing is borrowed across such a call.
 *
 * In the executor (shoal.executor; docs/python.md, "How the executor runs tasks"):
 *
 *   runs_batch(header, frames, ...) -> RunBatch | None
 *       a runs message, its raw header checked whole as split_runs checks it;
 *   RunBatch.next()
 *       runs its next run when it is a plain call over msgpack inputs with a scalar result,
 *       and answers it, or hands it to the Python path;
 *   run_plain(...)
 *       the same run for a run the Python path already split;
 *   task_enter, task_leave, task_current
 *       the task each thread runs (shoal._worker), kept without a Python object per run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------
 * msgpack, the subset a literal payload holds, byte for byte as msgpack-python's Packer
 * (use_bin_type=True) writes it: the smallest form of each int, floats as float64. */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, Py_ssize_t n) {
    if (b->len + n <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int put_byte(buf_t *b, unsigned char c) {
    if (buf_reserve(b, 1) < 0) return -1;
    b->p[b->len++] = (char)c;
    return 0;
}

/* c, then v big-endian in n bytes */
static int put_be(buf_t *b, unsigned char c, unsigned long long v, int n) {
    if (buf_reserve(b, 1 + n) < 0) return -1;
    b->p[b->len++] = (char)c;
    for (int i = n - 1; i >= 0; i--) b->p[b->len++] = (char)((v >> (8 * i)) & 0xff);
    return 0;
}

static int put_raw(buf_t *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static int put_array(buf_t *b, Py_ssize_t n) {
    if (n < 16) return put_byte(b, (unsigned char)(0x90 | n));
    if (n < 65536) return put_be(b, 0xdc, (unsigned long long)n, 2);
    if ((unsigned long long)n <= 0xffffffffULL) return put_be(b, 0xdd, (unsigned long long)n, 4);
    PyErr_SetString(PyExc_ValueError, "shoal: too many arguments for msgpack");
    return -1;
}

static int put_uint(buf_t *b, unsigned long long v) {
    if (v < 128) return put_byte(b, (unsigned char)v);
    if (v < 256) return put_be(b, 0xcc, v, 1);
    if (v < 65536) return put_be(b, 0xcd, v, 2);
    if (v < 4294967296ULL) return put_be(b, 0xce, v, 4);
    return put_be(b, 0xcf, v, 8);
}

static int put_int(buf_t *b, long long v) {
    if (v >= 0) return put_uint(b, (unsigned long long)v);
    if (v >= -32) return put_byte(b, (unsigned char)(v & 0xff));
    if (v >= -128) return put_be(b, 0xd0, (unsigned long long)v, 1);
    if (v >= -32768) return put_be(b, 0xd1, (unsigned long long)v, 2);
    if (v >= -2147483648LL) return put_be(b, 0xd2, (unsigned long long)v, 4);
    return put_be(b, 0xd3, (unsigned long long)v, 8);
}

/* a string of n bytes (under 4 GiB), UTF-8 */
static int put_strn(buf_t *b, const char *s, Py_ssize_t n) {
    int r;
    if (n < 32) r = put_byte(b, (unsigned char)(0xa0 | n));
    else if (n < 256) r = put_be(b, 0xd9, (unsigned long long)n, 1);
    else if (n < 65536) r = put_be(b, 0xda, (unsigned long long)n, 2);
    else r = put_be(b, 0xdb, (unsigned long long)n, 4);
    return r < 0 ? -1 : put_raw(b, s, n);
}

#define PUT_LIT(b, s) put_strn((b), (s), (Py_ssize_t)(sizeof(s) - 1))

/* a str's UTF-8: 0 written; 1 none that msgpack carries (a lone surrogate, or 4 GiB or more:
 * nothing written, no exception); -1 on error */
static int put_str(buf_t *b, PyObject *s) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
        PyErr_Clear();
        return 1;
    }
    if ((unsigned long long)n > 0xffffffffULL) return 1;
    return put_strn(b, u, n);
}

/* bytes of n (under 4 GiB) */
static int put_bin(buf_t *b, const char *s, Py_ssize_t n) {
    int r;
    if (n < 256) r = put_be(b, 0xc4, (unsigned long long)n, 1);
    else if (n < 65536) r = put_be(b, 0xc5, (unsigned long long)n, 2);
    else r = put_be(b, 0xc6, (unsigned long long)n, 4);
    return r < 0 ? -1 : put_raw(b, s, n);
}

/* an int in msgpack's range (-2**63 .. 2**64-1); 1 when out of it (no exception), -1 on error */
static int put_pylong(buf_t *b, PyObject *a) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(a, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow == 0) return put_int(b, v);
    if (overflow < 0) return 1;
    unsigned long long u = PyLong_AsUnsignedLongLong(a);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return 1;
    }
    return put_uint(b, u);
}

/* A literal argument: 0 written, 1 not a literal a payload carries (nothing written, no
 * exception), -1 on error. */
static int put_literal(buf_t *b, PyObject *a) {
    if (a == Py_None) return put_byte(b, 0xc0);
    if (a == Py_True) return put_byte(b, 0xc3);
    if (a == Py_False) return put_byte(b, 0xc2);
    if (PyLong_CheckExact(a)) return put_pylong(b, a);
    if (PyUnicode_CheckExact(a)) return put_str(b, a);
    if (PyFloat_CheckExact(a)) {
        double d = PyFloat_AS_DOUBLE(a);
        unsigned long long u;
        memcpy(&u, &d, 8);
        return put_be(b, 0xcb, u, 8);
    }
    if (PyBytes_CheckExact(a)) {
        if ((unsigned long long)PyBytes_GET_SIZE(a) > 0xffffffffULL) return 1;
        return put_bin(b, PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a));
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------
 * The graph, checked and indexed: plain_graph makes a PlainGraph, plain_wire reads it.
 *
 * Keys are numbered by their place in the dict, and every argument that names a key is
 * resolved to that number once, when the graph is checked (one dict lookup per argument): the
 * walk, the counts and the tasks then make no hash lookup. The keys and nodes are held as two
 * tuples taken in one pass over the dict, which Python code cannot change: a change to the
 * dict afterwards, or code a key's __eq__/__hash__/__repr__ or a callback runs, changes
 * nothing here. */

typedef struct {
    PyObject_HEAD
    PyObject *keys;      /* tuple: key number -> key */
    PyObject *nodes;     /* tuple: key number -> node (a tuple) */
    Py_ssize_t n;
    Py_ssize_t *arg_off; /* node i's arguments: argk[arg_off[i] .. arg_off[i+1]) */
    Py_ssize_t *argk;    /* per argument, the number of the key it names, or -1 (a literal) */
    Py_ssize_t *needed;  /* per key, the nodes naming it */
    Py_ssize_t *left;    /* per key, the nodes naming it not sent yet */
    Py_ssize_t *order;   /* key numbers, each after those it depends on */
    Py_ssize_t *mark;    /* per key, the last node (>= 0) that named it while the graph was
                            checked, then the last stamp (< -1) of a task that named it */
    Py_ssize_t stamp;    /* the last stamp given to a task being made */
    PyObject **wire;     /* per key its wire key, from when its node is sent while a later node
                            names it (new references; NULL otherwise) */
    Py_ssize_t sent;     /* order[:sent] has been sent */
    PyObject *groups;    /* a tuple key's name -> its group */
    int busy;            /* plain_wire is running (a callback must not call it again) */
    int failed;          /* plain_wire failed part-way: what it counted as sent was not */
} PlainGraph;

static int pg_traverse(PlainGraph *g, visitproc visit, void *arg) {
    Py_VISIT(g->keys);
    Py_VISIT(g->nodes);
    Py_VISIT(g->groups);
    if (g->wire != NULL)
        for (Py_ssize_t i = 0; i < g->n; i++) Py_VISIT(g->wire[i]); /* a repr's str subclass may hold more */
    return 0;
}

static int pg_clear(PlainGraph *g) {
    if (g->wire != NULL)
        for (Py_ssize_t i = 0; i < g->n; i++) Py_CLEAR(g->wire[i]);
    Py_CLEAR(g->keys);
    Py_CLEAR(g->nodes);
    Py_CLEAR(g->groups);
    return 0;
}

static void pg_dealloc(PlainGraph *g) {
    PyObject_GC_UnTrack(g);
    pg_clear(g);
    PyMem_Free(g->wire);
    PyMem_Free(g->arg_off);
    PyMem_Free(g->argk);
    PyMem_Free(g->needed);
    PyMem_Free(g->left);
    PyMem_Free(g->order);
    PyMem_Free(g->mark);
    PyObject_GC_Del(g);
}

/* 0 when g can be read; -1 with RuntimeError when not */
static int pg_usable(PlainGraph *g) {
    if (g->keys == NULL || g->nodes == NULL || g->groups == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "shoal: this PlainGraph was cleared");
        return -1;
    }
    return 0;
}

static PyObject *pg_needed(PlainGraph *g, PyObject *unused) {
    if (pg_usable(g) < 0) return NULL;
    PyObject *keys = g->keys, *out = PyDict_New();
    Py_INCREF(keys); /* PyDict_SetItem may run a key's __eq__ */
    for (Py_ssize_t i = 0; out != NULL && i < g->n; i++) {
        if (g->needed[i] == 0) continue;
        PyObject *c = PyLong_FromSsize_t(g->needed[i]);
        if (c == NULL || PyDict_SetItem(out, PyTuple_GET_ITEM(keys, i), c) < 0) Py_CLEAR(out);
        Py_XDECREF(c);
    }
    Py_DECREF(keys);
    return out;
}

static PyObject *plain_wire(PlainGraph *g, PyObject *args);

static PyMethodDef pg_methods[] = {
    {"plain_wire", (PyCFunction)plain_wire, METH_VARARGS,
     "plain_wire(limit, max_bytes, func_name, group, ann_wire, ann_n) -> (tasks_wire, keys, func_names,"
     " payload_bytes, frontier, last): the next chunk"},
    {"needed", (PyCFunction)pg_needed, METH_NOARGS, "per key named by a node, the number of nodes naming it"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PlainGraphType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shoal._speedups.PlainGraph",
    .tp_basicsize = sizeof(PlainGraph),
    .tp_dealloc = (destructor)pg_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A graph of plain calls, checked and indexed by plain_graph.",
    .tp_traverse = (traverseproc)pg_traverse,
    .tp_clear = (inquiry)pg_clear,
    .tp_methods = pg_methods,
};

static void *alloc_array(Py_ssize_t n, size_t size) {
    void *p = (size_t)(n > 0 ? n : 1) > PY_SSIZE_T_MAX / size ? NULL : PyMem_Calloc((size_t)(n > 0 ? n : 1), size);
    if (p == NULL) PyErr_NoMemory();
    return p;
}

/* Whether a tuple key holds only str, int, float, bool, None, bytes and such tuples (nested at
 * most 32 deep): its repr, its wire key, runs no Python code, is the same every time and is
 * valid UTF-8. */
static int plain_tuple(PyObject *t, int depth) {
    if (depth > 32) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *x = PyTuple_GET_ITEM(t, i);
        if (PyUnicode_CheckExact(x) || PyLong_CheckExact(x) || PyFloat_CheckExact(x) || PyBool_Check(x) ||
            x == Py_None || PyBytes_CheckExact(x))
            continue;
        if (!PyTuple_CheckExact(x) || !plain_tuple(x, depth + 1)) return 0;
    }
    return 1;
}

/* Checks node i and records what each argument names at g->argk[*m...]: 1 a plain call this
 * module sends as written, 0 not, -1 error. */
static int index_node(PlainGraph *g, PyObject *index, Py_ssize_t i, Py_ssize_t *m, Py_ssize_t *cap, buf_t *scratch) {
    PyObject *node = PyTuple_GET_ITEM(g->nodes, i); /* held by g->nodes, which nothing can change */
    if (!PyTuple_CheckExact(node) || PyTuple_GET_SIZE(node) == 0 || !PyCallable_Check(PyTuple_GET_ITEM(node, 0)))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(node);
    if (*m + n > *cap) {
        Py_ssize_t nc = (*cap + n) * 2;
        Py_ssize_t *p = nc > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Py_ssize_t) ? NULL
                        : PyMem_Realloc(g->argk, (size_t)nc * sizeof(Py_ssize_t));
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        g->argk = p;
        *cap = nc;
    }
    for (Py_ssize_t a_i = 1; a_i < n; a_i++) {
        PyObject *a = PyTuple_GET_ITEM(node, a_i);
        int literal = a == Py_None || PyBytes_CheckExact(a);
        if (!literal && !PyUnicode_CheckExact(a) && !PyTuple_CheckExact(a) && !PyLong_Check(a) && !PyFloat_CheckExact(a))
            return 0; /* not a literal a payload carries, and not a key (dask's rule: an int,
                         float, str or tuple equal to a key is a reference to it) */
        PyObject *pos = PyDict_GetItemWithError(index, a);
        if (pos == NULL) {
            if (PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_TypeError)) return -1;
                PyErr_Clear(); /* an unhashable tuple */
                return 0;
            }
            if (PyTuple_CheckExact(a)) return 0; /* a tuple that is not a key */
            scratch->len = 0;
            int r = put_literal(scratch, a); /* one a payload can carry? */
            if (r != 0) return r < 0 ? -1 : 0;
            g->argk[(*m)++] = -1;
            continue;
        }
        if (literal || PyBool_Check(a) || PyFloat_CheckExact(a))
            return 0; /* equal to a key of another type: dask decides, in the Python path */
        Py_ssize_t j = PyLong_CheckExact(pos) ? PyLong_AsSsize_t(pos) : -1;
        if (j < 0 || j >= g->n) { /* index is this module's own; a key's __eq__ reached it */
            PyErr_Clear();
            PyErr_SetString(PyExc_RuntimeError, "shoal: the graph's keys changed while it was read");
            return -1;
        }
        PyObject *key = PyTuple_GET_ITEM(g->keys, j); /* its wire key is made from the graph's key */
        if (PyUnicode_CheckExact(key)) { /* itself: one msgpack carries? */
            scratch->len = 0;
            int r = put_str(scratch, key);
            if (r != 0) return r < 0 ? -1 : 0;
        } else if (!PyLong_CheckExact(key) && !(PyTuple_CheckExact(key) && plain_tuple(key, 0))) {
            return 0; /* a repr that may run code, change or fail: the Python path makes it */
        }
        g->argk[(*m)++] = j;
        if (g->mark[j] != i) { /* nodes naming it, each once */
            g->mark[j] = i;
            g->needed[j]++;
        }
    }
    return 1;
}

/* Depth-first from root, as shoal._dask.node_order: each node after the nodes it names. */
static void walk(PlainGraph *g, Py_ssize_t root, unsigned char *seen, Py_ssize_t *stack, Py_ssize_t *next,
                 Py_ssize_t *no) {
    if (seen[root]) return;
    seen[root] = 1;
    Py_ssize_t sp = 0;
    stack[sp] = root;
    next[sp++] = g->arg_off[root];
    while (sp > 0) {
        Py_ssize_t k = stack[sp - 1], pushed = 0;
        while (next[sp - 1] < g->arg_off[k + 1]) {
            Py_ssize_t d = g->argk[next[sp - 1]++];
            if (d >= 0 && !seen[d]) {
                seen[d] = 1;
                stack[sp] = d; /* at most n frames: each key is pushed once */
                next[sp++] = g->arg_off[d];
                pushed = 1;
                break;
            }
        }
        if (!pushed) {
            sp--;
            g->order[(*no)++] = k;
        }
    }
}

static PyObject *plain_graph(PyObject *self, PyObject *dsk) {
    (void)self;
    if (!PyDict_CheckExact(dsk)) Py_RETURN_NONE;
    PlainGraph *g = PyObject_GC_New(PlainGraph, &PlainGraphType);
    if (g == NULL) return NULL;
    g->keys = g->nodes = g->groups = NULL;
    g->arg_off = g->argk = g->needed = g->left = g->order = g->mark = NULL;
    g->wire = NULL;
    g->n = g->sent = 0;
    g->stamp = -1;
    g->busy = g->failed = 0; /* not tracked by the collector until whole: nothing may find it */
    PyObject *index = NULL, *out = NULL;
    unsigned char *seen = NULL;
    Py_ssize_t *stack = NULL, *next = NULL;
    buf_t scratch = {0};
    /* a snapshot of the graph: both tuples made first, then filled in one pass that allocates
     * nothing (so nothing can run and change the dict in between) */
    Py_ssize_t n = PyDict_Size(dsk);
    /* (untracked while their items are NULL: a finalizer the allocations below run could
     * otherwise find them through gc.get_objects) */
    g->keys = PyTuple_New(n);
    if (g->keys != NULL && n > 0) PyObject_GC_UnTrack(g->keys);
    g->nodes = g->keys == NULL ? NULL : PyTuple_New(n);
    if (g->nodes != NULL && n > 0) PyObject_GC_UnTrack(g->nodes);
    g->groups = g->nodes == NULL ? NULL : PyDict_New();
    if (g->keys == NULL || g->nodes == NULL || g->groups == NULL) goto done;
    Py_ssize_t pos = 0, i = 0;
    PyObject *k, *v;
    if (PyDict_Size(dsk) != n) {
        PyErr_SetString(PyExc_RuntimeError, "shoal: the graph changed while it was read");
        goto done;
    }
    while (PyDict_Next(dsk, &pos, &k, &v)) {
        Py_INCREF(k);
        Py_INCREF(v);
        PyTuple_SET_ITEM(g->keys, i, k);
        PyTuple_SET_ITEM(g->nodes, i, v);
        i++;
    }
    if (n > 0) {
        PyObject_GC_Track(g->keys);
        PyObject_GC_Track(g->nodes);
    }
    g->n = n;
    index = PyDict_New();
    if (index == NULL) goto done;
    for (i = 0; i < n; i++) {
        PyObject *num = PyLong_FromSsize_t(i);
        int r = num == NULL ? -1 : PyDict_SetItem(index, PyTuple_GET_ITEM(g->keys, i), num);
        Py_XDECREF(num);
        if (r < 0) goto done;
    }
    if (PyDict_Size(index) != n) { /* two keys equal by an __eq__ that changed its mind */
        out = Py_None;
        Py_INCREF(out);
        goto done;
    }
    Py_ssize_t cap = 2 * n + 16, m = 0;
    g->arg_off = alloc_array(n + 1, sizeof(Py_ssize_t));
    g->argk = alloc_array(cap, sizeof(Py_ssize_t));
    g->needed = alloc_array(n, sizeof(Py_ssize_t));
    g->left = alloc_array(n, sizeof(Py_ssize_t));
    g->order = alloc_array(n, sizeof(Py_ssize_t));
    g->mark = alloc_array(n, sizeof(Py_ssize_t));
    g->wire = alloc_array(n, sizeof(PyObject *));
    seen = alloc_array(n, 1);
    stack = alloc_array(n, sizeof(Py_ssize_t));
    next = alloc_array(n, sizeof(Py_ssize_t));
    if (!g->arg_off || !g->argk || !g->needed || !g->left || !g->order || !g->mark || !g->wire || !seen || !stack ||
        !next)
        goto done;
    for (i = 0; i < n; i++) g->mark[i] = -1;
    for (i = 0; i < n; i++) {
        g->arg_off[i] = m;
        int ok = index_node(g, index, i, &m, &cap, &scratch);
        if (ok < 0) goto done;
        if (ok == 0) {
            out = Py_None;
            Py_INCREF(out);
            goto done;
        }
    }
    g->arg_off[n] = m;
    memcpy(g->left, g->needed, (size_t)n * sizeof(Py_ssize_t));
    Py_ssize_t no = 0;
    for (i = 0; i < n; i++) /* from the keys nothing names */
        if (g->needed[i] == 0) walk(g, i, seen, stack, next, &no);
    for (i = 0; i < n; i++) walk(g, i, seen, stack, next, &no); /* what is left: cycles */
    PyObject_GC_Track(g);
    out = (PyObject *)g;
    Py_INCREF(out);
done:
    PyMem_Free(scratch.p);
    PyMem_Free(seen);
    PyMem_Free(stack);
    PyMem_Free(next);
    Py_XDECREF(index);
    Py_DECREF(g);
    return out;
}

/* ------------------------------------------------------------------------------------------
 * plain_wire */

#define FUNC_CACHE 8

typedef struct {
    PyObject *fn[FUNC_CACHE]; /* strong references, as are the names */
    PyObject *name[FUNC_CACHE];
    int next;
    PyObject *namer;
} func_cache_t;

static void func_cache_clear(func_cache_t *c) {
    for (int i = 0; i < FUNC_CACHE; i++) {
        Py_CLEAR(c->fn[i]);
        Py_CLEAR(c->name[i]);
    }
}

/* func_name(fn), remembered by identity for the few functions a graph uses; new reference */
static PyObject *func_name(func_cache_t *c, PyObject *fn) {
    for (int i = 0; i < FUNC_CACHE; i++) {
        if (c->fn[i] == fn) {
            Py_INCREF(c->name[i]);
            return c->name[i];
        }
    }
    PyObject *name = PyObject_CallOneArg(c->namer, fn);
    if (name == NULL) return NULL;
    if (!PyUnicode_Check(name)) {
        Py_DECREF(name);
        PyErr_SetString(PyExc_TypeError, "shoal: func_name must return a str");
        return NULL;
    }
    int at = c->next;
    c->next = (c->next + 1) % FUNC_CACHE;
    PyObject *old_fn = c->fn[at], *old_name = c->name[at];
    Py_INCREF(fn);
    Py_INCREF(name);
    c->fn[at] = fn;
    c->name[at] = name;
    Py_XDECREF(old_fn); /* after the cache is whole again: these may run code */
    Py_XDECREF(old_name);
    return name;
}

/* group(key), from groups by the name of a tuple key with a str name (new reference) */
static PyObject *group_of(PyObject *key, PyObject *group, PyObject *groups) {
    PyObject *name = NULL;
    if (PyTuple_CheckExact(key) && PyTuple_GET_SIZE(key) > 0 && PyUnicode_CheckExact(PyTuple_GET_ITEM(key, 0))) {
        name = PyTuple_GET_ITEM(key, 0);
        PyObject *g = PyDict_GetItemWithError(groups, name);
        if (g != NULL) {
            Py_INCREF(g);
            return g;
        }
        if (PyErr_Occurred()) return NULL;
    }
    PyObject *g = PyObject_CallOneArg(group, key);
    if (g == NULL) return NULL;
    if (name != NULL && PyDict_SetItem(groups, name, g) < 0) {
        Py_DECREF(g);
        return NULL;
    }
    return g;
}

static PyObject *s_key;

/* repr(key) for a tuple of ints and strs that need no escape, a dask key's usual shape
 * (("sum", 3, 1234)), written directly: the same characters as tuple's repr, without a str
 * object per part and their join (half of a million-key conversion went there). NULL without
 * an exception for any other key: the caller calls repr. */
static PyObject *tuple_key_repr(PyObject *key) {
    if (!PyTuple_CheckExact(key)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(key);
    if (n == 0 || n > 16) return NULL;
    char small[256], *out = small;
    Py_ssize_t len = 0, cap = (Py_ssize_t)sizeof(small);
    out[len++] = '(';
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(key, i);
        if (i > 0) {
            if (len + 2 > cap) return NULL;
            out[len++] = ',';
            out[len++] = ' ';
        }
        if (PyLong_CheckExact(a)) { /* (not a bool: its repr is a word) */
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(a, &overflow);
            if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return NULL;
            }
            int w = snprintf(out + len, (size_t)(cap - len), "%lld", v);
            if (w < 0 || w >= cap - len) return NULL;
            len += w;
        } else if (PyUnicode_CheckExact(a) && PyUnicode_IS_ASCII(a)) {
            Py_ssize_t m = PyUnicode_GET_LENGTH(a);
            const char *c = (const char *)PyUnicode_1BYTE_DATA(a);
            if (len + m + 2 > cap) return NULL;
            for (Py_ssize_t j = 0; j < m; j++) /* repr writes these as they are, in '' */
                if (c[j] < 0x20 || c[j] == 0x7f || c[j] == '\\' || c[j] == '\'') return NULL;
            out[len++] = '\'';
            memcpy(out + len, c, (size_t)m);
            len += m;
            out[len++] = '\'';
        } else {
            return NULL;
        }
    }
    if (len + 2 > cap) return NULL;
    if (n == 1) out[len++] = ',';
    out[len++] = ')';
    return PyUnicode_DecodeASCII(out, len, NULL);
}

/* key k's wire key (shoal._keys.wire_key: a str key itself, any other its repr); a new
 * reference. Kept from when its node is sent for as long as a later node names it. */
static PyObject *wire_key(PlainGraph *g, PyObject *keys, Py_ssize_t k) {
    PyObject *w = g->wire[k];
    if (w != NULL) {
        Py_INCREF(w);
        return w;
    }
    PyObject *key = PyTuple_GET_ITEM(keys, k);
    if (PyUnicode_CheckExact(key)) {
        Py_INCREF(key);
        return key;
    }
    w = tuple_key_repr(key);
    if (w != NULL || PyErr_Occurred()) return w;
    w = PyObject_Repr(key);
    if (w != NULL && !PyUnicode_Check(w)) {
        Py_DECREF(w);
        PyErr_SetString(PyExc_TypeError, "shoal: a key's repr is not a str");
        return NULL;
    }
    return w;
}

static int put_map(buf_t *b, Py_ssize_t n) {
    if (n < 16) return put_byte(b, (unsigned char)(0x80 | n));
    return put_be(b, 0xde, (unsigned long long)n, 2); /* a task has at most 6 + 4 fields */
}

/* a str of the task's map: 0 written, -1 with an exception (one msgpack cannot carry is a
 * ValueError, as msgpack's packer would fail on it) */
static int put_field_str(buf_t *b, PyObject *s, const char *what) {
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "shoal: a task's %s is not a str", what);
        return -1;
    }
    int r = put_str(b, s);
    if (r > 0) PyErr_Format(PyExc_ValueError, "shoal: a task's %s msgpack cannot carry", what);
    return r == 0 ? 0 : -1;
}

/* Node k's task, written to out as msgpack-python's Packer(use_bin_type=True) writes the map
 * shoal._dask._node_task makes from its DirectCall: key, kind, func, payload, group, deps
 * (when it names keys), then the fields ann_wire holds (ann_n of them, encoded by the caller;
 * never one of those six). The payload, in pay, is left there for its size; the task's wire
 * key in *wk and its function's name in *fn (new references); the numbers of the keys it names,
 * each once, in deps[0 .. *ndeps). */
static int put_task(PlainGraph *g, PyObject *keys, PyObject *nodes, Py_ssize_t k, buf_t *pay, buf_t *out,
                    func_cache_t *fc, PyObject *group, const char *ann_wire, Py_ssize_t ann_len,
                    Py_ssize_t ann_n, PyObject **wk, PyObject **fn, Py_ssize_t *deps, Py_ssize_t *ndeps) {
    PyObject *node = PyTuple_GET_ITEM(nodes, k);
    Py_ssize_t nargs = PyTuple_GET_SIZE(node) - 1, off = g->arg_off[k], nrefs = 0, stamp = --g->stamp;
    PyObject *fname = NULL, *grp = NULL;
    int rc = -1;
    *wk = *fn = NULL;
    *ndeps = 0;
    pay->len = 0;
    if (put_byte(pay, 0x00) < 0) goto done;
    Py_ssize_t head = pay->len; /* [args] or [args, refs]: set once refs are known */
    if (put_byte(pay, 0x91) < 0 || put_array(pay, nargs) < 0) goto done;
    for (Py_ssize_t t = 0; t < nargs; t++) {
        Py_ssize_t d = g->argk[off + t];
        int r;
        if (d < 0) {
            r = put_literal(pay, PyTuple_GET_ITEM(node, t + 1));
        } else {
            nrefs++;
            PyObject *w = wire_key(g, keys, d);
            if (w == NULL) goto done;
            r = put_str(pay, w);
            if (r == 0 && g->mark[d] != stamp) { /* a dependency once, in the order named */
                g->mark[d] = stamp;
                deps[(*ndeps)++] = d;
            }
            Py_DECREF(w);
        }
        if (r > 0) PyErr_SetString(PyExc_ValueError, "shoal: an argument msgpack cannot carry");
        if (r != 0) goto done;
    }
    if (nrefs > 0) {
        pay->p[head] = (char)0x92;
        if (put_array(pay, nrefs) < 0) goto done;
        for (Py_ssize_t t = 0; t < nargs; t++)
            if (g->argk[off + t] >= 0 && put_uint(pay, (unsigned long long)t) < 0) goto done;
    }
    if ((unsigned long long)pay->len > 0xffffffffULL) {
        PyErr_SetString(PyExc_ValueError, "shoal: a task's payload of 4 GiB or more");
        goto done;
    }
    *wk = wire_key(g, keys, k);
    if (*wk == NULL) goto done;
    fname = func_name(fc, PyTuple_GET_ITEM(node, 0));
    if (fname == NULL) goto done;
    grp = group_of(PyTuple_GET_ITEM(keys, k), group, g->groups);
    if (grp == NULL) goto done;
    if (put_map(out, 5 + (*ndeps > 0) + ann_n) < 0 || PUT_LIT(out, "key") < 0 || put_field_str(out, *wk, "key") < 0 ||
        PUT_LIT(out, "kind") < 0 || PUT_LIT(out, "py") < 0 || PUT_LIT(out, "func") < 0 ||
        put_field_str(out, fname, "func") < 0 || PUT_LIT(out, "payload") < 0 || put_bin(out, pay->p, pay->len) < 0 ||
        PUT_LIT(out, "group") < 0 || put_field_str(out, grp, "group") < 0)
        goto done;
    if (*ndeps > 0) {
        if (PUT_LIT(out, "deps") < 0 || put_array(out, *ndeps) < 0) goto done;
        for (Py_ssize_t j = 0; j < *ndeps; j++) {
            PyObject *w = wire_key(g, keys, deps[j]);
            int r = w == NULL ? -1 : put_field_str(out, w, "dependency");
            Py_XDECREF(w);
            if (r < 0) goto done;
        }
    }
    if (put_raw(out, ann_wire, ann_len) < 0) goto done;
    rc = 0;
    *fn = fname;
    fname = NULL;
done:
    if (rc < 0) Py_CLEAR(*wk);
    Py_XDECREF(fname);
    Py_XDECREF(grp);
    return rc;
}

#define TASK_OVERHEAD 200 /* shoal._chunk.TASK_OVERHEAD */

/* The next chunk, as shoal._dask.task_chunks cuts it: at most limit nodes, and at most
 * max_bytes counting each task as its payload plus TASK_OVERHEAD unless one task alone is
 * bigger; written as the msgpack array of its tasks that an update_graph message carries. */
static PyObject *plain_wire(PlainGraph *g, PyObject *args) {
    PyObject *namer, *group;
    Py_ssize_t limit, max_bytes, ann_n;
    const char *ann_wire;
    Py_ssize_t ann_len;
    if (!PyArg_ParseTuple(args, "nnOOy#n:plain_wire", &limit, &max_bytes, &namer, &group, &ann_wire, &ann_len, &ann_n))
        return NULL;
    if (ann_n < 0 || ann_n > 4) {
        PyErr_SetString(PyExc_ValueError, "plain_wire: ann_n must be 0 to 4 (priority, retries, resources, workers)");
        return NULL;
    }
    if (pg_usable(g) < 0) return NULL;
    if (g->busy || g->failed) {
        PyErr_SetString(PyExc_RuntimeError, g->busy ? "shoal: plain_wire called again while it runs"
                                                    : "shoal: plain_wire failed before: the graph's chunks are lost");
        return NULL;
    }
    g->busy = 1;
    PyObject *keys = g->keys, *nodes = g->nodes; /* held here (the caller's reference keeps g
                                                    from being cleared; these keep their items) */
    Py_INCREF(keys);
    Py_INCREF(nodes);
    PyObject *wkeys = PyList_New(0), *frontier = PyList_New(0), *fnames = PySet_New(NULL), *raw = NULL, *out = NULL;
    Py_ssize_t *sent = alloc_array(limit > 0 ? (limit < g->n ? limit : g->n) : 1, sizeof(Py_ssize_t));
    Py_ssize_t *deps = NULL, ndeps = 0, nsent = 0, nbytes = 0, paid = 0, depcap = 0;
    buf_t pay = {0}, body = {0}, head = {0};
    func_cache_t fc = {.namer = namer};
    if (wkeys == NULL || frontier == NULL || fnames == NULL || sent == NULL) goto done;
    while (g->sent < g->n && nsent < limit) {
        Py_ssize_t k = g->order[g->sent], nargs = PyTuple_GET_SIZE(PyTuple_GET_ITEM(nodes, k)) - 1;
        if (nargs > depcap) {
            PyMem_Free(deps);
            depcap = nargs;
            deps = alloc_array(depcap, sizeof(Py_ssize_t));
            if (deps == NULL) goto done;
        }
        PyObject *wk, *fn;
        Py_ssize_t mark = body.len;
        if (put_task(g, keys, nodes, k, &pay, &body, &fc, group, ann_wire, ann_len, ann_n, &wk, &fn, deps, &ndeps) < 0)
            goto done;
        Py_ssize_t size = pay.len + TASK_OVERHEAD;
        if (nsent > 0 && (size > max_bytes || nbytes > max_bytes - size)) {
            body.len = mark; /* it starts the next chunk */
            Py_DECREF(wk);
            Py_DECREF(fn);
            break;
        }
        int r = PyList_Append(wkeys, wk) < 0 || PySet_Add(fnames, fn) < 0 ? -1 : 0;
        Py_DECREF(fn);
        if (r < 0) {
            Py_DECREF(wk);
            goto done;
        }
        /* from here on the node is sent: nothing below fails */
        if (g->left[k] > 0 && g->wire[k] == NULL) g->wire[k] = wk; /* a later node names it */
        else Py_DECREF(wk);
        nbytes += size;
        paid += pay.len;
        for (Py_ssize_t j = 0; j < ndeps; j++) /* one node naming each dependency fewer to send */
            if (--g->left[deps[j]] == 0) Py_CLEAR(g->wire[deps[j]]);
        sent[nsent++] = k;
        g->sent++;
    }
    for (Py_ssize_t j = 0; j < nsent; j++) { /* this chunk's keys that later chunks name */
        Py_ssize_t k = sent[j];
        if (g->left[k] <= 0) continue;
        PyObject *w = wire_key(g, keys, k);
        int r = w == NULL ? -1 : PyList_Append(frontier, w);
        Py_XDECREF(w);
        if (r < 0) goto done;
    }
    if (put_array(&head, nsent) < 0) goto done;
    raw = PyBytes_FromStringAndSize(NULL, head.len + body.len);
    if (raw == NULL) goto done;
    memcpy(PyBytes_AS_STRING(raw), head.p, (size_t)head.len);
    if (body.len > 0) memcpy(PyBytes_AS_STRING(raw) + head.len, body.p, (size_t)body.len);
    out = Py_BuildValue("(OOOnOO)", raw, wkeys, fnames, paid, frontier, g->sent >= g->n ? Py_True : Py_False);
done:
    if (out == NULL && nsent > 0) g->failed = 1; /* nodes counted as sent that nobody will */
    g->busy = 0;
    func_cache_clear(&fc);
    PyMem_Free(pay.p);
    PyMem_Free(body.p);
    PyMem_Free(head.p);
    PyMem_Free(sent);
    PyMem_Free(deps);
    Py_DECREF(keys);
    Py_DECREF(nodes);
    Py_XDECREF(raw);
    Py_XDECREF(wkeys);
    Py_XDECREF(frontier);
    Py_XDECREF(fnames);
    return out;
}

/* literal_payload(args, refs) as shoal._refs writes it: for tests of the encoder */
static PyObject *literal_payload(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *items, *refs;
    if (!PyArg_ParseTuple(args, "O!O!:literal_payload", &PyList_Type, &items, &PyList_Type, &refs)) return NULL;
    buf_t b = {0};
    PyObject *out = NULL;
    Py_ssize_t nrefs = PyList_GET_SIZE(refs);
    if (put_byte(&b, 0x00) < 0 || put_array(&b, nrefs ? 2 : 1) < 0 || put_array(&b, PyList_GET_SIZE(items)) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        int r = put_literal(&b, PyList_GET_ITEM(items, i));
        if (r > 0) PyErr_SetString(PyExc_TypeError, "literal_payload: not a literal a payload carries");
        if (r != 0) goto done;
    }
    if (nrefs) {
        if (put_array(&b, nrefs) < 0) goto done;
        for (Py_ssize_t i = 0; i < nrefs; i++) {
            Py_ssize_t v = PyLong_AsSsize_t(PyList_GET_ITEM(refs, i));
            if (v < 0) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "literal_payload: refs are positions");
                goto done;
            }
            if (put_uint(&b, (unsigned long long)v) < 0) goto done;
        }
    }
    out = PyBytes_FromStringAndSize(b.p, b.len);
done:
    PyMem_Free(b.p);
    return out;
}

/* ------------------------------------------------------------------------------------------
 * The executor's run of a plain call: shoal.executor.Executor.run_entry for the runs a
 * client.get of plain calls sends (a literal payload over dependencies that arrive as msgpack
 * frames), returning a scalar. In Python, decoding the inputs and the payload, calling and
 * packing the result was about 40 % of an executor's CPU per run in the million-task graph
 * (docs/performance.md). Anything else, and anything it cannot decode exactly as msgpack-python
 * does, it hands back untouched before calling anything: the Python path then runs the task and
 * reports its errors. */

#define MP_MAX_DEPTH 32

/* the n bytes at *pp, big-endian; -1 when fewer remain */
static int mp_be(const unsigned char **pp, const unsigned char *end, int n, unsigned long long *out) {
    if (end - *pp < n) return -1;
    unsigned long long v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | (*pp)[i];
    *pp += n;
    *out = v;
    return 0;
}

/* One msgpack value of the subset a literal payload or a scalar result holds (nil, bool, int,
 * float, str, bin, array), as msgpack.unpackb(raw=False) makes it: a new reference, or NULL for
 * anything else, a malformed or truncated value, or one nested deeper than MP_MAX_DEPTH (an
 * exception may then be set: the caller clears it and takes the Python path). A declared
 * length is checked against the bytes left before anything is allocated for it. */
static int rd_int(const unsigned char **pp, const unsigned char *end, unsigned long long *u, int *neg);

static PyObject *mp_value(const unsigned char **pp, const unsigned char *end, int depth) {
    if (*pp >= end || depth > MP_MAX_DEPTH) return NULL;
    unsigned char c = **pp;
    unsigned long long n;
    int neg;
    if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)) { /* an int, of any width */
        if (rd_int(pp, end, &n, &neg) < 0) return NULL;
        return neg ? PyLong_FromLongLong((long long)n) : PyLong_FromUnsignedLongLong(n);
    }
    (*pp)++;
    if ((c & 0xe0) == 0xa0) {
        n = c & 0x1f;
        goto str;
    }
    if ((c & 0xf0) == 0x90) {
        n = c & 0x0f;
        goto array;
    }
    switch (c) {
    case 0xc0:
        Py_INCREF(Py_None);
        return Py_None;
    case 0xc2:
        Py_INCREF(Py_False);
        return Py_False;
    case 0xc3:
        Py_INCREF(Py_True);
        return Py_True;
    case 0xc4: case 0xc5: case 0xc6:
        if (mp_be(pp, end, c == 0xc4 ? 1 : c == 0xc5 ? 2 : 4, &n) < 0 || n > (unsigned long long)(end - *pp))
            return NULL;
        *pp += n;
        return PyBytes_FromStringAndSize((const char *)*pp - n, (Py_ssize_t)n);
    case 0xca: {
        if (mp_be(pp, end, 4, &n) < 0) return NULL;
        uint32_t u = (uint32_t)n;
        float f;
        memcpy(&f, &u, 4);
        return PyFloat_FromDouble((double)f);
    }
    case 0xcb: {
        if (mp_be(pp, end, 8, &n) < 0) return NULL;
        double d;
        memcpy(&d, &n, 8);
        return PyFloat_FromDouble(d);
    }
    case 0xd9: case 0xda: case 0xdb:
        if (mp_be(pp, end, c == 0xd9 ? 1 : c == 0xda ? 2 : 4, &n) < 0) return NULL;
        goto str;
    case 0xdc: case 0xdd:
        if (mp_be(pp, end, c == 0xdc ? 2 : 4, &n) < 0) return NULL;
        goto array;
    default: /* maps, ext types: not here */
        return NULL;
    }
str:
    if (n > (unsigned long long)(end - *pp)) return NULL;
    *pp += n;
    return PyUnicode_DecodeUTF8((const char *)*pp - n, (Py_ssize_t)n, NULL);
array:
    if (n > (unsigned long long)(end - *pp)) return NULL; /* every element takes a byte at least */
    {
        PyObject *list = PyList_New((Py_ssize_t)n);
        if (list == NULL) return NULL;
        for (Py_ssize_t i = 0; i < (Py_ssize_t)n; i++) {
            PyObject *v = mp_value(pp, end, depth + 1);
            if (v == NULL) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, i, v);
        }
        return list;
    }
}

/* the one value msgpack.unpackb(raw=False) makes of a whole buffer (no bytes left over), or
 * NULL as mp_value */
static PyObject *mp_whole(PyObject *obj, Py_ssize_t skip) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *v = NULL;
    if (view.len > skip && view.itemsize == 1) { /* (msgpack refuses a buffer of wider items) */
        const unsigned char *p = (const unsigned char *)view.buf + skip, *end = (const unsigned char *)view.buf + view.len;
        v = mp_value(&p, end, 0);
        if (v != NULL && p != end) Py_CLEAR(v);
    }
    PyBuffer_Release(&view);
    return v;
}

static PyObject *s_op, *s_done, *s_id, *s_items, *s_encoding, *s_msgpack, *s_nframes, *s_nbytes, *s_seceding;

/* The call arguments of a literal payload's body (the msgpack after its zero byte, [args] or
 * [args, refs]), the value in `values` at each position in refs, as shoal._refs.load_literal
 * makes them: a new tuple, or NULL (an exception may be set: the caller clears it) for anything
 * this path does not take. */
static PyObject *literal_args(const unsigned char *p, Py_ssize_t n, PyObject *values) {
    const unsigned char *end = p + n;
    PyObject *args = NULL, *body = mp_value(&p, end, 0);
    if (body == NULL || p != end || !PyList_CheckExact(body)) goto fail;
    Py_ssize_t nb = PyList_GET_SIZE(body);
    if (nb != 1 && nb != 2) goto fail;
    args = PyList_GET_ITEM(body, 0);
    if (!PyList_CheckExact(args)) {
        args = NULL;
        goto fail;
    }
    Py_INCREF(args);
    if (nb == 2) {
        PyObject *refs = PyList_GET_ITEM(body, 1);
        if (!PyList_CheckExact(refs)) goto fail;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(refs); j++) {
            PyObject *ref = PyList_GET_ITEM(refs, j);
            if (!PyLong_CheckExact(ref)) goto fail;
            Py_ssize_t at = PyLong_AsSsize_t(ref);
            if (at < 0 || at >= PyList_GET_SIZE(args)) goto fail;
            PyObject *name = PyList_GET_ITEM(args, at);
            if (!PyUnicode_CheckExact(name)) goto fail;
            PyObject *v = PyDict_GetItemWithError(values, name); /* borrowed */
            if (v == NULL) goto fail;
            Py_INCREF(v);
            PyList_SetItem(args, at, v); /* drops the name */
        }
    }
    Py_DECREF(body);
    /* a tuple: Python code could reach a list (gc.get_referrers) and empty it while a callee
     * that borrows its arguments (a METH_FASTCALL builtin) still reads them */
    PyObject *t = PyList_AsTuple(args);
    Py_DECREF(args);
    return t;
fail:
    Py_XDECREF(args);
    Py_XDECREF(body);
    return NULL;
}

/* Call fn(*args) between enter(executor, task_id, key) and leave(task), as Executor.call does.
 * 0: *result is what fn returned (the task has left); or *result is NULL, *exc is what fn raised
 * (its traceback attached) and *task the task, still entered: Executor.call makes the error
 * answer before the task leaves, and so does the caller, who then calls leave(*task). -1: enter
 * or leave raised (the exception is set). args is a tuple, which holds the arguments while fn
 * runs. */
/* ------------------------------------------------------------------------------------------
 * The task running in each thread: shoal._worker's enter, leave and current when this module is
 * built. A run's executor, id and key are kept in thread-specific storage; the _Task object
 * that get_worker, secede or current_key look at is made the first time a task asks for it,
 * and kept until the task leaves (secede sets its conn). In Python, enter made a _Task per run
 * and set it on a threading.local, and leave read that back: 18 % of an executor's CPU on a
 * run of operator.add (docs/performance.md, "The executor's current task in C").
 *
 * enter returns the run's key as the token leave takes: leave clears the thread's task only
 * when it is still that run's (its key the same object), as the Python leave did with its
 * _Task. A thread's storage (four pointers) lives as long as the thread: the thread state's
 * dict holds a capsule of it, whose destructor frees it when the thread ends (an executor makes
 * a thread for each task that secedes, so kept storage grew by a struct per such task). */

typedef struct {
    PyObject *executor, *id, *key, *task;
} cur_t;

static Py_tss_t cur_tss = Py_tss_NEEDS_INIT;
static PyObject *task_type; /* shoal._worker._Task (set_task_type) */

/* Forget the thread's task: the fields are emptied first, as dropping the last reference to
 * them may run Python code (that enters or asks for a task). */
static void cur_clear(cur_t *c) {
    PyObject *executor = c->executor, *id = c->id, *key = c->key, *task = c->task;
    c->executor = c->id = c->key = c->task = NULL;
    Py_XDECREF(executor);
    Py_XDECREF(id);
    Py_XDECREF(key);
    Py_XDECREF(task);
}

static const char cur_capsule_name[] = "shoal._speedups.cur";
static PyObject *s_cur; /* the thread state dict's key for the capsule */

/* The capsule's destructor, run when the thread's state is cleared (the thread ended): the
 * storage is taken off the thread first, so that what dropping the task's references runs
 * finds none. */
static void cur_free(PyObject *capsule) {
    cur_t *c = PyCapsule_GetPointer(capsule, cur_capsule_name);
    if (c == NULL) {
        PyErr_Clear();
        return;
    }
    if (PyThread_tss_get(&cur_tss) == c) (void)PyThread_tss_set(&cur_tss, NULL);
    cur_clear(c);
    PyMem_RawFree(c);
}

static cur_t *cur_get(int make) {
    cur_t *c = PyThread_tss_get(&cur_tss);
    if (c != NULL || !make) return c;
    if ((c = PyMem_RawCalloc(1, sizeof(cur_t))) == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    PyObject *d = PyThreadState_GetDict(); /* borrowed; NULL, no exception set, when there is none */
    PyObject *capsule = d == NULL ? NULL : PyCapsule_New(c, cur_capsule_name, cur_free);
    if (capsule == NULL) {
        PyMem_RawFree(c);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "shoal._speedups: no thread state dict");
        return NULL;
    }
    if (PyDict_SetItem(d, s_cur, capsule) != 0) {
        PyCapsule_SetDestructor(capsule, NULL);
        Py_DECREF(capsule);
        PyMem_RawFree(c);
        return NULL;
    }
    Py_DECREF(capsule); /* the dict holds it: it frees c when the thread ends */
    if (PyThread_tss_set(&cur_tss, c) != 0) {
        PyDict_DelItem(d, s_cur); /* frees c */
        PyErr_SetString(PyExc_RuntimeError, "shoal._speedups: cannot set thread-specific storage");
        return NULL;
    }
    return c;
}

/* task_enter(executor, task_id, key) -> token */
static PyObject *task_enter(PyObject *self, PyObject *const *a, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "task_enter takes 3 arguments");
        return NULL;
    }
    cur_t *c = cur_get(1);
    if (c == NULL) return NULL;
    cur_clear(c);
    Py_INCREF(a[0]);
    Py_INCREF(a[1]);
    Py_INCREF(a[2]);
    /* (XSETREF: were the clearing to have entered a task, its references are dropped) */
    Py_XSETREF(c->executor, a[0]);
    Py_XSETREF(c->id, a[1]);
    Py_XSETREF(c->key, a[2]);
    Py_XSETREF(c->task, NULL);
    Py_INCREF(a[2]);
    return a[2];
}

/* task_leave(token) */
static PyObject *task_leave(PyObject *self, PyObject *token) {
    (void)self;
    cur_t *c = cur_get(0);
    if (c != NULL && c->key != NULL && c->key == token) cur_clear(c);
    Py_RETURN_NONE;
}

/* task_current() -> _Task | None */
static PyObject *task_current(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    cur_t *c = cur_get(0);
    if (c == NULL || c->key == NULL) Py_RETURN_NONE;
    if (c->task == NULL) {
        if (task_type == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "shoal._speedups: set_task_type was not called");
            return NULL;
        }
        PyObject *key = c->key, *args[3] = {c->executor, c->id, key};
        for (int i = 0; i < 3; i++) Py_INCREF(args[i]); /* the call runs Python code, which may enter or leave */
        PyObject *t = PyObject_Vectorcall(task_type, args, 3, NULL);
        int same = c->key == key && c->task == NULL;
        for (int i = 0; i < 3; i++) Py_DECREF(args[i]);
        if (t == NULL) return NULL;
        if (!same) return t; /* the thread's task changed meanwhile: this one is not kept */
        c->task = t;
    }
    Py_INCREF(c->task);
    return c->task;
}

/* set_task_type(cls) */
static PyObject *set_task_type(PyObject *self, PyObject *cls) {
    (void)self;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "set_task_type takes a class");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(task_type, cls);
    Py_RETURN_NONE;
}

static int call_task(PyObject *enter, PyObject *leave, PyObject *executor, PyObject *fn, PyObject *task_id,
                     PyObject *key, PyObject *args, PyObject **result, PyObject **exc, PyObject **task) {
    *result = *exc = *task = NULL;
    PyObject *enter_args[3] = {executor, task_id, key};
    PyObject *t = PyObject_Vectorcall(enter, enter_args, 3, NULL);
    if (t == NULL) return -1;
    PyObject *r = PyObject_Vectorcall(fn, ((PyTupleObject *)args)->ob_item, PyTuple_GET_SIZE(args), NULL);
    if (r == NULL) {
        PyObject *et = NULL, *ev = NULL, *etb = NULL;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        if (etb != NULL && ev != NULL) PyException_SetTraceback(ev, etb);
        Py_XDECREF(et);
        Py_XDECREF(etb);
        if (ev == NULL) {
            Py_DECREF(t);
            PyErr_SetString(PyExc_SystemError, "shoal._speedups: the task raised nothing");
            return -1;
        }
        *exc = ev;
        *task = t;
        return 0;
    }
    PyObject *left = PyObject_Vectorcall(leave, &t, 1, NULL);
    Py_DECREF(t);
    if (left == NULL) { /* as a Python finally: leave's exception propagates */
        Py_DECREF(r);
        return -1;
    }
    Py_DECREF(left);
    *result = r;
    return 0;
}

/* The msgpack frame of a result that is None, a bool, or an exact int, float or str msgpack
 * holds, written as Executor.call's packer writes it; 1 (nothing written) for any other result,
 * -1 on error. */
static int put_scalar(buf_t *b, PyObject *result) {
    if (result == Py_None || PyBool_Check(result) || PyLong_CheckExact(result) || PyFloat_CheckExact(result) ||
        PyUnicode_CheckExact(result))
        return put_literal(b, result);
    return 1;
}

/* The arguments of a run of the Python path's form, its inputs decoded into a values dict;
 * NULL, with no exception set, when the run is not one this path takes (or cannot decode). */
static PyObject *plain_args(PyObject *payload, PyObject *items, PyObject *frames) {
    PyObject *values = NULL, *args = NULL;
    if (!PyBytes_CheckExact(payload) || PyBytes_GET_SIZE(payload) < 2 || PyBytes_AS_STRING(payload)[0] != 0 ||
        !PyList_CheckExact(items) || !PyList_CheckExact(frames))
        return NULL;
    if ((values = PyDict_New()) == NULL) goto done;
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *it = PyList_GET_ITEM(items, i);
        if (!PyList_CheckExact(it) || PyList_GET_SIZE(it) != 4) goto done;
        PyObject *key = PyList_GET_ITEM(it, 0), *enc = PyList_GET_ITEM(it, 1), *nf = PyList_GET_ITEM(it, 2);
        if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(enc) || !PyLong_CheckExact(nf)) goto done;
        long nfr = PyLong_AsLong(nf);
        if ((nfr != 0 && nfr != 1) || PyUnicode_Compare(enc, s_msgpack) != 0 || pos >= PyList_GET_SIZE(frames))
            goto done;
        /* the item's frame is held by frames, a list this call owns a reference to, until
         * mp_whole holds its buffer; key is held across mp_whole, whose buffer request may
         * run Python code (a __buffer__, a collection's finalizers) */
        Py_INCREF(key);
        PyObject *v = mp_whole(PyList_GET_ITEM(frames, pos), 0);
        int r = v == NULL ? -1 : PyDict_SetItem(values, key, v);
        Py_DECREF(key);
        Py_XDECREF(v);
        if (r < 0) goto done;
        pos++;
    }
    args = literal_args((const unsigned char *)PyBytes_AS_STRING(payload) + 1, PyBytes_GET_SIZE(payload) - 1, values);
done:
    Py_XDECREF(values);
    PyErr_Clear();
    return args;
}

/* (0, {"op": "done", "id": task_id, "items": [{"key": key, "encoding": "msgpack", "nframes": 1,
 * "nbytes": len(frame)}]}, [frame]): the answer Executor.call makes for a scalar result */
static PyObject *done_reply(PyObject *task_id, PyObject *key, PyObject *frame) {
    PyObject *item = NULL, *items = NULL, *reply = NULL, *nframes = NULL, *nbytes = NULL, *out = NULL;
    if ((nframes = PyLong_FromLong(1)) == NULL || (nbytes = PyLong_FromSsize_t(PyBytes_GET_SIZE(frame))) == NULL ||
        (item = PyDict_New()) == NULL || PyDict_SetItem(item, s_key, key) < 0 ||
        PyDict_SetItem(item, s_encoding, s_msgpack) < 0 || PyDict_SetItem(item, s_nframes, nframes) < 0 ||
        PyDict_SetItem(item, s_nbytes, nbytes) < 0 || (items = PyList_New(1)) == NULL)
        goto done;
    PyList_SET_ITEM(items, 0, item);
    item = NULL;
    if ((reply = PyDict_New()) == NULL || PyDict_SetItem(reply, s_op, s_done) < 0 ||
        PyDict_SetItem(reply, s_id, task_id) < 0 || PyDict_SetItem(reply, s_items, items) < 0)
        goto done;
    out = Py_BuildValue("(iO[O])", 0, reply, frame);
done:
    Py_XDECREF(item);
    Py_XDECREF(items);
    Py_XDECREF(reply);
    Py_XDECREF(nframes);
    Py_XDECREF(nbytes);
    return out;
}

/* leave(task) when the error answer cannot be handed out (no memory): the error set stays */
static void leave_keeping_error(PyObject *leave, PyObject *task) {
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *left = PyObject_Vectorcall(leave, &task, 1, NULL);
    if (left != NULL) {
        Py_DECREF(left);
        PyErr_Restore(et, ev, etb);
    } else {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
    }
}

/* run_plain(enter, leave, executor, fn, task_id, key, payload, items, frames): see
 * shoal.executor.Executor.run_entry. None: not run (the Python path takes it); (0, reply,
 * frames): ran and answered; (1, exception, task): fn raised it, and the caller makes the
 * error answer, then calls leave(task); (2, result, None): ran, and the result is for the
 * Python path to encode. */
static PyObject *run_plain(PyObject *self, PyObject *const *a, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "run_plain takes 9 arguments");
        return NULL;
    }
    PyObject *task_id = a[4], *key = a[5];
    if (!PyLong_CheckExact(task_id) || !PyUnicode_CheckExact(key)) Py_RETURN_NONE;
    PyObject *args = plain_args(a[6], a[7], a[8]);
    if (args == NULL) Py_RETURN_NONE;
    PyObject *result, *exc, *task;
    int r = call_task(a[0], a[1], a[2], a[3], task_id, key, args, &result, &exc, &task);
    Py_DECREF(args);
    if (r < 0) return NULL;
    if (result == NULL) {
        PyObject *out = Py_BuildValue("(iOO)", 1, exc, task);
        Py_DECREF(exc);
        if (out == NULL) leave_keeping_error(a[1], task);
        Py_DECREF(task);
        return out;
    }
    buf_t b = {0};
    r = put_scalar(&b, result);
    if (r == 0) {
        PyObject *frame = PyBytes_FromStringAndSize(b.p, b.len);
        PyMem_Free(b.p);
        Py_DECREF(result);
        if (frame == NULL) return NULL;
        PyObject *out = done_reply(task_id, key, frame);
        Py_DECREF(frame);
        return out;
    }
    PyMem_Free(b.p);
    PyErr_Clear(); /* (an int beyond 64 bits, a str msgpack refuses: encoded in Python) */
    PyObject *out = Py_BuildValue("(iOO)", 2, result, Py_None);
    Py_DECREF(result);
    return out;
}

/* ------------------------------------------------------------------------------------------
 * A runs message run in C (docs/protocol.md §3.5). runs_batch(header, frames, ...) reads the
 * raw header of a message: when it is a runs message that shoal.executor.split_runs accepts,
 * it checks it whole, as split_runs does, and returns a RunBatch, which the executor's loop
 * keeps in its pending queue; otherwise None, and the loop decodes the header as before
 * (and split_runs raises what is wrong). RunBatch.next() then runs the next run: a plain call
 * returning a scalar is run and answered here (its done answer encoded, start and stop
 * included), with no Python object made for the message, the run or the answer; any other run
 * is handed back as split_runs makes it, for the Python path. The header's every string, map
 * key and length is checked as msgpack-python would decode it: a header it would refuse is
 * never run here. */

/* readers of one msgpack value at *pp, which they move past it: 0, or -1 (nothing read) when
 * the value is not of their kind or runs past end */
static int rd_len(const unsigned char **pp, const unsigned char *end, unsigned char fix_mask, unsigned char fix_tag,
                  unsigned char fix_bits, unsigned char t8, unsigned char t16, unsigned char t32,
                  unsigned long long *n) {
    const unsigned char *p = *pp;
    if (p >= end) return -1;
    unsigned char c = *p++;
    if ((c & fix_mask) == fix_tag) {
        *n = c & fix_bits;
    } else {
        int w = c == t8 && t8 ? 1 : c == t16 ? 2 : c == t32 ? 4 : 0;
        if (w == 0 || mp_be(&p, end, w, n) < 0) return -1;
    }
    *pp = p;
    return 0;
}

static int rd_array(const unsigned char **pp, const unsigned char *end, unsigned long long *n) {
    if (rd_len(pp, end, 0xf0, 0x90, 0x0f, 0, 0xdc, 0xdd, n) < 0) return -1;
    return *n <= (unsigned long long)(end - *pp) ? 0 : -1; /* a byte per element at least */
}

static int rd_map(const unsigned char **pp, const unsigned char *end, unsigned long long *n) {
    if (rd_len(pp, end, 0xf0, 0x80, 0x0f, 0, 0xde, 0xdf, n) < 0) return -1;
    return *n <= (unsigned long long)(end - *pp) / 2 ? 0 : -1;
}

/* a string's bytes, checked to be UTF-8 as Python's strict decoder takes it */
static int rd_str(const unsigned char **pp, const unsigned char *end, const char **s, Py_ssize_t *len) {
    const unsigned char *p = *pp;
    unsigned long long n;
    if (rd_len(&p, end, 0xe0, 0xa0, 0x1f, 0xd9, 0xda, 0xdb, &n) < 0 || n > (unsigned long long)(end - p))
        return -1;
    for (unsigned long long i = 0; i < n; i++) {
        if (p[i] >= 0x80) { /* not ASCII: let Python's decoder say */
            PyObject *u = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, NULL);
            if (u == NULL) {
                PyErr_Clear();
                return -1;
            }
            Py_DECREF(u);
            break;
        }
    }
    *s = (const char *)p;
    *len = (Py_ssize_t)n;
    *pp = p + n;
    return 0;
}

static int rd_bin(const unsigned char **pp, const unsigned char *end, const char **s, Py_ssize_t *len) {
    const unsigned char *p = *pp;
    unsigned long long n;
    if (p >= end) return -1;
    unsigned char c = *p++;
    int w = c == 0xc4 ? 1 : c == 0xc5 ? 2 : c == 0xc6 ? 4 : 0;
    if (w == 0 || mp_be(&p, end, w, &n) < 0 || n > (unsigned long long)(end - p)) return -1;
    *s = (const char *)p;
    *len = (Py_ssize_t)n;
    *pp = p + n;
    return 0;
}

/* an int of any width: its value as *u with *neg set when negative (then *u is its two's
 * complement) */
static int rd_int(const unsigned char **pp, const unsigned char *end, unsigned long long *u, int *neg) {
    const unsigned char *p = *pp;
    if (p >= end) return -1;
    unsigned char c = *p++;
    unsigned long long v;
    *neg = 0;
    if (c <= 0x7f) {
        v = c;
    } else if (c >= 0xe0) {
        v = (unsigned long long)(long long)(signed char)c;
        *neg = 1;
    } else if (c >= 0xcc && c <= 0xcf) {
        if (mp_be(&p, end, 1 << (c - 0xcc), &v) < 0) return -1;
    } else if (c >= 0xd0 && c <= 0xd3) {
        int w = 1 << (c - 0xd0);
        if (mp_be(&p, end, w, &v) < 0) return -1;
        if (w < 8 && (v >> (8 * w - 1)) & 1) v |= ~0ULL << (8 * w); /* sign-extend */
        *neg = (v >> 63) & 1;
    } else {
        return -1;
    }
    *u = v;
    *pp = p;
    return 0;
}

static int str_is(const char *s, Py_ssize_t n, const char *lit) {
    return (size_t)n == strlen(lit) && memcmp(s, lit, (size_t)n) == 0;
}

/* Skip one value, as msgpack.unpackb(raw=False, strict_map_key=False) would decode it:
 * -1 for a value it refuses (bad UTF-8, an unhashable map key, 0xc1) and for what this
 * reader does not take (ext types, nesting beyond MP_MAX_DEPTH). */
static int mp_skip(const unsigned char **pp, const unsigned char *end, int depth) {
    const unsigned char *p = *pp;
    unsigned long long n, u;
    const char *s;
    Py_ssize_t len;
    int neg;
    if (p >= end || depth > MP_MAX_DEPTH) return -1;
    unsigned char c = *p;
    if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)) return rd_int(pp, end, &u, &neg);
    if ((c & 0xe0) == 0xa0 || (c >= 0xd9 && c <= 0xdb)) return rd_str(pp, end, &s, &len);
    if (c >= 0xc4 && c <= 0xc6) return rd_bin(pp, end, &s, &len);
    if (c == 0xc0 || c == 0xc2 || c == 0xc3) {
        *pp = p + 1;
        return 0;
    }
    if (c == 0xca || c == 0xcb) {
        int w = c == 0xca ? 4 : 8;
        if (end - p < 1 + w) return -1;
        *pp = p + 1 + w;
        return 0;
    }
    if ((c & 0xf0) == 0x90 || c == 0xdc || c == 0xdd) {
        if (rd_array(&p, end, &n) < 0) return -1;
        for (unsigned long long i = 0; i < n; i++)
            if (mp_skip(&p, end, depth + 1) < 0) return -1;
        *pp = p;
        return 0;
    }
    if ((c & 0xf0) == 0x80 || c == 0xde || c == 0xdf) {
        if (rd_map(&p, end, &n) < 0) return -1;
        for (unsigned long long i = 0; i < n; i++) {
            unsigned char k = p < end ? *p : 0;
            if ((k & 0xf0) == 0x90 || k == 0xdc || k == 0xdd || (k & 0xf0) == 0x80 || k == 0xde || k == 0xdf)
                return -1; /* a list or dict as a key: unhashable */
            if (mp_skip(&p, end, depth + 1) < 0 || mp_skip(&p, end, depth + 1) < 0) return -1;
        }
        *pp = p;
        return 0;
    }
    return -1; /* 0xc1, ext types */
}

typedef struct {
    PyObject_HEAD
    char *raw;                  /* a copy of the header */
    Py_ssize_t rawlen;
    Py_ssize_t n;               /* runs */
    Py_ssize_t next;            /* the next run to hand out (taken before it runs) */
    Py_ssize_t *at, *end;       /* per run: its entry's bytes in raw */
    Py_ssize_t *first, *nf;     /* per run: its frames, frames[first : first + nf] */
    unsigned char *plain;       /* per run: extra is nil or holds only keep, and the payload is literal */
    unsigned char *keep;        /* per run: extra's keep is true */
    PyObject *frames;           /* list */
    PyObject *funcs, *executor, *enter, *leave, *unpack;
    PyObject *fname;            /* the last function name looked up, and its bytes */
    const char *fname_s;
    Py_ssize_t fname_n;
} RunBatch;

static int rb_traverse(RunBatch *b, visitproc visit, void *arg) {
    Py_VISIT(b->frames);
    Py_VISIT(b->funcs);
    Py_VISIT(b->executor);
    Py_VISIT(b->enter);
    Py_VISIT(b->leave);
    Py_VISIT(b->unpack);
    return 0;
}

static int rb_clear(RunBatch *b) {
    Py_CLEAR(b->frames);
    Py_CLEAR(b->funcs);
    Py_CLEAR(b->executor);
    Py_CLEAR(b->enter);
    Py_CLEAR(b->leave);
    Py_CLEAR(b->unpack);
    Py_CLEAR(b->fname);
    return 0;
}

static void rb_dealloc(RunBatch *b) {
    PyObject_GC_UnTrack(b);
    rb_clear(b);
    PyMem_Free(b->raw);
    PyMem_Free(b->at);
    PyMem_Free(b->plain);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *rb_left(RunBatch *b, void *unused) {
    (void)unused;
    return PyLong_FromSsize_t(b->n - b->next);
}

/* run i as split_runs hands it to the Python path: (3, entry, frames, 0) */
static PyObject *rb_entry(RunBatch *b, Py_ssize_t i) {
    if (b->frames == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RunBatch: cleared");
        return NULL;
    }
    PyObject *bytes = PyBytes_FromStringAndSize(b->raw + b->at[i], b->end[i] - b->at[i]);
    if (bytes == NULL) return NULL;
    PyObject *entry = PyObject_CallOneArg(b->unpack, bytes);
    Py_DECREF(bytes);
    if (entry == NULL) return NULL;
    PyObject *frames = PyList_GetSlice(b->frames, b->first[i], b->first[i] + b->nf[i]);
    if (frames == NULL) {
        Py_DECREF(entry);
        return NULL;
    }
    return Py_BuildValue("(iNNi)", 3, entry, frames, 0);
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The done answer Executor.answer sends for a scalar result, as pack_header writes the dict
 * {"op": "done", "id": id, "items": [{"key": key, "encoding": "msgpack", "nframes": 1,
 * "nbytes": nbytes}], "start": start, "stop": stop}. */
static int put_done(buf_t *b, unsigned long long id, const char *key, Py_ssize_t keylen, Py_ssize_t nbytes,
                    long long start, long long stop) {
    if (put_byte(b, 0x85) < 0 || PUT_LIT(b, "op") < 0 || PUT_LIT(b, "done") < 0 || PUT_LIT(b, "id") < 0 ||
        put_uint(b, id) < 0 || PUT_LIT(b, "items") < 0 || put_byte(b, 0x91) < 0 || put_byte(b, 0x84) < 0 ||
        PUT_LIT(b, "key") < 0 || put_strn(b, key, keylen) < 0 || PUT_LIT(b, "encoding") < 0 ||
        PUT_LIT(b, "msgpack") < 0 || PUT_LIT(b, "nframes") < 0 || put_byte(b, 1) < 0 || PUT_LIT(b, "nbytes") < 0 ||
        put_uint(b, (unsigned long long)nbytes) < 0 || PUT_LIT(b, "start") < 0 || put_int(b, start) < 0 ||
        PUT_LIT(b, "stop") < 0 || put_int(b, stop) < 0)
        return -1;
    return 0;
}

/* The function named s[:n] in funcs (a new reference), or NULL (no exception) when it is not
 * there. */
static PyObject *rb_func(RunBatch *b, const char *s, Py_ssize_t n) {
    if (b->fname == NULL || b->fname_n != n || memcmp(b->fname_s, s, (size_t)n) != 0) {
        PyObject *name = PyUnicode_DecodeUTF8(s, n, NULL);
        if (name == NULL) return NULL;
        Py_XSETREF(b->fname, name);
        b->fname_s = s;
        b->fname_n = n;
    }
    /* held across the lookup: a key that is not a str compares in Python code, which may call
     * next() again (a seceded server's thread) and replace b->fname */
    PyObject *name = b->fname, *funcs = b->funcs;
    Py_INCREF(name);
    Py_INCREF(funcs);
    PyObject *fn = PyDict_GetItemWithError(funcs, name);
    Py_XINCREF(fn);
    Py_DECREF(funcs);
    Py_DECREF(name);
    return fn;
}

/* shoal._segments.SEG_MIN: a result frame this large is the Python path's to answer, which
 * may send it in a segment */
#define SEG_MIN ((Py_ssize_t)1 << 20)

/* RunBatch.next(): run the next run. (done_header, [frame]): it ran here, answered by that done
 * message (its header encoded); (3, entry, frames, 0): it is the Python path's, as split_runs
 * makes it; (2, result, (id, key, keep), started): it ran here, and returned a result for the
 * Python path to answer; (1, exception, (id, key, task), started): it raised, and the Python
 * path answers, then calls leave(task). */
static PyObject *rb_run(RunBatch *b, int plain_ok) {
    if (b->frames == NULL || b->next >= b->n) {
        PyErr_SetString(PyExc_IndexError, "RunBatch: no run left");
        return NULL;
    }
    Py_ssize_t i = b->next++; /* taken before anything runs: a task that secedes leaves the rest to the next server */
    if (!plain_ok || !b->plain[i]) return rb_entry(b, i);
    long long started = now_ns();
    const unsigned char *p = (const unsigned char *)b->raw + b->at[i], *end = (const unsigned char *)b->raw + b->end[i];
    unsigned long long n, id, nitems;
    int neg;
    const char *key, *fs, *payload;
    Py_ssize_t keylen, fn_n, plen;
    /* checked whole by runs_batch: these reads do not fail */
    if (rd_array(&p, end, &n) < 0 || rd_int(&p, end, &id, &neg) < 0 || rd_str(&p, end, &key, &keylen) < 0 ||
        rd_str(&p, end, &fs, &fn_n) < 0 || rd_bin(&p, end, &payload, &plen) < 0 || rd_array(&p, end, &nitems) < 0)
        return rb_entry(b, i);
    PyObject *fn = rb_func(b, fs, fn_n);
    if (fn == NULL) {
        if (PyErr_Occurred()) return NULL;
        return rb_entry(b, i);
    }
    PyObject *values = NULL, *args = NULL, *task_id = NULL, *pykey = NULL, *result = NULL, *exc = NULL, *out = NULL;
    if ((values = PyDict_New()) == NULL) goto fail;
    if ((Py_ssize_t)nitems > b->nf[i]) goto python;
    for (unsigned long long j = 0; j < nitems; j++) {
        unsigned long long m, nfr;
        const char *ik, *enc;
        Py_ssize_t iklen, enclen;
        if (rd_array(&p, end, &m) < 0 || m != 4 || rd_str(&p, end, &ik, &iklen) < 0 ||
            rd_str(&p, end, &enc, &enclen) < 0 || !str_is(enc, enclen, "msgpack") || rd_int(&p, end, &nfr, &neg) < 0 ||
            neg || nfr > 1 || mp_skip(&p, end, 1) < 0)
            goto python;
        Py_ssize_t at = b->first[i] + (Py_ssize_t)j;
        if (at >= PyList_GET_SIZE(b->frames)) goto python;
        PyObject *frame = PyList_GET_ITEM(b->frames, at);
        Py_INCREF(frame); /* (held: the buffer request may run Python code) */
        PyObject *v = mp_whole(frame, 0);
        Py_DECREF(frame);
        if (v == NULL) goto python;
        PyObject *name = PyUnicode_DecodeUTF8(ik, iklen, NULL);
        if (name == NULL) {
            Py_DECREF(v);
            goto python;
        }
        int r = PyDict_SetItem(values, name, v);
        Py_DECREF(name);
        Py_DECREF(v);
        if (r < 0) goto fail;
    }
    if (plen < 2 || payload[0] != 0) goto python;
    if ((args = literal_args((const unsigned char *)payload + 1, plen - 1, values)) == NULL) goto python;
    if ((task_id = PyLong_FromUnsignedLongLong(id)) == NULL || (pykey = PyUnicode_DecodeUTF8(key, keylen, NULL)) == NULL)
        goto fail;
    PyObject *enter = b->enter, *leave = b->leave, *executor = b->executor;
    Py_INCREF(enter);
    Py_INCREF(leave);
    Py_INCREF(executor);
    PyObject *task;
    int called = call_task(enter, leave, executor, fn, task_id, pykey, args, &result, &exc, &task);
    Py_DECREF(enter);
    Py_DECREF(executor);
    if (called < 0) {
        Py_DECREF(leave);
        goto fail;
    }
    if (result == NULL) { /* (1, exception, (id, key, task), started): leave(task) once answered */
        out = Py_BuildValue("(iO(OOO)L)", 1, exc, task_id, pykey, task, started);
        if (out == NULL) leave_keeping_error(leave, task);
        Py_DECREF(task);
        Py_DECREF(leave);
        goto done;
    }
    Py_DECREF(leave);
    {
        buf_t f = {0}, h = {0};
        int r = put_scalar(&f, result);
        if (r == 0 && f.len < SEG_MIN) {
            if (put_done(&h, id, key, keylen, f.len, started, now_ns()) == 0) {
                out = Py_BuildValue("(y#[y#])", h.p, h.len, f.p, f.len);
            }
            PyMem_Free(f.p);
            PyMem_Free(h.p);
            goto done;
        }
        PyMem_Free(f.p);
        if (r < 0) PyErr_Clear(); /* (an int beyond 64 bits, a str msgpack refuses: encoded in Python) */
    }
    out = Py_BuildValue("(iO(OOO)L)", 2, result, task_id, pykey, b->keep[i] ? Py_True : Py_False, started);
    goto done;
python: /* not a run this path takes: nothing was called */
    PyErr_Clear();
    out = rb_entry(b, i);
    goto done;
fail:
    out = NULL;
done:
    Py_DECREF(fn);
    Py_XDECREF(values);
    Py_XDECREF(args);
    Py_XDECREF(task_id);
    Py_XDECREF(pykey);
    Py_XDECREF(result);
    Py_XDECREF(exc);
    return out;
}

static PyObject *rb_next(RunBatch *b, PyObject *unused) {
    (void)unused;
    return rb_run(b, 1);
}

/* run_many(held, flags) -> None | next()'s value: the batch's next runs, one after another, as
 * long as each is a plain call answered in C ((done header, [frame])), their answers appended
 * to held in order. Returns None once no run is left; else the value of the run that stopped
 * it, not appended, as next() returns it: a run for the Python path, one that raised or
 * returned a result for Python, or a plain answer after which flags["_seceding"] (shoal._worker's
 * globals) is true (a task seceded: the caller finds whose). The executor's loop paid a pass of
 * its own per run before (docs/performance.md, "The executor's current task in C"). */
static PyObject *rb_run_many(RunBatch *b, PyObject *const *a, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(a[0]) || !PyDict_Check(a[1])) {
        PyErr_SetString(PyExc_TypeError, "run_many takes a list and a dict");
        return NULL;
    }
    PyObject *held = a[0], *flags = a[1];
    while (b->frames != NULL && b->next < b->n) {
        PyObject *ran = rb_run(b, 1);
        if (ran == NULL) return NULL;
        if (!PyTuple_CheckExact(ran) || PyTuple_GET_SIZE(ran) != 2) return ran;
        PyObject *seceding = PyDict_GetItemWithError(flags, s_seceding); /* borrowed */
        int stop = seceding == NULL ? (PyErr_Occurred() ? -1 : 0) : PyObject_IsTrue(seceding);
        if (stop != 0) {
            if (stop < 0) Py_CLEAR(ran);
            return ran;
        }
        int r = PyList_Append(held, ran);
        Py_DECREF(ran);
        if (r < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *rb_take(RunBatch *b, PyObject *unused) {
    (void)unused;
    return rb_run(b, 0);
}

static PyMethodDef rb_methods[] = {
    {"next", (PyCFunction)rb_next, METH_NOARGS, "run the next run (see _speedups.pyi)"},
    {"run_many", (PyCFunction)(void (*)(void))rb_run_many, METH_FASTCALL,
     "run the next runs while they are plain calls answered in C, into held (see _speedups.pyi)"},
    {"take", (PyCFunction)rb_take, METH_NOARGS, "the next run for the Python path, not run: (3, entry, frames, 0)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rb_getset[] = {
    {"left", (getter)rb_left, NULL, "runs not handed out yet", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RunBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shoal._speedups.RunBatch",
    .tp_basicsize = sizeof(RunBatch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)rb_dealloc,
    .tp_traverse = (traverseproc)rb_traverse,
    .tp_clear = (inquiry)rb_clear,
    .tp_methods = rb_methods,
    .tp_getset = rb_getset,
};

/* One entry of the runs array at *pp, checked as split_runs checks it; *plain and *keep as
 * RunBatch has them. -1 for an entry split_runs refuses, or one this reader does not take. */
static int check_entry(const unsigned char **pp, const unsigned char *end, unsigned char *plain, unsigned char *keep) {
    const unsigned char *p = *pp;
    unsigned long long n, u;
    int neg;
    const char *s, *payload;
    Py_ssize_t len, plen;
    if (rd_array(&p, end, &n) < 0 || n != 6 || rd_int(&p, end, &u, &neg) < 0 || neg || rd_str(&p, end, &s, &len) < 0 ||
        rd_str(&p, end, &s, &len) < 0 || rd_bin(&p, end, &payload, &plen) < 0)
        return -1;
    if (p >= end || !((*p & 0xf0) == 0x90 || *p == 0xdc || *p == 0xdd) || mp_skip(&p, end, 1) < 0) return -1;
    *plain = plen >= 2 && payload[0] == 0;
    *keep = 0;
    if (p < end && *p == 0xc0) {
        p++;
    } else {
        if (rd_map(&p, end, &n) < 0) return -1;
        int seen = 0;
        for (unsigned long long j = 0; j < n; j++) {
            if (rd_str(&p, end, &s, &len) < 0) return -1;
            int bit = str_is(s, len, "func_data") ? 1 : str_is(s, len, "timeout") ? 2 : str_is(s, len, "keep") ? 4 : 0;
            if (bit == 0 || (seen & bit)) return -1; /* unknown, or twice */
            seen |= bit;
            if (bit == 1) {
                if (rd_bin(&p, end, &s, &len) < 0) return -1;
            } else if (p < end && (*p == 0xca || *p == 0xcb)) {
                if (bit != 2) return -1;
                unsigned long long v;
                unsigned char c = *p++;
                if (mp_be(&p, end, c == 0xca ? 4 : 8, &v) < 0) return -1;
                double d;
                if (c == 0xca) {
                    uint32_t w = (uint32_t)v;
                    float f;
                    memcpy(&f, &w, 4);
                    d = f;
                } else {
                    memcpy(&d, &v, 8);
                }
                if (!(d >= 0)) return -1;
            } else if (bit == 4 && p < end && (*p == 0xc2 || *p == 0xc3)) {
                *keep = *p++ == 0xc3;
            } else {
                if (rd_int(&p, end, &u, &neg) < 0 || (bit == 2 && neg)) return -1;
                if (bit == 4) *keep = u != 0;
            }
        }
        if (seen & ~4) *plain = 0; /* func_data, timeout: the Python path's */
    }
    *pp = p;
    return 0;
}

/* runs_batch(header, frames, funcs, executor, enter, leave, unpack) -> RunBatch | None */
static PyObject *runs_batch(PyObject *self, PyObject *const *a, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "runs_batch takes 7 arguments");
        return NULL;
    }
    PyObject *frames = a[1];
    if (!PyList_CheckExact(frames) || !PyDict_CheckExact(a[2])) Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    RunBatch *b = NULL;
    const unsigned char *base = view.buf, *p = base, *end = base + view.len;
    const unsigned char *runs = NULL, *counts = NULL;
    unsigned long long npairs, nruns = 0, ncounts = 0;
    int seen = 0;
    /* (msgpack refuses a buffer of wider items: "cannot unpack from multi-byte object") */
    if (view.itemsize != 1 || rd_map(&p, end, &npairs) < 0) goto none;
    for (unsigned long long j = 0; j < npairs; j++) {
        const char *s;
        Py_ssize_t len;
        if (rd_str(&p, end, &s, &len) < 0) goto none;
        int bit = str_is(s, len, "op") ? 1 : str_is(s, len, "runs") ? 2 : str_is(s, len, "nframes") ? 4 : 0;
        if (bit & seen) goto none;
        seen |= bit;
        if (bit == 1) {
            if (rd_str(&p, end, &s, &len) < 0 || !str_is(s, len, "runs")) goto none;
        } else if (bit == 2 || bit == 4) {
            const unsigned char *q = p;
            if (rd_array(&q, end, bit == 2 ? &nruns : &ncounts) < 0) goto none;
            if (bit == 2) runs = q;
            else counts = q;
            if (mp_skip(&p, end, 0) < 0) goto none;
        } else if (mp_skip(&p, end, 0) < 0) {
            goto none;
        }
    }
    if (p != end || seen != 7 || nruns != ncounts) goto none;
    b = PyObject_GC_New(RunBatch, &RunBatchType);
    if (b == NULL) goto fail;
    b->raw = NULL;
    b->at = NULL;
    b->plain = NULL;
    b->frames = b->funcs = b->executor = b->enter = b->leave = b->unpack = b->fname = NULL;
    b->n = (Py_ssize_t)nruns;
    b->next = 0;
    b->rawlen = view.len;
    /* (nruns is at most the header's length: a byte per entry at least) */
    if ((b->raw = PyMem_Malloc(view.len ? (size_t)view.len : 1)) == NULL ||
        (b->at = PyMem_Malloc(sizeof(Py_ssize_t) * 4 * (nruns ? nruns : 1))) == NULL ||
        (b->plain = PyMem_Malloc(2 * (nruns ? nruns : 1))) == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    memcpy(b->raw, view.buf, (size_t)view.len);
    b->end = b->at + nruns;
    b->first = b->end + nruns;
    b->nf = b->first + nruns;
    b->keep = b->plain + nruns;
    Py_ssize_t total = 0, nframes = PyList_GET_SIZE(frames);
    for (unsigned long long i = 0; i < nruns; i++) {
        unsigned long long c;
        int neg;
        b->at[i] = runs - base;
        if (check_entry(&runs, end, &b->plain[i], &b->keep[i]) < 0) goto none;
        b->end[i] = runs - base;
        if (rd_int(&counts, end, &c, &neg) < 0 || neg || c > (unsigned long long)(nframes - total)) goto none;
        b->first[i] = total;
        b->nf[i] = (Py_ssize_t)c;
        total += (Py_ssize_t)c;
    }
    if (total != nframes) goto none;
    PyBuffer_Release(&view);
    Py_INCREF(frames);
    b->frames = frames;
    for (int k = 2; k < 7; k++) Py_INCREF(a[k]);
    b->funcs = a[2];
    b->executor = a[3];
    b->enter = a[4];
    b->leave = a[5];
    b->unpack = a[6];
    PyObject_GC_Track(b);
    return (PyObject *)b;
none:
    PyBuffer_Release(&view);
    Py_XDECREF(b);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(b);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * answers_wire(held, max_header) -> bytes | None: the bytes on the wire of the messages
 * shoal.executor's send_held sends for `held`, answers each a (header encoded, [frame, ...])
 * with frames of bytes, grouped as group_answers groups them (runs of small answers, at most
 * DONES_MAX of them and DONES_BYTES of frames, as one dones message; a larger one alone), each
 * message framed as shoal._wire.encode_frames frames it. None when an answer is of another
 * kind (a header not encoded yet, frames that are not bytes) or a header would be over
 * max_header: the Python path sends those and says what is wrong. */

#define DONES_MAX 64
#define DONES_BYTES (64 << 10)

/* one message: the frame count (u32) and lengths (u64 each), big-endian, then the header and
 * the frames */
static int put_message(buf_t *b, const char *hdr, Py_ssize_t hlen, PyObject *const *frames, Py_ssize_t nf) {
    unsigned long long count = (unsigned long long)(1 + nf);
    if (buf_reserve(b, 4 + 8 * (Py_ssize_t)count) < 0) return -1;
    for (int i = 3; i >= 0; i--) b->p[b->len++] = (char)((count >> (8 * i)) & 0xff);
    unsigned long long len = (unsigned long long)hlen;
    for (int i = 7; i >= 0; i--) b->p[b->len++] = (char)((len >> (8 * i)) & 0xff);
    for (Py_ssize_t f = 0; f < nf; f++) {
        len = (unsigned long long)PyBytes_GET_SIZE(frames[f]);
        for (int i = 7; i >= 0; i--) b->p[b->len++] = (char)((len >> (8 * i)) & 0xff);
    }
    if (put_raw(b, hdr, hlen) < 0) return -1;
    for (Py_ssize_t f = 0; f < nf; f++)
        if (put_raw(b, PyBytes_AS_STRING(frames[f]), PyBytes_GET_SIZE(frames[f])) < 0) return -1;
    return 0;
}

/* the dones message of held[from:to] (to - from >= 2) */
static int put_dones(buf_t *b, buf_t *h, PyObject *held, Py_ssize_t from, Py_ssize_t to, Py_ssize_t max_header,
                     PyObject **frames, int *over) {
    Py_ssize_t n = to - from, nf = 0;
    h->len = 0;
    if (put_byte(h, 0x83) < 0 || PUT_LIT(h, "op") < 0 || PUT_LIT(h, "dones") < 0 || PUT_LIT(h, "replies") < 0 ||
        put_array(h, n) < 0)
        return -1;
    for (Py_ssize_t i = from; i < to; i++) {
        PyObject *hdr = PyTuple_GET_ITEM(PyList_GET_ITEM(held, i), 0);
        if (put_raw(h, PyBytes_AS_STRING(hdr), PyBytes_GET_SIZE(hdr)) < 0) return -1;
    }
    if (PUT_LIT(h, "nframes") < 0 || put_array(h, n) < 0) return -1;
    for (Py_ssize_t i = from; i < to; i++) {
        PyObject *fr = PyTuple_GET_ITEM(PyList_GET_ITEM(held, i), 1);
        if (put_uint(h, (unsigned long long)PyList_GET_SIZE(fr)) < 0) return -1;
        for (Py_ssize_t f = 0; f < PyList_GET_SIZE(fr); f++) frames[nf++] = PyList_GET_ITEM(fr, f);
    }
    if (h->len > max_header) {
        *over = 1;
        return 0;
    }
    return put_message(b, h->p, h->len, frames, nf);
}

/* held answer a, (header, [frame, ...]), as a message of its own */
static int put_answer(buf_t *b, PyObject *a) {
    PyObject *hdr = PyTuple_GET_ITEM(a, 0), *fr = PyTuple_GET_ITEM(a, 1);
    return put_message(b, PyBytes_AS_STRING(hdr), PyBytes_GET_SIZE(hdr), ((PyListObject *)fr)->ob_item,
                       PyList_GET_SIZE(fr));
}

static PyObject *answers_wire(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *held;
    Py_ssize_t max_header;
    if (!PyArg_ParseTuple(args, "O!n:answers_wire", &PyList_Type, &held, &max_header)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(held), total_frames = 0;
    /* every answer checked first: nothing Python runs while the bytes are made */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(held, i);
        if (!PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(a, 0)) ||
            !PyList_CheckExact(PyTuple_GET_ITEM(a, 1)) || PyBytes_GET_SIZE(PyTuple_GET_ITEM(a, 0)) > max_header)
            Py_RETURN_NONE;
        PyObject *fr = PyTuple_GET_ITEM(a, 1);
        for (Py_ssize_t f = 0; f < PyList_GET_SIZE(fr); f++)
            if (!PyBytes_CheckExact(PyList_GET_ITEM(fr, f))) Py_RETURN_NONE;
        total_frames += PyList_GET_SIZE(fr);
    }
    PyObject **frames = PyMem_Malloc(sizeof(PyObject *) * (size_t)(total_frames ? total_frames : 1));
    if (frames == NULL) return PyErr_NoMemory();
    buf_t b = {0}, h = {0};
    PyObject *out = NULL;
    int over = 0;
    Py_ssize_t from = 0, size = 0;
    for (Py_ssize_t i = 0; i <= n && !over; i++) {
        Py_ssize_t nbytes = -1;
        if (i < n) {
            PyObject *fr = PyTuple_GET_ITEM(PyList_GET_ITEM(held, i), 1);
            nbytes = 0;
            for (Py_ssize_t f = 0; f < PyList_GET_SIZE(fr); f++) nbytes += PyBytes_GET_SIZE(PyList_GET_ITEM(fr, f));
        }
        /* flush the group from..i when i ends it: the end, a large answer, or a full group */
        if (i == n || nbytes > DONES_BYTES || i - from >= DONES_MAX || size + nbytes > DONES_BYTES) {
            if (i - from == 1) {
                if (put_answer(&b, PyList_GET_ITEM(held, from)) < 0) goto done;
            } else if (i - from > 1 && put_dones(&b, &h, held, from, i, max_header, frames, &over) < 0) {
                goto done;
            }
            from = i;
            size = 0;
        }
        if (i < n && nbytes > DONES_BYTES) { /* alone */
            if (put_answer(&b, PyList_GET_ITEM(held, i)) < 0) goto done;
            from = i + 1;
            continue;
        }
        size += nbytes;
    }
    if (over) {
        Py_INCREF(Py_None);
        out = Py_None;
    } else {
        out = PyBytes_FromStringAndSize(b.p, b.len);
    }
done:
    PyMem_Free(frames);
    PyMem_Free(b.p);
    PyMem_Free(h.p);
    return out;
}

static PyMethodDef methods[] = {
    {"plain_graph", plain_graph, METH_O,
     "plain_graph(dsk) -> PlainGraph, or None when not every node is a plain call sent as written"},
    {"literal_payload", literal_payload, METH_VARARGS, "literal_payload(args, refs) -> bytes"},
    {"run_plain", (PyCFunction)(void (*)(void))run_plain, METH_FASTCALL,
     "run_plain(enter, leave, executor, fn, task_id, key, payload, items, frames): a plain call's run, or None"},
    {"answers_wire", answers_wire, METH_VARARGS, "answers_wire(held, max_header) -> bytes, or None"},
    {"task_enter", (PyCFunction)(void (*)(void))task_enter, METH_FASTCALL,
     "task_enter(executor, task_id, key) -> token: this thread runs that task now"},
    {"task_leave", task_leave, METH_O, "task_leave(token): the task task_enter gave token for has ended"},
    {"task_current", task_current, METH_NOARGS, "task_current() -> the running task's _Task, or None"},
    {"set_task_type", set_task_type, METH_O, "set_task_type(cls): the class task_current makes"},
    {"runs_batch", (PyCFunction)(void (*)(void))runs_batch, METH_FASTCALL,
     "runs_batch(header, frames, funcs, executor, enter, leave, unpack) -> RunBatch, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shoal._speedups",
                                    "Plain calls, compiled: the client's conversion of dask graphs of them, the executor's runs.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (!(s_key = PyUnicode_InternFromString("key")) || !(s_op = PyUnicode_InternFromString("op")) ||
        !(s_done = PyUnicode_InternFromString("done")) || !(s_id = PyUnicode_InternFromString("id")) ||
        !(s_items = PyUnicode_InternFromString("items")) || !(s_encoding = PyUnicode_InternFromString("encoding")) ||
        !(s_msgpack = PyUnicode_InternFromString("msgpack")) || !(s_nframes = PyUnicode_InternFromString("nframes")) ||
        !(s_nbytes = PyUnicode_InternFromString("nbytes")) || !(s_seceding = PyUnicode_InternFromString("_seceding")) ||
        !(s_cur = PyUnicode_InternFromString(cur_capsule_name)))
        return NULL;
    if (PyType_Ready(&PlainGraphType) < 0 || PyType_Ready(&RunBatchType) < 0) return NULL;
    if (!PyThread_tss_is_created(&cur_tss) && PyThread_tss_create(&cur_tss) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "shoal._speedups: cannot create thread-specific storage");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RunBatchType);
    if (PyModule_AddObject(m, "RunBatch", (PyObject *)&RunBatchType) < 0) {
        Py_DECREF(&RunBatchType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
