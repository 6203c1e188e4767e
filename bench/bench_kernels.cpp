// google-benchmark microbenchmarks of adamcore's kernels, beside the memory-bandwidth
// ceiling measured in the same binary.
//
// Benchmarks are registered at run time, one per (optimizer, ISA this CPU runs,
// thread count, size):
//   adam/avx512/threads:1/1048576        Adam step (28 bytes moved per element)
//   adamw/...  amsgrad/... (36 B)  adagrad/... (20 B)
//   stream_inplace/threads:1/1048576     y = y + s*x: read x, read y, write y (12 B)
//   stream_copy/threads:1/1048576        y = x: read x, write y (8 B counted, as STREAM does)
// bytes_per_second is the bytes the step must move, so at DRAM sizes an optimizer's
// bytes_per_second divided by stream_inplace's is the fraction of the ceiling reached.
//
// Extra flags (parsed before google-benchmark's own):
//   --adamcore_threads=1,2            thread counts to register (default: 1,2)
//   --adamcore_parallel_threshold=N   adamcore::set_parallel_threshold(N) before running
//                                     (default: the library's own threshold)
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "adamcore/adamcore.h"

namespace {

constexpr int kMinLog2Size = 10;
constexpr int kMaxLog2Size = 26;
constexpr int kLog2SizeStep = 2;  // 2^10, 2^12, ..., 2^26

// 64-byte aligned float buffer, freed on scope exit.
struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using FloatBuffer = std::unique_ptr<float[], AlignedFree>;

FloatBuffer make_buffer(std::size_t n, float value) {
  const std::size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
  if (p == nullptr) throw std::bad_alloc();
  // Touch every page before timing so page faults are not measured.
  for (std::size_t i = 0; i < n; ++i) p[i] = value;
  return FloatBuffer(p);
}

// Gradient values that vary per element but stay well inside the normal range, so no
// state decays into subnormals during a benchmark (the Python harness has that case).
FloatBuffer make_gradient(std::size_t n) {
  FloatBuffer g = make_buffer(n, 0.0f);
  for (std::size_t i = 0; i < n; ++i) g[i] = 1e-3f * static_cast<float>(1 + (i * 7919u) % 1000);
  return g;
}

enum class Optimizer { adam, adamw, amsgrad, adagrad };

struct OptimizerInfo {
  Optimizer kind;
  const char* name;
  int bytes_per_element;  // bytes a step must read and write
};

constexpr OptimizerInfo kOptimizers[] = {
    {Optimizer::adam, "adam", 28},        // read p,g,m,v; write p,m,v
    {Optimizer::adamw, "adamw", 28},
    {Optimizer::amsgrad, "amsgrad", 36},  // + read and write vmax
    {Optimizer::adagrad, "adagrad", 20},  // read p,g,s; write p,s
};

void set_counters(benchmark::State& state, std::size_t n, int bytes_per_element) {
  const auto done = static_cast<std::int64_t>(state.iterations());
  state.SetItemsProcessed(done * static_cast<std::int64_t>(n));
  state.SetBytesProcessed(done * static_cast<std::int64_t>(n) * bytes_per_element);
}

void run_optimizer(benchmark::State& state, OptimizerInfo opt, adamcore::Isa isa,
                   int threads) {
  const auto n = static_cast<std::size_t>(state.range(0));
  if (!adamcore::set_isa(isa)) {
    state.SkipWithError("ISA not supported on this CPU");
    return;
  }
  adamcore::set_num_threads(threads);

  FloatBuffer param = make_buffer(n, 0.5f);
  FloatBuffer grad = make_gradient(n);
  std::int64_t step = 1;

  if (opt.kind == Optimizer::adagrad) {
    FloatBuffer state_sum = make_buffer(n, 0.0f);
    adamcore::AdagradBuffers buffers{param.get(), grad.get(), state_sum.get(), n};
    const adamcore::AdagradHyper hyper{};
    for (auto _ : state) {
      adamcore::adagrad_step(&buffers, 1, step++, hyper);
      benchmark::ClobberMemory();
    }
  } else {
    FloatBuffer exp_avg = make_buffer(n, 0.0f);
    FloatBuffer exp_avg_sq = make_buffer(n, 0.0f);
    FloatBuffer max_exp_avg_sq;
    adamcore::AdamHyper hyper{};
    if (opt.kind == Optimizer::adamw) {
      hyper.decoupled = true;
      hyper.weight_decay = 1e-2;
    }
    if (opt.kind == Optimizer::amsgrad) {
      hyper.amsgrad = true;
      max_exp_avg_sq = make_buffer(n, 0.0f);
    }
    adamcore::AdamBuffers buffers{param.get(),      grad.get(), exp_avg.get(),
                                  exp_avg_sq.get(), max_exp_avg_sq.get(), n};
    for (auto _ : state) {
      adamcore::adam_step(&buffers, 1, step++, hyper);
      benchmark::ClobberMemory();
    }
  }
  set_counters(state, n, opt.bytes_per_element);
  state.counters["threads"] = threads;
}

// The bandwidth ceiling. kInPlace: y = y + s*x, the access pattern of an in-place
// optimizer (streams read, one written back) with almost no arithmetic; 12 B/element.
// kCopy: y = x; 8 B/element counted, as STREAM does (write-allocate traffic not counted).
enum class Stream { kInPlace, kCopy };

void run_stream(benchmark::State& state, Stream kind, int threads) {
  const auto n = static_cast<std::size_t>(state.range(0));
  FloatBuffer x = make_buffer(n, 1.0f);
  FloatBuffer y = make_buffer(n, 0.0f);
  float* __restrict yp = y.get();
  const float* __restrict xp = x.get();
  // A tiny scale keeps y finite however long the benchmark runs.
  const float scale = kind == Stream::kInPlace ? 1e-7f : 0.0f;
  const auto count = static_cast<std::ptrdiff_t>(n);
  for (auto _ : state) {
    if (kind == Stream::kInPlace) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
      for (std::ptrdiff_t i = 0; i < count; ++i) yp[i] = yp[i] + scale * xp[i];
    } else {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
      for (std::ptrdiff_t i = 0; i < count; ++i) yp[i] = xp[i];
    }
    benchmark::ClobberMemory();
  }
  set_counters(state, n, kind == Stream::kInPlace ? 12 : 8);
  state.counters["threads"] = threads;
}

void apply_sizes(benchmark::internal::Benchmark* b) {
  for (int log2 = kMinLog2Size; log2 <= kMaxLog2Size; log2 += kLog2SizeStep) {
    b->Arg(std::int64_t{1} << log2);
  }
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

// Strips "--name=value" from argv (so google-benchmark does not reject it) and
// returns the value, or nullptr.
const char* take_flag(int* argc, char** argv, const char* name) {
  const std::string prefix = std::string("--") + name + "=";
  const char* value = nullptr;
  int out = 0;
  for (int i = 0; i < *argc; ++i) {
    if (i > 0 && std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
      value = argv[i] + prefix.size();
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  return value;
}

std::vector<int> parse_thread_counts(const char* text) {
  std::vector<int> counts;
  if (text == nullptr) return {1, 2};
  std::string rest(text);
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    const std::string item = rest.substr(0, comma);
    char* end = nullptr;
    const long n = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || n < 1 || n > 1024) {
      std::fprintf(stderr, "--adamcore_threads: expected a comma-separated list of counts "
                           ">= 1, got '%s'\n", text);
      std::exit(2);
    }
    counts.push_back(static_cast<int>(n));
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
  }
  return counts;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<int> thread_counts =
      parse_thread_counts(take_flag(&argc, argv, "adamcore_threads"));
  if (const char* threshold = take_flag(&argc, argv, "adamcore_parallel_threshold")) {
    char* end = nullptr;
    const unsigned long long n = std::strtoull(threshold, &end, 10);
    if (*threshold == '\0' || *end != '\0') {
      std::fprintf(stderr, "--adamcore_parallel_threshold: expected a count, got '%s'\n",
                   threshold);
      return 2;
    }
    adamcore::set_parallel_threshold(static_cast<std::size_t>(n));
  }

  for (int threads : thread_counts) {
    const std::string suffix = "/threads:" + std::to_string(threads);
    apply_sizes(benchmark::RegisterBenchmark(("stream_inplace" + suffix).c_str(), run_stream,
                                             Stream::kInPlace, threads));
    apply_sizes(benchmark::RegisterBenchmark(("stream_copy" + suffix).c_str(), run_stream,
                                             Stream::kCopy, threads));
  }
  for (const OptimizerInfo& opt : kOptimizers) {
    for (int i = 0; i < adamcore::kIsaCount; ++i) {
      const auto isa = static_cast<adamcore::Isa>(i);
      if (!adamcore::isa_supported(isa)) continue;
      for (int threads : thread_counts) {
        const std::string name = std::string(opt.name) + "/" + adamcore::isa_name(isa) +
                                 "/threads:" + std::to_string(threads);
        apply_sizes(benchmark::RegisterBenchmark(name.c_str(), run_optimizer, opt, isa,
                                                 threads));
      }
    }
  }

  benchmark::AddCustomContext("adamcore_best_isa", adamcore::isa_name(adamcore::best_isa()));
  benchmark::AddCustomContext("adamcore_parallel_threshold",
                              std::to_string(adamcore::get_parallel_threshold()));
  benchmark::AddCustomContext("adamcore_openmp", adamcore::built_with_openmp() ? "yes" : "no");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
