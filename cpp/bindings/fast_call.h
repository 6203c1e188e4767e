// Vectorcall entry points with a small keyword parser.
//
// pybind11 matches keyword arguments by building a Python string for every declared
// parameter name on every call; with a dozen hyperparameters that costs about a
// microsecond, more than a 4K-element step itself. The step functions are therefore
// registered as METH_FASTCALL | METH_KEYWORDS functions whose parser compares the
// interned keyword names by pointer (falling back to string comparison).
#pragma once

#include <pybind11/pybind11.h>

#include "adamcore/norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

namespace adamcore_py {

namespace py = pybind11;

class Signature {
 public:
  // `names`: every parameter; the first `positional` may also be passed by position,
  // the first `required` must be given (e.g. buffers), plus any listed in `required_kw`.
  Signature(const char* function, std::initializer_list<const char*> names, int positional,
            int required, std::initializer_list<const char*> required_kw = {})
      : function_(function), names_(names), positional_(positional), required_(required) {
    if (names_.size() > kMaxParams) throw std::logic_error("too many parameters");
    for (const char* n : names_) interned_.push_back(PyUnicode_InternFromString(n));
    for (const char* n : required_kw) required_kw_.push_back(index_of(n));
  }

  std::size_t size() const { return names_.size(); }
  const char* name(std::size_t i) const { return names_[i]; }

  // The most parameters a signature may have: parsed arguments live in a fixed array
  // on the stack of their own call, so a __float__ or __index__ that calls a step
  // again (re-entrancy) cannot overwrite the outer call's arguments.
  static constexpr std::size_t kMaxParams = 32;
  using Parsed = PyObject* [kMaxParams];

  // Fills out[i] with a borrowed reference or nullptr when absent.
  void parse(PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames, Parsed& out) const {
    const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    std::fill(out, out + kMaxParams, nullptr);
    if (nargs > positional_) {
      throw py::type_error(std::string(function_) + "() takes at most " +
                           std::to_string(positional_) + " positional arguments (" +
                           std::to_string(nargs) + " given); the rest are keyword-only");
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) out[static_cast<std::size_t>(i)] = args[i];
    const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; ++k) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, k);
      const std::size_t i = find(key);
      if (i == names_.size()) {
        throw py::type_error(std::string(function_) + "() got an unexpected keyword argument '" +
                             py::str(key).cast<std::string>() + "'");
      }
      if (out[i] != nullptr) {
        throw py::type_error(std::string(function_) + "() got multiple values for argument '" +
                             names_[i] + "'");
      }
      out[i] = args[nargs + k];
    }
    for (int i = 0; i < required_; ++i) {
      if (out[static_cast<std::size_t>(i)] == nullptr) missing(static_cast<std::size_t>(i));
    }
    for (std::size_t i : required_kw_) {
      if (out[i] == nullptr) missing(i);
    }
  }

  std::size_t index_of(const char* n) const {
    for (std::size_t i = 0; i < names_.size(); ++i) {
      if (std::string(names_[i]) == n) return i;
    }
    throw std::logic_error(std::string("no parameter ") + n);
  }

 private:
  std::size_t find(PyObject* key) const {
    for (std::size_t i = 0; i < interned_.size(); ++i) {
      if (interned_[i] == key) return i;
    }
    for (std::size_t i = 0; i < interned_.size(); ++i) {
      if (PyUnicode_Compare(interned_[i], key) == 0) return i;
    }
    return names_.size();
  }
  [[noreturn]] void missing(std::size_t i) const {
    throw py::type_error(std::string(function_) + "() missing required argument '" +
                         names_[i] + "'");
  }

  const char* function_;
  std::vector<const char*> names_;
  std::vector<PyObject*> interned_;  // immortal for the life of the module
  std::vector<std::size_t> required_kw_;
  int positional_;
  int required_;
};

inline bool is_numpy_bool(PyObject* o) {
  const std::string type = Py_TYPE(o)->tp_name;
  return type == "numpy.bool" || type == "numpy.bool_";
}

inline double as_double(PyObject* o, const char* name, double fallback) {
  if (o == nullptr) return fallback;
  if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
  if (PyBool_Check(o) || is_numpy_bool(o) ||
      !(PyFloat_Check(o) || PyLong_Check(o) || PyNumber_Check(o))) {
    throw py::type_error(std::string(name) + " must be a real number, got " +
                         Py_TYPE(o)->tp_name);
  }
  const double v = PyFloat_AsDouble(o);
  if (v == -1.0 && PyErr_Occurred()) {
    if (PyErr_ExceptionMatches(PyExc_OverflowError)) {  // an int beyond any double
      PyErr_Clear();
      throw py::value_error(std::string(name) + " is out of range (too large for a double)");
    }
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {  // e.g. an array of one or more dimensions
      const py::error_already_set err;  // (takes the error: its message goes into ours)
      throw py::type_error(std::string(name) + " must be a real number: " +
                           std::string(py::str(err.value())));
    }
    throw py::error_already_set();  // whatever else the argument's __float__ raised
  }
  return v;
}

// A norm order: a real number > 0, inf, or the string 'inf' (torch's clip_grad_norm_
// takes float(norm_type), so 'inf' works there too).
inline double as_norm_type(PyObject* o, double fallback) {
  if (o == nullptr) return fallback;
  double p = 0;
  if (PyUnicode_Check(o)) {
    const std::string s = py::reinterpret_borrow<py::str>(o);
    if (s != "inf") throw py::value_error("norm_type must be a number > 0 or inf, got '" + s + "'");
    p = std::numeric_limits<double>::infinity();
  } else {
    p = as_double(o, "norm_type", fallback);
  }
  const std::string err = adamcore::check_norm_type(p);
  if (!err.empty()) throw py::value_error(err);
  return p;
}

// Flags take a bool (Python's or NumPy's) only: an int or a string is more often a
// misplaced argument than a flag, and every front-end applies this one rule.
inline bool as_bool(PyObject* o, const char* name, bool fallback) {
  if (o == nullptr) return fallback;
  if (o == Py_True) return true;
  if (o == Py_False) return false;
  const std::string type = Py_TYPE(o)->tp_name;
  if (!is_numpy_bool(o)) {
    throw py::type_error(std::string(name) + " must be a bool, got " + type);
  }
  const int v = PyObject_IsTrue(o);
  if (v < 0) throw py::error_already_set();
  return v == 1;
}

inline std::int64_t as_step(PyObject* o) {
  if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
    throw py::type_error(std::string("step must be an integer, got ") + Py_TYPE(o)->tp_name);
  }
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) {
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) throw py::error_already_set();
    PyErr_Clear();
    throw py::value_error("step is out of range");
  }
  return static_cast<std::int64_t>(v);
}

// A seed: an integer in [0, 2^64), not a bool (None or absent: 0).
inline std::uint64_t as_seed(PyObject* o) {
  if (o == nullptr || o == Py_None) return 0;
  if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
    throw py::type_error(std::string("seed must be an integer, got ") + Py_TYPE(o)->tp_name);
  }
  PyObject* index = PyNumber_Index(o);
  if (index == nullptr) throw py::error_already_set();
  const unsigned long long v = PyLong_AsUnsignedLongLong(index);
  const bool failed = v == static_cast<unsigned long long>(-1) && PyErr_Occurred();
  Py_DECREF(index);
  if (failed) {
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) throw py::error_already_set();
    PyErr_Clear();
    throw py::value_error("seed must be in [0, 2**64)");
  }
  return static_cast<std::uint64_t>(v);
}

// A convention name (a str; absent or None: torch-fused).
inline adamcore::Convention as_convention(PyObject* o) {
  if (o == nullptr || o == Py_None) return adamcore::Convention::torch_fused;
  if (!PyUnicode_Check(o)) {
    throw py::type_error(std::string("convention must be a str, got ") + Py_TYPE(o)->tp_name);
  }
  const char* name = PyUnicode_AsUTF8(o);
  if (name == nullptr) throw py::error_already_set();
  adamcore::Convention c;
  if (!adamcore::convention_from_name(name, &c)) {
    throw py::value_error(std::string("convention must be one of 'torch-fused', 'deepspeed', "
                                      "'optax', 'keras', got '") + name + "'");
  }
  return c;
}

// tail_width: an int (absent or None: 0); its values are checked with the convention.
inline int as_tail_width(PyObject* o) {
  if (o == nullptr || o == Py_None) return 0;
  if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
    throw py::type_error(std::string("tail_width must be an integer, got ") +
                         Py_TYPE(o)->tp_name);
  }
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (v < 0 || v > 1024) {
    throw py::value_error("tail_width must be 0, 8 or 16, got " + std::to_string(v));
  }
  return static_cast<int>(v);
}

// None (or absent) -> fallback.
inline py::handle as_handle(PyObject* o) { return o ? py::handle(o) : py::handle(Py_None); }

// Runs `body`, turning C++ exceptions into Python ones, as pybind11's dispatcher does.
template <class Body>
PyObject* guarded(Body&& body) {
  try {
    return body().release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
    return nullptr;
  } catch (...) {
    py::detail::try_translate_exceptions();
    return nullptr;
  }
}

}  // namespace adamcore_py
