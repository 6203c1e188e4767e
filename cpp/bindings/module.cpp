// Python bindings: the only file that sees pybind11.
//
// Every buffer argument is checked (exact float32 dtype, C-contiguous, writeable
// where it is written, equal sizes, no two buffers sharing memory) and every
// hyperparameter validated before any kernel runs, so a bad call raises and writes
// nothing. Arrays are never converted or copied: a copy would lose the in-place update.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cmath>
#include <sstream>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "adamcore/adamcore.h"
#include "adamcore/norm.h"
#include "fast_call.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// One argument's array, kept alive for the duration of the call (the GIL is released
// while the kernel runs, so the caller's list could drop its reference meanwhile).
// Bytes per element (a local copy of adamcore::dtype_size: this runs for every
// buffer of every call, and an out-of-line call costs more than the switch).
constexpr std::size_t item_size(adamcore::DType dtype) {
  return dtype == adamcore::DType::float64                                        ? 8
         : dtype == adamcore::DType::float32                                      ? 4
         : dtype == adamcore::DType::bfloat16 || dtype == adamcore::DType::float16 ? 2
                                                                                  : 0;
}

struct Buffer {
  py::object array;
  void* data = nullptr;
  std::size_t size = 0;
  adamcore::DType dtype = adamcore::DType::float32;
  std::size_t bytes() const { return size * item_size(dtype); }
};

std::string label(const char* name, std::ptrdiff_t index) {
  if (index < 0) return name;
  return std::string(name) + "[" + std::to_string(index) + "]";
}

constexpr int kNpyFloat32 = 11;  // NPY_FLOAT
constexpr int kNpyFloat64 = 12;  // NPY_DOUBLE
constexpr int kNpyFloat16 = 23;  // NPY_HALF
constexpr int kNpyUserDtype = 256;  // NPY_USERDEF: the first dtype a package registers

// The buffer dtype of a NumPy dtype, or none. bfloat16 is ml_dtypes' (the dtype JAX
// and the ML ecosystem use), recognised without importing ml_dtypes: a registered
// 2-byte 'V'-kind dtype whose scalar type is named bfloat16.
adamcore::DType buffer_dtype(PyObject* descr_object) {
  const auto* descr = py::detail::array_descriptor_proxy(descr_object);
  if (descr->byteorder == '>') return adamcore::DType::none;
  switch (descr->type_num) {
    case kNpyFloat32: return adamcore::DType::float32;
    case kNpyFloat64: return adamcore::DType::float64;
    case kNpyFloat16: return adamcore::DType::float16;
    default: break;
  }
  if (descr->type_num >= kNpyUserDtype && descr->kind == 'V' &&
      py::reinterpret_borrow<py::dtype>(descr_object).itemsize() == 2) {
    const char* type_name = reinterpret_cast<PyTypeObject*>(descr->typeobj)->tp_name;
    const char* dot = std::strrchr(type_name, '.');
    if (std::strcmp(dot ? dot + 1 : type_name, "bfloat16") == 0) return adamcore::DType::bfloat16;
  }
  return adamcore::DType::none;
}

// Checks one argument with NumPy's object layout directly (this runs once per array
// per step, so it avoids building dtype objects for float32). Names the argument on
// failure. Any buffer dtype is taken here; the call's layout is checked afterwards.
Buffer take_buffer(py::handle obj, const char* name, std::ptrdiff_t index, bool written) {
  auto& api = py::detail::npy_api::get();
  if (!api.PyArray_Check_(obj.ptr())) {
    throw py::type_error(label(name, index) + " must be a numpy.ndarray of float32, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  const auto* arr = py::detail::array_proxy(obj.ptr());
  const auto* descr = py::detail::array_descriptor_proxy(arr->descr);
  adamcore::DType dtype = adamcore::DType::float32;
  if (descr->type_num != kNpyFloat32 || descr->byteorder == '>') {
    dtype = buffer_dtype(arr->descr);
    if (dtype == adamcore::DType::none) {
      throw py::type_error(label(name, index) +
                           " must have dtype float32, float64, bfloat16 or float16, got " +
                           std::string(py::str(py::reinterpret_borrow<py::object>(arr->descr))) +
                           " (adamcore never converts: the update is in place)");
    }
  }
  if (!(arr->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) {
    throw py::value_error(label(name, index) +
                          " must be C-contiguous (got a strided or reversed view; "
                          "adamcore never copies: the update is in place)");
  }
  const std::size_t item = item_size(dtype);  // a power of two
  if ((reinterpret_cast<std::uintptr_t>(arr->data) & (item - 1)) != 0) {
    throw py::value_error(label(name, index) + " is not aligned to " + std::to_string(item) +
                          " bytes (a view at an odd byte offset); "
                          "adamcore never copies: the update is in place");
  }
  if (written && !(arr->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) {
    throw py::value_error(label(name, index) +
                          " is read-only; it must be writeable to be updated in place");
  }
  Buffer b;
  b.array = py::reinterpret_borrow<py::object>(obj);
  std::size_t size = 1;
  for (int d = 0; d < arr->nd; ++d) size *= static_cast<std::size_t>(arr->dimensions[d]);
  b.size = size;
  b.data = arr->data;
  b.dtype = dtype;
  return b;
}

struct Span {
  const char* begin;
  const char* end;
  const char* name;
  std::ptrdiff_t index;
};

// Sorts spans[0, n) by address and raises if any two buffers share a byte.
void check_disjoint(Span* spans, std::size_t n) {
  std::sort(spans, spans + n, [](const Span& x, const Span& y) { return x.begin < y.begin; });
  std::size_t reach = 0;  // the span seen so far that ends furthest
  for (std::size_t i = 1; i < n; ++i) {
    if (spans[i].begin < spans[reach].end) {
      const bool same = spans[i].begin == spans[reach].begin && spans[i].end == spans[reach].end;
      throw py::value_error(label(spans[reach].name, spans[reach].index) + " and " +
                            label(spans[i].name, spans[i].index) +
                            (same ? " are the same memory" : " overlap in memory") +
                            "; every buffer must be distinct");
    }
    if (spans[i].end > spans[reach].end) reach = i;
  }
}

// With `spans` sorted and disjoint: raises if `b` shares a byte with any of them.
void check_outside(const std::vector<Span>& spans, const Buffer& b, const char* name,
                   std::ptrdiff_t index) {
  if (b.size == 0 || spans.empty()) return;
  const char* begin = reinterpret_cast<const char*>(b.data);
  const char* end = begin + b.bytes();
  auto after = std::lower_bound(spans.begin(), spans.end(), end,
                                [](const Span& s, const char* e) { return s.begin < e; });
  if (after == spans.begin()) return;
  const Span& before = *(after - 1);
  if (before.end > begin) {
    throw py::value_error(label(name, index) + " and " + label(before.name, before.index) +
                          " overlap in memory; every buffer must be distinct");
  }
}

// Appends b's bytes at `out` unless it is empty; returns the new end.
Span* add_span(Span* out, const Buffer& b, const char* name, std::ptrdiff_t index) {
  if (b.size == 0) return out;
  const char* p = reinterpret_cast<const char*>(b.data);
  *out = {p, p + b.bytes(), name, index};
  return out + 1;
}

// Raises unless an argument has as many elements as the call's first one.
void check_size(std::size_t size, const char* name, std::size_t first_size,
                const char* first_name, std::ptrdiff_t index) {
  if (size != first_size) {
    throw py::value_error(label(name, index) + " has " + std::to_string(size) +
                          " elements but " + label(first_name, index) + " has " +
                          std::to_string(first_size));
  }
}

// Borrowed item t of a list or tuple (checked by is_sequence_arg).
py::handle sequence_item(py::handle seq, std::size_t t) {
  return PyList_Check(seq.ptr()) ? PyList_GET_ITEM(seq.ptr(), static_cast<Py_ssize_t>(t))
                                 : PyTuple_GET_ITEM(seq.ptr(), static_cast<Py_ssize_t>(t));
}

bool is_sequence_arg(py::handle obj) {
  return py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj);
}

// The real number of items of a list or tuple (checked by is_sequence_arg). Never
// len(): a subclass's __len__ may lie, and the items are read from the array itself.
std::size_t sequence_size(py::handle seq) {
  return static_cast<std::size_t>(PyList_Check(seq.ptr()) ? PyList_GET_SIZE(seq.ptr())
                                                          : PyTuple_GET_SIZE(seq.ptr()));
}

// The buffers of a call over a parameter group: equal-length lists (or tuples) of
// arrays, one list per argument; args[0] must already be one.
class BufferSet {
 public:
  // names[i] is the argument name; written[i] whether the kernel writes it.
  BufferSet(const std::vector<py::handle>& args, const std::vector<const char*>& names,
            const std::vector<bool>& written) {
    const std::size_t count = sequence_size(args[0]);
    for (std::size_t a = 0; a < args.size(); ++a) {
      if (!is_sequence_arg(args[a])) {
        throw py::type_error(std::string(names[a]) + " must be a list of arrays like " +
                             names[0]);
      }
      if (sequence_size(args[a]) != count) {
        throw py::value_error(std::string(names[a]) + " has " +
                              std::to_string(sequence_size(args[a])) + " arrays but " +
                              names[0] + " has " + std::to_string(count));
      }
    }
    columns_.resize(args.size());
    spans_.resize(args.size() * count);
    Span* spans_end = spans_.data();
    for (std::size_t a = 0; a < args.size(); ++a) {
      columns_[a].reserve(count);
      for (std::size_t t = 0; t < count; ++t) {
        const auto index = static_cast<std::ptrdiff_t>(t);
        columns_[a].push_back(take_buffer(sequence_item(args[a], t), names[a], index, written[a]));
        const Buffer& b = columns_[a].back();
        if (a > 0) check_size(b.size, names[a], columns_[0][t].size, names[0], index);
        spans_end = add_span(spans_end, b, names[a], index);
      }
    }
    spans_.resize(static_cast<std::size_t>(spans_end - spans_.data()));
    check_disjoint(spans_.data(), spans_.size());
    count_ = count;
  }
  std::size_t count() const { return count_; }
  void* data(std::size_t arg, std::size_t t) const { return columns_[arg][t].data; }
  adamcore::DType dtype(std::size_t arg, std::size_t t) const { return columns_[arg][t].dtype; }
  std::size_t size(std::size_t t) const { return columns_[0][t].size; }
  // Every non-empty buffer, sorted by address and disjoint.
  const std::vector<Span>& spans() const { return spans_; }

 private:
  std::vector<std::vector<Buffer>> columns_;
  std::vector<Span> spans_;
  std::size_t count_ = 0;
};

double parse_prev_lr(py::handle prev_lr);

// The buffers of a call with one array per argument, checked without heap
// allocation (the common single-tensor call is a few microseconds in all).
class SingleSet {
 public:
  static constexpr std::size_t kMax = 6;
  SingleSet(const py::handle* args, const char* const* names, const bool* written,
            std::size_t n) {
    Span spans[kMax];
    Span* spans_end = spans;
    for (std::size_t a = 0; a < n; ++a) {
      if (a > 0 && is_sequence_arg(args[a])) {
        throw py::type_error(std::string(names[a]) + " must be an array like " + names[0]);
      }
      buffers_[a] = take_buffer(args[a], names[a], -1, written[a]);
      if (a > 0) check_size(buffers_[a].size, names[a], buffers_[0].size, names[0], -1);
      spans_end = add_span(spans_end, buffers_[a], names[a], -1);
    }
    check_disjoint(spans, static_cast<std::size_t>(spans_end - spans));
  }
  void* data(std::size_t a) const { return buffers_[a].data; }
  adamcore::DType dtype(std::size_t a) const { return buffers_[a].dtype; }
  std::size_t size() const { return buffers_[0].size; }

 private:
  Buffer buffers_[kMax];
};

// ---------------------------------------------------------------- layouts
// What each buffer argument of a call is, for the layout check.
enum class Role { param, grad, state, copy };

// The arguments of one tensor: their dtypes, roles and names, in argument order.
struct ArgList {
  static constexpr std::size_t kMax = SingleSet::kMax;
  adamcore::DType dtypes[kMax];
  Role roles[kMax];
  const char* names[kMax];
  std::size_t n = 0;
};

bool role_matches(Role role, adamcore::DType dtype, const adamcore::Layout& layout) {
  switch (role) {
    case Role::param: return dtype == layout.param;
    case Role::grad: return dtype == layout.grad;
    case Role::state: return dtype == layout.state;
    case Role::copy: return dtype == layout.param_copy;
  }
  return false;
}

// The layout of one tensor's buffers. Raises a TypeError unless it is accepted, naming
// the first argument that differs from the nearest accepted layout (the one that
// differs in the fewest arguments; float32 first).
adamcore::Layout layout_of(const ArgList& args, std::ptrdiff_t index) {
  // The common call, float32 everywhere without a copy, decided in a few compares.
  bool all_float32 = true;
  for (std::size_t a = 0; a < args.n; ++a) {
    all_float32 = all_float32 && args.dtypes[a] == adamcore::DType::float32;
  }
  if (all_float32 && args.roles[args.n - 1] != Role::copy) return adamcore::Layout{};

  adamcore::Layout layout;
  layout.param_copy = adamcore::DType::none;
  bool states_agree = true;
  bool seen_state = false;
  for (std::size_t a = 0; a < args.n; ++a) {
    const adamcore::DType d = args.dtypes[a];
    switch (args.roles[a]) {
      case Role::param: layout.param = d; break;
      case Role::grad: layout.grad = d; break;
      case Role::copy: layout.param_copy = d; break;
      case Role::state:
        if (seen_state && d != layout.state) states_agree = false;
        if (!seen_state) layout.state = d;
        seen_state = true;
        break;
    }
  }
  if (!seen_state) layout.state = layout.param;  // (no state given: not a step call)
  bool seen_grad = false;
  for (std::size_t a = 0; a < args.n; ++a) seen_grad = seen_grad || args.roles[a] == Role::grad;
  if (!seen_grad) layout.grad = layout.param;  // a group's held buffers: grads come later
  const std::string problem = adamcore::check_layout(layout);
  if (states_agree && problem.empty()) return layout;

  using adamcore::DType;
  const DType floats[] = {DType::float32, DType::float64, DType::bfloat16, DType::float16};
  const DType copies[] = {DType::none, DType::bfloat16, DType::float16};
  const bool has_copy = layout.param_copy != DType::none;
  adamcore::Layout best;
  std::size_t best_distance = 3 * args.n + 1;
  for (DType param : floats) {
    for (DType grad : floats) {
      for (DType state : floats) {
        for (DType copy : copies) {
          const adamcore::Layout candidate{param, grad, state, copy};
          if ((copy != DType::none) != has_copy ||
              !adamcore::check_layout(candidate).empty()) {
            continue;
          }
          // Arguments that differ, counted twice; ties go to the layout that keeps the
          // params' dtype (a group's step then names its grads, the one thing it takes).
          std::size_t distance = 0;
          for (std::size_t a = 0; a < args.n; ++a) {
            if (role_matches(args.roles[a], args.dtypes[a], candidate)) continue;
            distance += args.roles[a] == Role::param ? 3 : 2;
          }
          if (distance < best_distance) {
            best_distance = distance;
            best = candidate;
          }
        }
      }
    }
  }
  std::string accepted = problem.empty() ? adamcore::check_layout({DType::none}) : problem;
  accepted = accepted.substr(accepted.find("Accepted"));
  for (std::size_t a = 0; a < args.n; ++a) {
    if (role_matches(args.roles[a], args.dtypes[a], best)) continue;
    const DType want = args.roles[a] == Role::param   ? best.param
                       : args.roles[a] == Role::grad  ? best.grad
                       : args.roles[a] == Role::state ? best.state
                                                      : best.param_copy;
    throw py::type_error(label(args.names[a], index) + " must have dtype " +
                         adamcore::dtype_name(want) + ", got " +
                         adamcore::dtype_name(args.dtypes[a]) + ". " + accepted);
  }
  throw py::type_error("unsupported dtypes. " + accepted);  // (not reached)
}

// A list call's layout: every tensor's, which must be one and the same.
template <class Set>
adamcore::Layout layout_of_all(const Set& set, ArgList args) {
  adamcore::Layout first;
  for (std::size_t t = 0; t < set.count(); ++t) {
    for (std::size_t a = 0; a < args.n; ++a) args.dtypes[a] = set.dtype(a, t);
    const adamcore::Layout layout = layout_of(args, static_cast<std::ptrdiff_t>(t));
    if (t == 0) {
      first = layout;
    } else if (layout.param != first.param || layout.grad != first.grad ||
               layout.state != first.state || layout.param_copy != first.param_copy) {
      for (std::size_t a = 0; a < args.n; ++a) {
        if (set.dtype(a, t) != set.dtype(a, 0)) {
          throw py::type_error(label(args.names[a], static_cast<std::ptrdiff_t>(t)) +
                               " must have dtype " + adamcore::dtype_name(set.dtype(a, 0)) +
                               " like " + label(args.names[a], 0) + ", got " +
                               adamcore::dtype_name(set.dtype(a, t)) +
                               " (the tensors of one call share one layout)");
        }
      }
    }
  }
  return first;
}

// What a call does once every argument is checked.
struct Mode {
  bool diagnostics = false;  // return the step's GammaStats
  bool check_only = false;   // validate only: write nothing, return None
  adamcore::StepOptions options;  // grad_scale, found_inf, rounding, seed, clip_coef
  // Clipping fused into the step: the total norm of the call's grads (one read of
  // them) gives clip_coef as torch's clip_grad_norm_ computes it. < 0: no clipping.
  double max_grad_norm = -1.0;
  double norm_type = 2.0;
  bool error_if_nonfinite = false;
};

void check_hyper(const std::string& err) {
  if (!err.empty()) throw py::value_error(err);
}

// grad_scale (None: no unscaling; else a finite float32 > 0), found_inf (None, a bool,
// or a number: non-zero, NaN included, skips the step), rounding ("nearest" or
// "stochastic"), seed, clip_coef (None: 1, no clipping; else finite and >= 0).
adamcore::StepOptions parse_step_options(PyObject* grad_scale, PyObject* found_inf,
                                         PyObject* rounding, PyObject* seed,
                                         PyObject* clip_coef) {
  adamcore::StepOptions o;
  if (clip_coef != nullptr && clip_coef != Py_None) {
    o.clip_coef = adamcore_py::as_double(clip_coef, "clip_coef", 1.0);
    check_hyper(adamcore::check_step_options(o));
  }
  if (grad_scale != nullptr && grad_scale != Py_None) {
    const double scale = adamcore_py::as_double(grad_scale, "grad_scale", 0.0);
    const auto as_float = static_cast<float>(scale);
    if (!(std::isfinite(as_float) && as_float > 0.0f)) {
      std::ostringstream out;
      out.precision(17);
      out << "grad_scale must be finite and > 0 as a float32, got " << scale;
      throw py::value_error(out.str());
    }
    o.grad_scale = as_float;
  }
  if (found_inf != nullptr && found_inf != Py_None) {
    if (found_inf == Py_True || found_inf == Py_False || adamcore_py::is_numpy_bool(found_inf)) {
      o.found_inf = adamcore_py::as_bool(found_inf, "found_inf", false);
    } else {
      o.found_inf = adamcore_py::as_double(found_inf, "found_inf", 0.0) != 0.0;
    }
  }
  if (rounding != nullptr && rounding != Py_None) {
    if (!PyUnicode_Check(rounding)) {
      throw py::type_error(std::string("rounding must be 'nearest' or 'stochastic', got ") +
                           Py_TYPE(rounding)->tp_name);
    }
    const std::string r = py::reinterpret_borrow<py::str>(rounding);
    if (r == "stochastic") {
      o.rounding = adamcore::Rounding::stochastic;
    } else if (r != "nearest") {
      throw py::value_error("rounding must be 'nearest' or 'stochastic', got '" + r + "'");
    }
  }
  o.seed = adamcore_py::as_seed(seed);
  return o;
}

// max_grad_norm (None: no fused clipping; else a real >= 0, inf allowed), norm_type (a
// real > 0 or inf), error_if_nonfinite (a bool), into `mode`, whose options are parsed.
void parse_clipping(PyObject* max_grad_norm, PyObject* norm_type, PyObject* error_if_nonfinite,
                    Mode* mode) {
  mode->error_if_nonfinite = adamcore_py::as_bool(error_if_nonfinite, "error_if_nonfinite", false);
  mode->norm_type = adamcore_py::as_norm_type(norm_type, 2.0);
  if (max_grad_norm == nullptr || max_grad_norm == Py_None) return;
  const double m = adamcore_py::as_double(max_grad_norm, "max_grad_norm", -1.0);
  if (std::isnan(m) || m < 0) {
    throw py::value_error("max_grad_norm must be >= 0 (inf allowed), got " +
                          std::string(py::str(py::float_(m))));
  }
  if (mode->options.clip_coef != 1.0) {
    throw py::value_error("pass max_grad_norm or clip_coef, not both");
  }
  if (mode->options.grad_scale != 0.0f) {
    throw py::value_error("max_grad_norm with grad_scale: the norm is of unscaled grads; "
                          "unscale them first (GradScaler.unscale_), or clip separately");
  }
  mode->max_grad_norm = m;
}


// Runs a step function over checked buffers with the GIL released. With fused clipping
// the grads are read once for their norm first; the call then returns the norm (with
// diagnostics too: (GammaStats, norm)). error_if_nonfinite and a NaN or infinite norm
// raise RuntimeError with nothing written, as torch's clip_grad_norm_ does.
template <class Buffers, class Hyper>
py::object run_step(void (*step_fn)(const Buffers*, std::size_t, std::int64_t, const Hyper&,
                                    adamcore::GammaStats*, double, const adamcore::Layout&,
                                    const adamcore::StepOptions&),
                    const Buffers* tensors, std::size_t count, std::int64_t step,
                    const Hyper& h, const Mode& mode, double prev_lr,
                    const adamcore::Layout& layout) {
  check_hyper(adamcore::check_convention(h.convention, h.tail_width, layout));
  if (mode.check_only) return py::none();
  adamcore::GammaStats stats;
  const bool clipping = mode.max_grad_norm >= 0;
  adamcore::ClipInfo clip;
  bool refused = false;
  {
    py::gil_scoped_release release;
    adamcore::StepOptions options = mode.options;
    if (clipping && !options.found_inf) {
      std::vector<adamcore::GradBuffer> grads(count);
      for (std::size_t t = 0; t < count; ++t) {
        grads[t] = {tensors[t].grad, tensors[t].size, layout.grad};
      }
      clip = adamcore::clip_info(grads.data(), count, mode.max_grad_norm, mode.norm_type);
      refused = mode.error_if_nonfinite && clip.nonfinite;
      options.clip_coef = clip.coef;  // (NaN for a NaN norm, as torch's: not refused)
    }
    if (!refused) {
      step_fn(tensors, count, step, h, mode.diagnostics ? &stats : nullptr, prev_lr, layout,
              options);
    }
  }
  if (refused) {
    std::ostringstream out;
    out << "the total norm of order " << mode.norm_type
        << " of the grads is non-finite (" << clip.norm
        << "), so it cannot be clipped; nothing was written. Pass error_if_nonfinite=False "
           "to step with the coefficient it gives anyway";
    throw std::runtime_error(out.str());
  }
  if (!clipping) return mode.diagnostics ? py::cast(stats) : py::none();
  const py::float_ norm(mode.options.found_inf ? std::nan("") : clip.norm);
  if (!mode.diagnostics) return std::move(norm);
  return py::make_tuple(stats, norm);
}

// The buffer arguments of a functional call, in order, with their roles: the
// optional ones (max_exp_avg_sq, param_copy) only when given.
struct CallArgs {
  py::handle handles[SingleSet::kMax];
  bool written[SingleSet::kMax];
  ArgList list;
  void add(py::handle h, const char* name, bool is_written, Role role) {
    handles[list.n] = h;
    written[list.n] = is_written;
    list.roles[list.n] = role;
    list.names[list.n] = name;
    ++list.n;
  }
};

py::object adam_like(py::handle param, py::handle grad, py::handle exp_avg,
                     py::handle exp_avg_sq, py::handle max_exp_avg_sq, py::handle param_copy,
                     std::int64_t step, const adamcore::AdamHyper& h, const Mode& mode,
                     py::handle prev_lr) {
  check_hyper(adamcore::check_adam_hyper(h, step));
  const bool amsgrad = h.amsgrad;
  const double prev = parse_prev_lr(prev_lr);
  if (amsgrad && max_exp_avg_sq.is_none()) {
    throw py::value_error("max_exp_avg_sq is required when amsgrad=True");
  }
  if (!amsgrad && !max_exp_avg_sq.is_none()) {
    throw py::value_error("max_exp_avg_sq was given but amsgrad=False; pass amsgrad=True "
                          "to use it");
  }
  const bool copy = !param_copy.is_none();
  CallArgs c;
  c.add(param, "param", true, Role::param);
  const bool grads_written = mode.options.grad_scale != 0.0f;  // unscaled in place
  c.add(grad, "grad", grads_written, Role::grad);
  c.add(exp_avg, "exp_avg", true, Role::state);
  c.add(exp_avg_sq, "exp_avg_sq", true, Role::state);
  if (amsgrad) c.add(max_exp_avg_sq, "max_exp_avg_sq", true, Role::state);
  if (copy) c.add(param_copy, "param_copy", true, Role::copy);
  const std::size_t copy_at = c.list.n - 1;
  if (!is_sequence_arg(param)) {
    const SingleSet set(c.handles, c.list.names, c.written, c.list.n);
    for (std::size_t a = 0; a < c.list.n; ++a) c.list.dtypes[a] = set.dtype(a);
    const adamcore::Layout layout = layout_of(c.list, -1);
    const adamcore::AdamBuffers tensor{set.data(0), set.data(1), set.data(2), set.data(3),
                                       amsgrad ? set.data(4) : nullptr, set.size(),
                                       copy ? set.data(copy_at) : nullptr};
    return run_step(&adamcore::adam_step, &tensor, 1, step, h, mode, prev, layout);
  }
  const BufferSet set(std::vector<py::handle>(c.handles, c.handles + c.list.n),
                      std::vector<const char*>(c.list.names, c.list.names + c.list.n),
                      std::vector<bool>(c.written, c.written + c.list.n));
  const adamcore::Layout layout = layout_of_all(set, c.list);
  std::vector<adamcore::AdamBuffers> tensors(set.count());
  for (std::size_t t = 0; t < set.count(); ++t) {
    tensors[t].param = set.data(0, t);
    tensors[t].grad = set.data(1, t);
    tensors[t].exp_avg = set.data(2, t);
    tensors[t].exp_avg_sq = set.data(3, t);
    tensors[t].max_exp_avg_sq = amsgrad ? set.data(4, t) : nullptr;
    tensors[t].size = set.size(t);
    tensors[t].param_copy = copy ? set.data(copy_at, t) : nullptr;
    tensors[t].stream = t;  // a tensor's stochastic-rounding stream: its list position
  }
  return run_step(&adamcore::adam_step, tensors.data(), tensors.size(), step, h, mode,
                  prev, layout);
}

py::object adagrad(py::handle param, py::handle grad, py::handle state_sum,
                   py::handle param_copy, std::int64_t step, const adamcore::AdagradHyper& h,
                   const Mode& mode, py::handle prev_lr) {
  check_hyper(adamcore::check_adagrad_hyper(h, step));
  const double prev = parse_prev_lr(prev_lr);
  const bool copy = !param_copy.is_none();
  CallArgs c;
  c.add(param, "param", true, Role::param);
  c.add(grad, "grad", mode.options.grad_scale != 0.0f, Role::grad);
  c.add(state_sum, "state_sum", true, Role::state);
  if (copy) c.add(param_copy, "param_copy", true, Role::copy);
  if (!is_sequence_arg(param)) {
    const SingleSet set(c.handles, c.list.names, c.written, c.list.n);
    for (std::size_t a = 0; a < c.list.n; ++a) c.list.dtypes[a] = set.dtype(a);
    const adamcore::Layout layout = layout_of(c.list, -1);
    const adamcore::AdagradBuffers tensor{set.data(0), set.data(1), set.data(2), set.size(),
                                          copy ? set.data(3) : nullptr};
    return run_step(&adamcore::adagrad_step, &tensor, 1, step, h, mode, prev, layout);
  }
  const BufferSet set(std::vector<py::handle>(c.handles, c.handles + c.list.n),
                      std::vector<const char*>(c.list.names, c.list.names + c.list.n),
                      std::vector<bool>(c.written, c.written + c.list.n));
  const adamcore::Layout layout = layout_of_all(set, c.list);
  std::vector<adamcore::AdagradBuffers> tensors(set.count());
  for (std::size_t t = 0; t < set.count(); ++t) {
    tensors[t].param = set.data(0, t);
    tensors[t].grad = set.data(1, t);
    tensors[t].state_sum = set.data(2, t);
    tensors[t].size = set.size(t);
    tensors[t].param_copy = copy ? set.data(3, t) : nullptr;
    tensors[t].stream = t;
  }
  return run_step(&adamcore::adagrad_step, tensors.data(), tensors.size(), step, h, mode,
                  prev, layout);
}

double parse_prev_lr(py::handle prev_lr) {
  if (prev_lr.is_none()) return -1.0;
  const double prev = adamcore_py::as_double(prev_lr.ptr(), "prev_lr", -1.0);
  if (!(prev >= 0) || !std::isfinite(prev)) {
    throw py::value_error("prev_lr must be finite and >= 0, got " +
                          std::string(py::str(prev_lr)));
  }
  return prev;
}

void require_list(py::handle obj, const char* name) {
  if (!is_sequence_arg(obj)) {
    throw py::type_error(std::string(name) + " must be a list or tuple of float32 arrays");
  }
}

// Reads a step's grads: one float32 array per tensor, of the tensor's size, sharing
// no memory with the held state. Returns the arrays to keep them alive.
// Reads a step's grads: one array per tensor, of the tensor's size and of one dtype,
// sharing no memory with the held state. Returns the arrays to keep them alive, and
// sets *grad_dtype (left alone for an empty group).
template <class Tensors>
std::vector<py::object> take_grads(py::handle grads, const std::vector<Span>& held,
                                   Tensors& tensors, adamcore::DType* grad_dtype,
                                   bool written) {
  require_list(grads, "grads");
  const std::size_t count = tensors.size();
  if (sequence_size(grads) != count) {
    throw py::value_error("grads has " + std::to_string(sequence_size(grads)) +
                          " arrays but the group has " + std::to_string(count));
  }
  std::vector<py::object> keep(count);
  std::vector<Span> written_spans;  // grads unscaled in place must not share memory
  for (std::size_t t = 0; t < count; ++t) {
    const auto index = static_cast<std::ptrdiff_t>(t);
    Buffer g = take_buffer(sequence_item(grads, t), "grads", index, written);
    check_size(g.size, "grads", tensors[t].size, "params", index);
    check_outside(held, g, "grads", index);
    Span span;
    if (written && add_span(&span, g, "grads", index) != &span) written_spans.push_back(span);
    if (t == 0) {
      *grad_dtype = g.dtype;
    } else if (g.dtype != *grad_dtype) {
      throw py::type_error(label("grads", index) + " must have dtype " +
                           adamcore::dtype_name(*grad_dtype) + " like grads[0], got " +
                           adamcore::dtype_name(g.dtype) +
                           " (the tensors of one call share one layout)");
    }
    tensors[t].grad = g.data;
    keep[t] = std::move(g.array);
  }
  // (A grad given twice would be divided twice; only read, grads may share memory.)
  check_disjoint(written_spans.data(), written_spans.size());
  return keep;
}

// The buffers a group holds (params, state..., param copies), their roles and names.
struct HeldColumns {
  std::vector<py::handle> args;
  std::vector<const char*> names;
  ArgList roles;  // (dtypes filled per tensor by layout_of_all)
  void add(py::handle h, const char* name, Role role) {
    args.push_back(h);
    names.push_back(name);
    roles.roles[roles.n] = role;
    roles.names[roles.n] = name;
    ++roles.n;
  }
};

// A group's layout once a step's grads are known: raises naming grads[0] if their
// dtype does not fit the held buffers.
adamcore::Layout layout_with_grads(const adamcore::Layout& held, const char* state_name,
                                   bool has_copy, adamcore::DType grad_dtype) {
  ArgList args;
  const auto add = [&args](adamcore::DType d, Role role, const char* name) {
    args.dtypes[args.n] = d;
    args.roles[args.n] = role;
    args.names[args.n] = name;
    ++args.n;
  };
  add(held.param, Role::param, "params");
  add(grad_dtype, Role::grad, "grads");
  add(held.state, Role::state, state_name);
  if (has_copy) add(held.param_copy, Role::copy, "param_copies");
  return layout_of(args, 0);
}

// A parameter group's Adam state, validated once and held; a step checks only the grads.
class AdamGroup {
 public:
  AdamGroup(py::handle params, py::handle exp_avgs, py::handle exp_avg_sqs,
            py::handle max_exp_avg_sqs, py::handle param_copies)
      : amsgrad_(!max_exp_avg_sqs.is_none()),
        copy_(!param_copies.is_none()),
        columns_(columns(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, param_copies)),
        set_(columns_.args, columns_.names, std::vector<bool>(columns_.args.size(), true)),
        layout_(layout_of_all(set_, columns_.roles)) {
    tensors_.resize(set_.count());
    for (std::size_t t = 0; t < set_.count(); ++t) {
      tensors_[t].param = set_.data(0, t);
      tensors_[t].exp_avg = set_.data(1, t);
      tensors_[t].exp_avg_sq = set_.data(2, t);
      tensors_[t].max_exp_avg_sq = amsgrad_ ? set_.data(3, t) : nullptr;
      tensors_[t].size = set_.size(t);
      tensors_[t].param_copy = copy_ ? set_.data(columns_.args.size() - 1, t) : nullptr;
      tensors_[t].stream = t;
      numel_ += set_.size(t);
    }
  }

  // h.amsgrad is ignored: the group's buffers decide it.
  py::object step(py::handle grads, std::int64_t step, adamcore::AdamHyper h,
                  const Mode& mode, py::handle prev_lr) const {
    h.amsgrad = amsgrad_;
    check_hyper(adamcore::check_adam_hyper(h, step));
    const double prev = parse_prev_lr(prev_lr);
    std::vector<adamcore::AdamBuffers> tensors = tensors_;  // callers may step concurrently
    adamcore::DType grad_dtype = layout_.grad;
    const auto keep = take_grads(grads, set_.spans(), tensors, &grad_dtype,
                                 mode.options.grad_scale != 0.0f);
    const adamcore::Layout layout = layout_with_grads(layout_, "exp_avgs", copy_, grad_dtype);
    return run_step(&adamcore::adam_step, tensors.data(), tensors.size(), step, h, mode,
                    prev, layout);
  }

  std::size_t count() const { return tensors_.size(); }
  std::size_t numel() const { return numel_; }
  bool amsgrad() const { return amsgrad_; }

 private:
  static HeldColumns columns(py::handle params, py::handle exp_avgs, py::handle exp_avg_sqs,
                             py::handle max_exp_avg_sqs, py::handle param_copies) {
    require_list(params, "params");
    HeldColumns c;
    c.add(params, "params", Role::param);
    c.add(exp_avgs, "exp_avgs", Role::state);
    c.add(exp_avg_sqs, "exp_avg_sqs", Role::state);
    if (!max_exp_avg_sqs.is_none()) c.add(max_exp_avg_sqs, "max_exp_avg_sqs", Role::state);
    if (!param_copies.is_none()) c.add(param_copies, "param_copies", Role::copy);
    return c;
  }

  bool amsgrad_;
  bool copy_;
  HeldColumns columns_;
  BufferSet set_;
  adamcore::Layout layout_;  // the grads' dtype is the params' until a step says otherwise
  std::vector<adamcore::AdamBuffers> tensors_;
  std::size_t numel_ = 0;
};

// A parameter group's AdaGrad state, validated once and held.
class AdagradGroup {
 public:
  AdagradGroup(py::handle params, py::handle state_sums, py::handle param_copies)
      : copy_(!param_copies.is_none()),
        columns_(columns(params, state_sums, param_copies)),
        set_(columns_.args, columns_.names, std::vector<bool>(columns_.args.size(), true)),
        layout_(layout_of_all(set_, columns_.roles)) {
    tensors_.resize(set_.count());
    for (std::size_t t = 0; t < set_.count(); ++t) {
      tensors_[t].param = set_.data(0, t);
      tensors_[t].state_sum = set_.data(1, t);
      tensors_[t].size = set_.size(t);
      tensors_[t].param_copy = copy_ ? set_.data(2, t) : nullptr;
      tensors_[t].stream = t;
      numel_ += set_.size(t);
    }
  }

  py::object step(py::handle grads, std::int64_t step, const adamcore::AdagradHyper& h,
                  const Mode& mode, py::handle prev_lr) const {
    check_hyper(adamcore::check_adagrad_hyper(h, step));
    const double prev = parse_prev_lr(prev_lr);
    std::vector<adamcore::AdagradBuffers> tensors = tensors_;
    adamcore::DType grad_dtype = layout_.grad;
    const auto keep = take_grads(grads, set_.spans(), tensors, &grad_dtype,
                                 mode.options.grad_scale != 0.0f);
    const adamcore::Layout layout = layout_with_grads(layout_, "state_sums", copy_, grad_dtype);
    return run_step(&adamcore::adagrad_step, tensors.data(), tensors.size(), step, h, mode,
                    prev, layout);
  }

  std::size_t count() const { return tensors_.size(); }
  std::size_t numel() const { return numel_; }

 private:
  static HeldColumns columns(py::handle params, py::handle state_sums,
                             py::handle param_copies) {
    require_list(params, "params");
    HeldColumns c;
    c.add(params, "params", Role::param);
    c.add(state_sums, "state_sums", Role::state);
    if (!param_copies.is_none()) c.add(param_copies, "param_copies", Role::copy);
    return c;
  }

  bool copy_;
  HeldColumns columns_;
  BufferSet set_;
  adamcore::Layout layout_;
  std::vector<adamcore::AdagradBuffers> tensors_;
  std::size_t numel_ = 0;
};

adamcore::Isa parse_isa(const std::string& name) {
  adamcore::Isa isa;
  if (!adamcore::isa_from_name(name, &isa)) {
    throw py::value_error("unknown ISA '" + name + "'; valid choices: " +
                          adamcore::isa_choices());
  }
  return isa;
}

std::vector<std::string> isa_list(bool supported_only) {
  std::vector<std::string> out;
  for (int i = 0; i < adamcore::kIsaCount; ++i) {
    const auto isa = static_cast<adamcore::Isa>(i);
    if (supported_only ? adamcore::isa_supported(isa) : adamcore::isa_compiled(isa)) {
      out.emplace_back(adamcore::isa_name(isa));
    }
  }
  return out;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

void set_isa_by_name(const std::string& name) {
  const adamcore::Isa isa = parse_isa(name);
  if (!adamcore::set_isa(isa)) {
    throw py::value_error("ISA '" + name + "' is not " +
                          (adamcore::isa_compiled(isa) ? "supported by this CPU"
                                                       : "compiled into this build") +
                          "; available here: " + joined(isa_list(true)));
  }
}

// ADAMCORE_ISA overrides the choice at import; a bad value fails the import.
void apply_isa_environment() {
  const char* env = std::getenv("ADAMCORE_ISA");
  if (env == nullptr || *env == '\0') return;
  adamcore::Isa isa;
  if (!adamcore::isa_from_name(env, &isa)) {
    throw py::import_error(std::string("ADAMCORE_ISA='") + env +
                           "' is not a valid ISA; valid choices: " + adamcore::isa_choices());
  }
  if (!adamcore::set_isa(isa)) {
    throw py::import_error(std::string("ADAMCORE_ISA='") + env +
                           "' is not available on this machine; available here: " +
                           joined(isa_list(true)));
  }
}

// ADAMCORE_NUM_THREADS sets the thread count at import; a malformed value fails the
// import, as a bad ADAMCORE_ISA does, instead of being ignored.
void apply_threads_environment() {
  const char* env = std::getenv("ADAMCORE_NUM_THREADS");
  if (env == nullptr || *env == '\0') return;
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(env, &end, 10);
  if (!std::isdigit(static_cast<unsigned char>(env[0])) || *end != '\0' || errno != 0 ||
      n < 1 || n > adamcore::kMaxThreads) {
    throw py::import_error(std::string("ADAMCORE_NUM_THREADS='") + env +
                           "' is not a thread count; expected an integer in [1, " +
                           std::to_string(adamcore::kMaxThreads) + "]");
  }
  adamcore::set_num_threads(static_cast<int>(n));
}

// ---------------------------------------------------------------- fast entry points
using adamcore_py::as_bool;
using adamcore_py::as_double;
using adamcore_py::as_handle;
using adamcore_py::as_step;
using adamcore_py::guarded;
using adamcore_py::Signature;

PyObject* adam_family_fast(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                           bool decoupled) {
  return guarded([&]() -> py::object {
    static const Signature sig(
        decoupled ? "adamw_step" : "adam_step",
        {"param", "grad", "exp_avg", "exp_avg_sq", "step", "lr", "beta1", "beta2", "eps",
         "weight_decay", "amsgrad", "max_exp_avg_sq", "maximize", "bias_correction",
         "diagnostics", "prev_lr", "check_only", "param_copy", "grad_scale", "found_inf",
         "rounding", "seed", "clip_coef", "max_grad_norm", "norm_type", "error_if_nonfinite",
         "convention", "tail_width", "eps_root", "nesterov"},
        4, 4, {"step"});
    Signature::Parsed a;
    sig.parse(args, nargs, kwnames, a);
    const adamcore::AdamHyper h{as_double(a[5], "lr", 1e-3),
                                as_double(a[6], "beta1", 0.9),
                                as_double(a[7], "beta2", 0.999),
                                as_double(a[8], "eps", 1e-8),
                                as_double(a[9], "weight_decay", decoupled ? 1e-2 : 0.0),
                                decoupled,
                                as_bool(a[10], "amsgrad", false),
                                as_bool(a[12], "maximize", false),
                                as_bool(a[13], "bias_correction", true),
                                adamcore_py::as_convention(a[26]),
                                adamcore_py::as_tail_width(a[27]),
                                as_double(a[28], "eps_root", 0.0),
                                as_bool(a[29], "nesterov", false)};
    Mode mode{as_bool(a[14], "diagnostics", false), as_bool(a[16], "check_only", false),
              parse_step_options(a[18], a[19], a[20], a[21], a[22])};
    parse_clipping(a[23], a[24], a[25], &mode);
    return adam_like(a[0], a[1], a[2], a[3], as_handle(a[11]), as_handle(a[17]), as_step(a[4]), h,
                     mode, as_handle(a[15]));
  });
}

PyObject* adam_step_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  return adam_family_fast(args, nargs, kw, false);
}

PyObject* adamw_step_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kw) {
  return adam_family_fast(args, nargs, kw, true);
}

PyObject* adagrad_step_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs,
                            PyObject* kwnames) {
  return guarded([&]() -> py::object {
    static const Signature sig("adagrad_step",
                               {"param", "grad", "state_sum", "step", "lr", "lr_decay",
                                "weight_decay", "eps", "maximize", "diagnostics", "prev_lr",
                                "check_only", "param_copy", "grad_scale", "found_inf",
                                "rounding", "seed", "clip_coef", "max_grad_norm", "norm_type",
                                "error_if_nonfinite", "convention", "tail_width"},
                               3, 3, {"step"});
    Signature::Parsed a;
    sig.parse(args, nargs, kwnames, a);
    const adamcore::AdagradHyper h{as_double(a[4], "lr", 1e-2),
                                   as_double(a[5], "lr_decay", 0.0),
                                   as_double(a[6], "weight_decay", 0.0),
                                   as_double(a[7], "eps", 1e-10),
                                   as_bool(a[8], "maximize", false),
                                   adamcore_py::as_convention(a[21]),
                                   adamcore_py::as_tail_width(a[22])};
    Mode mode{as_bool(a[9], "diagnostics", false), as_bool(a[11], "check_only", false),
              parse_step_options(a[13], a[14], a[15], a[16], a[17])};
    parse_clipping(a[18], a[19], a[20], &mode);
    return adagrad(a[0], a[1], a[2], as_handle(a[12]), as_step(a[3]), h, mode, as_handle(a[10]));
  });
}

PyObject* adam_group_step_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                               PyObject* kwnames) {
  return guarded([&]() -> py::object {
    static const Signature sig("AdamGroup.step",
                               {"grads", "step", "lr", "beta1", "beta2", "eps", "weight_decay",
                                "decoupled", "maximize", "bias_correction", "diagnostics",
                                "prev_lr", "check_only", "grad_scale", "found_inf", "rounding",
                                "seed", "clip_coef", "max_grad_norm", "norm_type",
                                "error_if_nonfinite", "convention", "tail_width", "eps_root",
                                "nesterov"},
                               1, 1, {"step"});
    Signature::Parsed a;
    sig.parse(args, nargs, kwnames, a);
    const AdamGroup& group = py::handle(self).cast<const AdamGroup&>();
    const adamcore::AdamHyper h{as_double(a[2], "lr", 1e-3),
                                as_double(a[3], "beta1", 0.9),
                                as_double(a[4], "beta2", 0.999),
                                as_double(a[5], "eps", 1e-8),
                                as_double(a[6], "weight_decay", 0.0),
                                as_bool(a[7], "decoupled", false),
                                group.amsgrad(),
                                as_bool(a[8], "maximize", false),
                                as_bool(a[9], "bias_correction", true),
                                adamcore_py::as_convention(a[21]),
                                adamcore_py::as_tail_width(a[22]),
                                as_double(a[23], "eps_root", 0.0),
                                as_bool(a[24], "nesterov", false)};
    Mode mode{as_bool(a[10], "diagnostics", false), as_bool(a[12], "check_only", false),
              parse_step_options(a[13], a[14], a[15], a[16], a[17])};
    parse_clipping(a[18], a[19], a[20], &mode);
    return group.step(a[0], as_step(a[1]), h, mode, as_handle(a[11]));
  });
}

PyObject* adagrad_group_step_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                                  PyObject* kwnames) {
  return guarded([&]() -> py::object {
    static const Signature sig("AdagradGroup.step",
                               {"grads", "step", "lr", "lr_decay", "weight_decay", "eps",
                                "maximize", "diagnostics", "prev_lr", "check_only",
                                "grad_scale", "found_inf", "rounding", "seed", "clip_coef",
                                "max_grad_norm", "norm_type", "error_if_nonfinite",
                                "convention", "tail_width"},
                               1, 1, {"step"});
    Signature::Parsed a;
    sig.parse(args, nargs, kwnames, a);
    const AdagradGroup& group = py::handle(self).cast<const AdagradGroup&>();
    const adamcore::AdagradHyper h{as_double(a[2], "lr", 1e-2),
                                   as_double(a[3], "lr_decay", 0.0),
                                   as_double(a[4], "weight_decay", 0.0),
                                   as_double(a[5], "eps", 1e-10),
                                   as_bool(a[6], "maximize", false),
                                   adamcore_py::as_convention(a[18]),
                                   adamcore_py::as_tail_width(a[19])};
    Mode mode{as_bool(a[7], "diagnostics", false), as_bool(a[9], "check_only", false),
              parse_step_options(a[10], a[11], a[12], a[13], a[14])};
    parse_clipping(a[15], a[16], a[17], &mode);
    return group.step(a[0], as_step(a[1]), h, mode, as_handle(a[8]));
  });
}

constexpr const char* kAdamDoc =
    "adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999, "
    "eps=1e-8, weight_decay=0.0, amsgrad=False, max_exp_avg_sq=None, maximize=False, "
    "bias_correction=True, diagnostics=False, prev_lr=None, check_only=False, "
    "param_copy=None, convention='torch-fused', tail_width=0, eps_root=0.0, nesterov=False)"
    "\n--\n\n"
    "One Adam step (L2 weight decay added to the gradient), in place.\n\n"
    "Buffers are C-contiguous, writeable arrays of one size that share no memory\n"
    "(grad may be read-only), or equal-length lists of them for a whole parameter group.\n"
    "Dtypes: all float32, all float64, all bfloat16 (ml_dtypes) or all float16; or float32\n"
    "params and state with bfloat16/float16 grads (widened exactly) and/or param_copy, a\n"
    "16-bit array (of the grads' dtype if they are 16-bit) that receives the updated\n"
    "params rounded to nearest even in the same pass.\n"
    "step is the step number after incrementing (1 first). amsgrad=True needs\n"
    "max_exp_avg_sq. bias_correction=False: step size lr, no sqrt(bc2) division.\n"
    "Returns None, or a GammaStats with diagnostics=True (prev_lr: the previous step's lr,\n"
    "default lr). check_only=True: check every argument as a step would, write nothing.\n"
    "Bit-identical to torch.optim.Adam(fused=True); see docs/numerics.md.\n"
    "convention='deepspeed' reproduces DeepSpeedCPUAdam instead (all-float32 buffers, no\n"
    "amsgrad); tail_width=8 or 16 (adamcore.torch.torch_tail_width())\n"
    "gives each tensor's last size % tail_width elements torch fused's scalar-tail recipe.\n"
    "convention='optax' (optax.adam/adamw/amsgrad under jax.jit; eps_root, nesterov) and\n"
    "'keras' (keras.optimizers.Adam/AdamW): all-float32, no maximize, bias correction on,\n"
    "weight decay decoupled only (adamw_step); amsgrad with optax keeps the max of the\n"
    "bias-corrected exp_avg_sq in max_exp_avg_sq, as optax.amsgrad does.\n"
    "diagnostics=True works under every convention: Γ from the convention's own\n"
    "denominator and step size (docs/numerics.md).";
constexpr const char* kAdamWDoc =
    "adamw_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999, "
    "eps=1e-8, weight_decay=1e-2, amsgrad=False, max_exp_avg_sq=None, maximize=False, "
    "bias_correction=True, diagnostics=False, prev_lr=None, check_only=False, "
    "param_copy=None, convention='torch-fused', tail_width=0, eps_root=0.0, nesterov=False)"
    "\n--\n\n"
    "One AdamW step (decoupled weight decay: param *= 1 - lr*weight_decay first), in place.\n"
    "Arguments as adam_step. Bit-identical to torch.optim.AdamW(fused=True).";
constexpr const char* kAdagradDoc =
    "adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, "
    "eps=1e-10, maximize=False, diagnostics=False, prev_lr=None, check_only=False, "
    "param_copy=None, convention='torch-fused', tail_width=0)\n--\n\n"
    "One AdaGrad step, in place; the learning rate is lr / (1 + (step-1)*lr_decay).\n"
    "Dtypes and param_copy as adam_step.\n"
    "state_sum starts at torch's initial_accumulator_value (fill it yourself).\n"
    "Bit-identical to torch.optim.Adagrad(fused=True); convention='deepspeed' (no lr_decay):\n"
    "DeepSpeedCPUAdagrad's arithmetic; 'keras' (no lr_decay, weight_decay or maximize):\n"
    "keras.optimizers.Adagrad's. 'optax' is refused (XLA's rsqrt is not correctly rounded).\n"
    "convention and tail_width as adam_step.";

PyMethodDef kStepFunctions[] = {
    {"adam_step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(adam_step_fast)),
     METH_FASTCALL | METH_KEYWORDS, kAdamDoc},
    {"adamw_step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(adamw_step_fast)),
     METH_FASTCALL | METH_KEYWORDS, kAdamWDoc},
    {"adagrad_step",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(adagrad_step_fast)),
     METH_FASTCALL | METH_KEYWORDS, kAdagradDoc},
    {nullptr, nullptr, 0, nullptr}};

PyMethodDef kAdamGroupStep = {
    "step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(adam_group_step_fast)),
    METH_FASTCALL | METH_KEYWORDS,
    "step(grads, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, "
    "decoupled=False, maximize=False, bias_correction=True, diagnostics=False, prev_lr=None, "
    "check_only=False, convention='torch-fused', tail_width=0, eps_root=0.0, nesterov=False)"
    "\n--\n\nOne step of every tensor in the group; only the grads are checked."};

PyMethodDef kAdagradGroupStep = {
    "step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(adagrad_group_step_fast)),
    METH_FASTCALL | METH_KEYWORDS,
    "step(grads, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, "
    "maximize=False, diagnostics=False, prev_lr=None, check_only=False, "
    "convention='torch-fused', tail_width=0)\n--\n\n"
    "One step of every tensor in the group; only the grads are checked."};

// Installs a METH_FASTCALL method on a pybind11 class.
void add_fast_method(py::handle cls, PyMethodDef* def) {
  PyObject* descr = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), def);
  if (descr == nullptr || PyObject_SetAttrString(cls.ptr(), def->ml_name, descr) != 0) {
    Py_XDECREF(descr);
    throw py::error_already_set();
  }
  Py_DECREF(descr);
}

}  // namespace

#include "norm_bindings.inc"  // grad_norm, clip_grad_norm, GradNorm
#include "lion_sgd_bindings.inc"  // sgd_step, lion_step

PYBIND11_MODULE(_core, m) {
  m.doc() = "adamcore's native kernels (use the adamcore package, not this module)";
  apply_isa_environment();
  apply_threads_environment();

  py::class_<adamcore::GammaStats>(m, "GammaStats", R"doc(
Reddi et al.'s Γ for one step, reduced over every coordinate of the call.

Γ_i = den_{t,i}/a_t − den_{t−1,i}/a_{t−1}: the change of coordinate i's inverse
effective learning rate (den: the update's denominator, a: the step size).
Γ_i < 0 means the effective learning rate a/den of coordinate i grew.
)doc")
      .def_readonly("defined", &adamcore::GammaStats::defined,
                    "False at step 1, where there is no previous step to compare with.")
      .def_readonly("count", &adamcore::GammaStats::count, "Coordinates examined.")
      .def_readonly("undefined", &adamcore::GammaStats::undefined,
                    "Coordinates whose Γ_i is NaN (a NaN or Inf reached their state); they "
                    "are left out of negative and gamma_min.")
      .def_readonly("negative", &adamcore::GammaStats::negative,
                    "Coordinates with Γ_i < 0 (effective learning rate increased).")
      .def_readonly("gamma_min", &adamcore::GammaStats::gamma_min,
                    "Smallest Γ_i (NaN if not defined; NaN coordinates are skipped).")
      .def_readonly("lr_min", &adamcore::GammaStats::lr_min,
                    "Smallest effective learning rate a_t/den_{t,i}.")
      .def_readonly("lr_max", &adamcore::GammaStats::lr_max,
                    "Largest effective learning rate a_t/den_{t,i}.")
      .def_property_readonly(
          "fraction_negative",
          [](const adamcore::GammaStats& s) {
            return s.count ? static_cast<double>(s.negative) / static_cast<double>(s.count)
                           : 0.0;
          },
          "negative / count.")
      .def("as_dict",
           [](const adamcore::GammaStats& s) {
             return py::dict("defined"_a = s.defined, "count"_a = s.count,
                             "negative"_a = s.negative, "undefined"_a = s.undefined,
                             "gamma_min"_a = s.gamma_min,
                             "lr_min"_a = s.lr_min, "lr_max"_a = s.lr_max);
           })
      .def("__repr__", [](const adamcore::GammaStats& s) {
        return "GammaStats(defined=" + std::string(s.defined ? "True" : "False") +
               ", count=" + std::to_string(s.count) + ", negative=" +
               std::to_string(s.negative) + ", undefined=" + std::to_string(s.undefined) +
               ", gamma_min=" +
               std::string(py::str(py::float_(s.gamma_min))) + ", lr_min=" +
               std::string(py::str(py::float_(s.lr_min))) + ", lr_max=" +
               std::string(py::str(py::float_(s.lr_max))) + ")";
      });

  if (PyModule_AddFunctions(m.ptr(), kStepFunctions) != 0) throw py::error_already_set();

  auto adam_group = py::class_<AdamGroup>(m, "AdamGroup", R"doc(
A parameter group's Adam/AdamW/AMSGrad state, validated once and held.

AdamGroup(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, param_copies=None) takes
equal-length lists of contiguous, writeable arrays that share no memory (max_exp_avg_sqs
given means amsgrad), in one of adam_step's layouts. step(grads, ...) checks only the
grads, then updates every array in place with one native call. The group keeps
references to the arrays it holds.
)doc")
      .def(py::init<py::handle, py::handle, py::handle, py::handle, py::handle>(), "params"_a,
           "exp_avgs"_a, "exp_avg_sqs"_a, "max_exp_avg_sqs"_a = py::none(),
           "param_copies"_a = py::none())
      .def_property_readonly("count", &AdamGroup::count, "Number of tensors.")
      .def_property_readonly("numel", &AdamGroup::numel, "Elements over all tensors.")
      .def_property_readonly("amsgrad", &AdamGroup::amsgrad)
      .def("__len__", &AdamGroup::count);

  add_fast_method(adam_group, &kAdamGroupStep);

  auto adagrad_group = py::class_<AdagradGroup>(m, "AdagradGroup", R"doc(
A parameter group's AdaGrad state (params, state_sums and optionally param_copies lists),
validated once and held.
)doc")
      .def(py::init<py::handle, py::handle, py::handle>(), "params"_a, "state_sums"_a,
           "param_copies"_a = py::none())
      .def_property_readonly("count", &AdagradGroup::count, "Number of tensors.")
      .def_property_readonly("numel", &AdagradGroup::numel, "Elements over all tensors.")
      .def("__len__", &AdagradGroup::count);

  add_fast_method(adagrad_group, &kAdagradGroupStep);

  m.def("get_isa", [] { return std::string(adamcore::isa_name(adamcore::active_isa())); });
  m.def("set_isa", &set_isa_by_name, "name"_a);
  m.def("available_isas", [] { return isa_list(true); });
  m.def("compiled_isas", [] { return isa_list(false); });
  m.def("best_isa", [] { return std::string(adamcore::isa_name(adamcore::best_isa())); });
  m.def("get_num_threads", &adamcore::get_num_threads);
  m.def(
      "set_num_threads",
      [](long long n) {
        if (n < 1 || n > adamcore::kMaxThreads) {
          throw py::value_error("n must be in [1, " + std::to_string(adamcore::kMaxThreads) +
                                "], got " + std::to_string(n));
        }
        adamcore::set_num_threads(static_cast<int>(n));
      },
      "n"_a);
  m.def("get_parallel_threshold", &adamcore::get_parallel_threshold);
  m.def("set_parallel_threshold", &adamcore::set_parallel_threshold, "elements"_a);
  m.def("built_with_openmp", &adamcore::built_with_openmp);
  m.def("threading_status", [] {
    const adamcore::ThreadingStatus s = adamcore::threading_status();
    return py::dict("requested"_a = s.requested, "forked_child"_a = s.forked_child,
                    "solo_steps_left"_a = s.solo_steps_left, "stalls"_a = s.stalls);
  });
  register_norm(m);
  register_lion_sgd(m);
#ifdef ADAMCORE_VERSION
  m.attr("__version__") = ADAMCORE_VERSION;
#endif
}
