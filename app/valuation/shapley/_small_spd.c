/* Batched Cholesky solves of many small SPD systems, the batch innermost: see small_spd.py for the layout and
 * why. One entry point, solve(hp, g, low, step, bad, k, b, double): raw addresses of contiguous CPU buffers
 *   hp   (k(k+1)/2, b)  packed lower triangles, row i(i+1)/2 + j holding H_ij (j <= i), read only
 *   g    (k, b)         right-hand sides, read only
 *   low  (k(k+1)/2, b)  scratch: the Cholesky factors, packed the same way
 *   step (k, b)         the solutions
 *   bad  (b,)           uint8, set to 1 where a pivot is not positive (that system's solution is meaningless)
 * in float32 (double = 0) or float64 (double = 1). The loops over the batch are plain element-wise
 * operations, which the compiler vectorises; -ffp-contract=off keeps every clone's arithmetic the same
 * (no fused multiply-add), so a result does not depend on which CPU ran it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define DEFINE_SOLVE(NAME, T, SQRT)                                                                          \
    CLONES static int NAME(const T *restrict hp, const T *restrict g, T *restrict low, T *restrict step,     \
                           uint8_t *restrict bad, Py_ssize_t k, Py_ssize_t b) {                             \
        T *acc = malloc(sizeof(T) * b), *inv = malloc(sizeof(T) * k * b), *z = malloc(sizeof(T) * k * b);    \
        if (!acc || !inv || !z) {                                                                           \
            free(acc); free(inv); free(z);                                                                  \
            return -1;                                                                                      \
        }                                                                                                   \
        for (Py_ssize_t j = 0; j < k; j++) {                                                                \
            const Py_ssize_t jj = j * (j + 1) / 2;                                                          \
            T *restrict inv_j = inv + j * b;                                                                \
            for (Py_ssize_t i = j; i < k; i++) {                                                            \
                const Py_ssize_t ii = i * (i + 1) / 2;                                                      \
                const T *restrict src = hp + (ii + j) * b;                                                  \
                for (Py_ssize_t m = 0; m < b; m++) acc[m] = src[m];                                         \
                for (Py_ssize_t p = 0; p < j; p++) {                                                        \
                    const T *restrict li = low + (ii + p) * b, *restrict lj = low + (jj + p) * b;           \
                    for (Py_ssize_t m = 0; m < b; m++) acc[m] -= li[m] * lj[m];                             \
                }                                                                                           \
                T *restrict dst = low + (ii + j) * b;                                                       \
                if (i == j) {                                                                               \
                    for (Py_ssize_t m = 0; m < b; m++) {                                                    \
                        T a = acc[m];                                                                       \
                        if (!(a > 0)) { /* a pivot <= 0 or NaN: flagged; 1 keeps the lane finite */         \
                            bad[m] = 1;                                                                     \
                            a = 1;                                                                          \
                        }                                                                                   \
                        dst[m] = SQRT(a);                                                                   \
                        inv_j[m] = 1 / dst[m];                                                              \
                    }                                                                                       \
                } else {                                                                                    \
                    for (Py_ssize_t m = 0; m < b; m++) dst[m] = acc[m] * inv_j[m];                          \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        for (Py_ssize_t i = 0; i < k; i++) { /* L z = g */                                                  \
            const Py_ssize_t ii = i * (i + 1) / 2;                                                          \
            for (Py_ssize_t m = 0; m < b; m++) acc[m] = g[i * b + m];                                       \
            for (Py_ssize_t p = 0; p < i; p++) {                                                            \
                const T *restrict lip = low + (ii + p) * b, *restrict zp = z + p * b;                       \
                for (Py_ssize_t m = 0; m < b; m++) acc[m] -= lip[m] * zp[m];                                \
            }                                                                                               \
            for (Py_ssize_t m = 0; m < b; m++) z[i * b + m] = acc[m] * inv[i * b + m];                      \
        }                                                                                                   \
        for (Py_ssize_t i = k - 1; i >= 0; i--) { /* L^T s = z */                                           \
            for (Py_ssize_t m = 0; m < b; m++) acc[m] = z[i * b + m];                                       \
            for (Py_ssize_t p = i + 1; p < k; p++) {                                                        \
                const T *restrict lpi = low + (p * (p + 1) / 2 + i) * b, *restrict sp = step + p * b;       \
                for (Py_ssize_t m = 0; m < b; m++) acc[m] -= lpi[m] * sp[m];                                \
            }                                                                                               \
            for (Py_ssize_t m = 0; m < b; m++) step[i * b + m] = acc[m] * inv[i * b + m];                   \
        }                                                                                                   \
        free(acc); free(inv); free(z);                                                                      \
        return 0;                                                                                           \
    }

DEFINE_SOLVE(solve_f32, float, sqrtf)
DEFINE_SOLVE(solve_f64, double, sqrt)

static PyObject *solve(PyObject *self, PyObject *args) {
    unsigned long long hp, g, low, step, bad;
    Py_ssize_t k, b;
    int is_double, rc;
    if (!PyArg_ParseTuple(args, "KKKKKnnp", &hp, &g, &low, &step, &bad, &k, &b, &is_double)) return NULL;
    if (k < 0 || b < 0) {
        PyErr_SetString(PyExc_ValueError, "k and b must not be negative");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        rc = solve_f64((const double *)(uintptr_t)hp, (const double *)(uintptr_t)g, (double *)(uintptr_t)low,
                       (double *)(uintptr_t)step, (uint8_t *)(uintptr_t)bad, k, b);
    else
        rc = solve_f32((const float *)(uintptr_t)hp, (const float *)(uintptr_t)g, (float *)(uintptr_t)low,
                       (float *)(uintptr_t)step, (uint8_t *)(uintptr_t)bad, k, b);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"solve", solve, METH_VARARGS, "solve(hp, g, low, step, bad, k, b, double): see small_spd.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_small_spd", NULL, -1, methods};

PyMODINIT_FUNC PyInit__small_spd(void) { return PyModule_Create(&module); }
