// Python module entry point of proxynas_fast._C. The operators themselves register with the
// dispatcher (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL) from their own files under ops/.
#include <Python.h>
#include <torch/library.h>

namespace proxynas_fast {

static bool built_with_cuda() {
#ifdef PROXYNAS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace proxynas_fast

static PyObject* py_built_with_cuda(PyObject*, PyObject*) {
  if (proxynas_fast::built_with_cuda()) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

static PyMethodDef kMethods[] = {
    {"built_with_cuda", py_built_with_cuda, METH_NOARGS, "True when the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kModule); }
